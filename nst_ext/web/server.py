"""What both pages' servers share: the app itself (its routes behind the guard, nst_ext.web.guard,
with errors answered as JSON lines), the pages and scripts shipped in the package, a run's
:class:`~nst_ext.web.preview.Preview` as a stream of Server-Sent Events, and a uvicorn server on
a socket of its own (a free port when none is asked for), in a thread or in the foreground."""

import asyncio
import base64
import json
import logging
import socket
import threading
from importlib import resources
from typing import Callable, List, Optional

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from nst_ext.errors import InputError
from nst_ext.web.guard import Access, BodyTooLarge, Guard
from nst_ext.web.preview import PREVIEW_SECONDS, Preview, lower_this_threads_priority

STATIC = resources.files("nst_ext.web") / "static"
# An idle stream sends a comment this often, so that a page notices a server that went away.
KEEP_ALIVE_SECONDS = 10.0
# A page whose stream dropped reconnects after this many milliseconds (browsers wait 3 s unless
# told), so that it is back within the time a finished run waits for its pages.
RECONNECT_MS = 500


LOG = logging.getLogger(__name__)


def guarded_app(
    routes: List[BaseRoute], access: Access, max_body: int, too_large_message: Callable[[int], str]
) -> Guard:
    """`routes` (and the shipped static files) as one app behind the guard: every answer that is
    not a page is JSON, an error too, as ``{"error": line}`` for the page to show; a bug is logged
    here and answered "internal error", never with its text (which may hold paths)."""

    async def http_error(request, error: HTTPException):
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code, headers=error.headers)

    async def too_large(request, error: BodyTooLarge):
        return JSONResponse({"error": too_large_message(error.limit)}, status_code=413)

    async def unexpected(request, error):
        LOG.error("nst-ext: the server failed on %s %s", request.method, request.url.path, exc_info=error)
        return JSONResponse({"error": "internal error (the server's log has the details)"}, status_code=500)

    app = Starlette(
        routes=[*routes, static_mount()],
        exception_handlers={HTTPException: http_error, BodyTooLarge: too_large, Exception: unexpected},
    )
    return Guard(app, access, max_body, too_large_message)


def static_mount() -> Mount:
    return Mount("/static", app=StaticFiles(directory=str(STATIC)), name="static")


def page(name: str) -> Callable:
    """A route endpoint answering with the shipped page `name`."""

    async def endpoint(request):
        return FileResponse(str(STATIC / name), media_type="text/html")

    return endpoint


def event(state: dict, jpeg: Optional[bytes]) -> str:
    """One Server-Sent Event: the state as JSON, with the picture as a data URL when it is new
    (in the same event, so a page never shows a picture with another step's numbers)."""
    if jpeg is not None:
        state = {**state, "picture": "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")}
    return f"data: {json.dumps(state)}\n\n"


class PreviewStreams:
    """The event streams of previews; counts the open ones, the pages served that will open one,
    and the final states sent, so that a run can wait until every page got its final picture
    before the process ends (a page served whose stream is not yet connected, or is reconnecting,
    counts too)."""

    def __init__(self):
        self.open = 0
        self.pages_served = 0
        self.finals_sent = 0
        self._lock = threading.Lock()

    def page_served(self) -> None:
        with self._lock:
            self.pages_served += 1

    @property
    def pages_waiting(self) -> bool:
        """Whether a stream is open or a page served has not yet been sent its run's final state."""
        with self._lock:
            return self.open > 0 or self.finals_sent < self.pages_served

    def response(self, request, preview: Callable[[], Optional[Preview]], ends_with_run: bool) -> StreamingResponse:
        """A stream of `preview()`'s states (None: nothing to show yet), at most one event every
        PREVIEW_SECONDS and only when something changed; with `ends_with_run` it ends after the
        run's final state (the live view of one command), else it follows `preview()` to the next
        run (the app's queue)."""
        return StreamingResponse(
            self._events(request, preview, ends_with_run),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def _events(self, request, preview, ends_with_run):
        with self._lock:
            self.open += 1
        try:
            yield f"retry: {RECONNECT_MS}\n\n"
            shown, seen, current, quiet = None, -1, None, 0.0
            while not await request.is_disconnected():
                watched = preview()
                if watched is not current:  # the app moved on to another job
                    current, shown, seen = watched, None, -1
                if current is None:
                    await asyncio.sleep(PREVIEW_SECONDS)
                    continue
                version = await asyncio.to_thread(current.wait, seen, 1.0)
                if version == seen:
                    quiet += 1.0
                    if quiet >= KEEP_ALIVE_SECONDS:
                        quiet = 0.0
                        yield ": keep-alive\n\n"
                    continue
                quiet = 0.0
                shown, jpeg = current.state(shown)
                seen = shown["version"]
                yield event(shown, jpeg)
                # The state sent says whether it was the last: the run may have ended while this
                # one was on its way, and then its final state is still to send.
                if ends_with_run and shown["finished"]:
                    with self._lock:
                        self.finals_sent += 1
                    return
                await asyncio.sleep(PREVIEW_SECONDS)
        finally:
            with self._lock:
                self.open -= 1


def bound_socket(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port), port 0 for a free one; one line for a port in use."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise InputError(f"cannot serve on {host}:{port}: {error.strerror or error}") from None
    sock.listen(64)
    return sock


def access_of(sock: socket.socket) -> Access:
    """Who may use the server listening on `sock` (nst_ext.web.guard)."""
    host, port = sock.getsockname()[:2]
    return Access.for_address(host, port)


def uvicorn_server(app) -> uvicorn.Server:
    return uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=2)
    )


class BackgroundServer:
    """`app` served from a thread of its own on `sock` until :meth:`close`; `url` its address."""

    def __init__(self, app, sock: socket.socket, url: str):
        self.server = uvicorn_server(app)
        self.url = url
        self.thread = threading.Thread(target=self._serve, args=(sock,), name="nst-ext web", daemon=True)
        self.thread.start()

    def _serve(self, sock) -> None:
        lower_this_threads_priority()  # the threads it starts (the event streams' waits) inherit it
        self.server.run(sockets=[sock])

    def close(self, timeout: float = 5.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
