"""``nst-ext serve``: a local web app. A page to upload a content picture and styles (or pick the
shipped samples), set the main options and start; jobs wait in a queue and run one at a time
(nst_ext.web.queue), the running one shown live (nst_ext.web.preview), the finished ones listed
with their settings and a download link. Uploads are checked before a job is queued
(nst_ext.web.uploads), so a bad one gets a message in the page; results and the uploads they came
from go to the output folder and never replace a file."""

import sys
from pathlib import Path

from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Route

from nst_ext.plan.budget import format_size, parse_size
from nst_ext.io.outputs import make_output_folder
from nst_ext.web import DEFAULT_MAX_UPLOAD, DEFAULT_PORT, LOCAL_HOST
from nst_ext.web.guard import Access, Guard, is_loopback
from nst_ext.web.queue import JobQueue
from nst_ext.web.server import PreviewStreams, access_of, bound_socket, guarded_app, page, uvicorn_server
from nst_ext.web.uploads import SAMPLES, UploadError, Uploads, form_fields

# Jobs that may wait in the queue at once: a page cannot hold the machine for days.
MAX_WAITING_JOBS = 20


def web_app(queue: JobQueue, uploads: Uploads, access: Access) -> Guard:
    """The app's routes for the server `access` describes, jobs run by `queue`, forms read by `uploads`."""
    streams = PreviewStreams()

    async def submit(request):
        if queue.waiting() >= MAX_WAITING_JOBS:
            return JSONResponse(
                {"error": f"{MAX_WAITING_JOBS} jobs are waiting already; start this one when the queue is shorter"},
                status_code=429,
            )
        try:
            job = await uploads.job(request, queue.next_number)
        except UploadError as error:
            return JSONResponse({"error": str(error)}, status_code=400)
        queue.submit(job)
        return JSONResponse({"number": job.number}, status_code=201)

    async def jobs(request):
        return JSONResponse({"jobs": queue.shown(), "samples": list(SAMPLES), "form": form_fields()})

    async def stop(request):
        found = queue.stop(int(request.path_params["number"]))
        return JSONResponse({"stopping": found}, status_code=202 if found else 404)

    async def result(request):
        name = request.path_params["name"]
        for job in queue.jobs:
            if job.output.name == name and job.state in ("done", "stopped") and job.output.is_file():
                return FileResponse(str(job.output), media_type="image/png", filename=name)
        return JSONResponse({"error": f"no finished picture named {name!r}"}, status_code=404)

    async def events(request):
        return streams.response(request, queue.preview, ends_with_run=False)

    async def sample(request):
        name = request.path_params["name"]
        if name not in SAMPLES:
            return JSONResponse({"error": f"no sample named {name!r}"}, status_code=404)
        return FileResponse(str(uploads.sample_path(name)), media_type="image/jpeg")

    def too_large(limit: int) -> str:
        return (
            f"the upload is over {format_size(limit)} in all; each picture may be at most "
            f"{format_size(uploads.max_upload)}"
        )

    return guarded_app(
        [
            Route("/", page("app.html")),
            Route("/jobs", jobs),
            Route("/jobs", submit, methods=["POST"]),
            Route("/jobs/{number:int}/stop", stop, methods=["POST"]),
            Route("/results/{name}", result),
            Route("/samples/{name}", sample),
            Route("/events", events),
        ],
        access,
        uploads.max_request,
        too_large,
    )


def serve(
    out: str,
    host: str = LOCAL_HOST,
    port: int = DEFAULT_PORT,
    device: str = "auto",
    max_upload: str = DEFAULT_MAX_UPLOAD,
) -> int:
    """Serves the app until Ctrl-C; then the running job keeps its best picture. Exit status 0."""
    out_dir = Path(out)
    make_output_folder(out_dir, "the app")
    uploads = Uploads(out_dir, device, parse_size(max_upload))
    sock = bound_socket(host, port)
    access = access_of(sock)
    queue = JobQueue()
    if not is_loopback(host):
        print(
            f"nst-ext: warning: serving on {host}: anyone who can reach this machine there and has the address "
            "with its token can upload pictures and run jobs on it",
            file=sys.stderr,
        )
    shown = None if access.allowed_hosts is not None else LOCAL_HOST  # a wildcard address: open it here by loopback
    print(
        f"nst-ext: serving at {access.url(shown)} (results in {out_dir}); Ctrl-C to stop", file=sys.stderr, flush=True
    )
    try:
        uvicorn_server(web_app(queue, uploads, access)).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn hands Ctrl-C on once it has shut down
        pass
    finally:
        running = queue.current if queue.current is not None and queue.current.state == "running" else None
        queue.close()
        if running is not None and running.state in ("done", "stopped"):
            print(f"nst-ext: the running job's best picture is in {running.output}", file=sys.stderr)
    print("nst-ext: stopped serving", file=sys.stderr)
    return 0
