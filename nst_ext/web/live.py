"""``--web``: a page on 127.0.0.1 that shows a command's run as it goes (the picture, the stage and
step, the loss curves, the time per step) with a Stop button that does what Ctrl-C does: the
command stops, saves its best picture and exits with 130."""

import os
import signal
import time

from starlette.responses import JSONResponse
from starlette.routing import Route

from nst_ext.web.guard import Access, Guard
from nst_ext.web.preview import Preview
from nst_ext.web import LOCAL_HOST
from nst_ext.web.server import BackgroundServer, PreviewStreams, access_of, bound_socket, guarded_app, page

# The live view takes no uploads: a request body (the Stop button's is empty) is at most this.
LIVE_MAX_BODY = 64 * 1024
# After the run, how long the command waits for open pages to receive its final picture.
FINAL_PICTURE_SECONDS = 3.0


def _interrupt_the_command():
    """Ctrl-C, exactly: SIGINT to this process, which the command's handler turns into a stop."""
    os.kill(os.getpid(), signal.SIGINT)


def live_app(preview: Preview, streams: PreviewStreams, access: Access, stop=_interrupt_the_command) -> Guard:
    """The live view's routes for the server `access` describes: the page, its event stream, and
    Stop (which calls `stop`), from this server's own page only."""

    show_page = page("live.html")

    async def the_page(request):
        streams.page_served()
        return await show_page(request)

    async def events(request):
        return streams.response(request, lambda: preview, ends_with_run=True)

    async def stop_run(request):
        if not preview.finished:
            stop()
        return JSONResponse({"stopping": not preview.finished}, status_code=202)

    return guarded_app(
        [Route("/", the_page), Route("/events", events), Route("/stop", stop_run, methods=["POST"])],
        access,
        LIVE_MAX_BODY,
        lambda limit: f"the live view takes no request over {limit} bytes",
    )


class LiveView:
    """The page of one command's run, served from a thread from construction to :meth:`close`.
    `port` 0 takes a free one; the address is ``url``."""

    def __init__(self, port: int = 0, label: str = ""):
        self.preview = Preview(label)
        self.streams = PreviewStreams()
        sock = bound_socket(LOCAL_HOST, port)
        access = access_of(sock)
        self.server = BackgroundServer(live_app(self.preview, self.streams, access), sock, access.url())
        self.url = self.server.url

    def observe(self, progress) -> None:
        """The stylizer's per-step callback's share (nst_ext.stylizer.Progress)."""
        self.preview.observe(progress)

    def close(self, image=None, status: str = "done", message: str = "") -> None:
        """Shows the final `image` (``(3, H, W)`` in [0, 1], or None) and the run's end, waits up to
        FINAL_PICTURE_SECONDS for the pages served to get it (open or still connecting) (a Ctrl-C meanwhile ends the wait: the
        command calls this once its work is saved), and stops the server."""
        self.preview.finish(image, status, message)
        deadline = time.monotonic() + FINAL_PICTURE_SECONDS
        try:
            while self.streams.pages_waiting and time.monotonic() < deadline:
                time.sleep(0.05)
        except KeyboardInterrupt:  # Ctrl-C (or Stop) again once the work is saved: no more waiting for pages
            pass
        finally:
            self.server.close()
