"""``nst-ext serve``: a local web app. A page to upload a content picture and styles (or pick the
shipped samples), set the main options and start; jobs wait in a queue and run one at a time
(nst_ext.web.queue), the running one shown live (nst_ext.web.preview), the finished ones listed
with their settings and a download link. Uploads are checked before a job is queued
(nst_ext.web.uploads), so a bad one gets a message in the page; results and the uploads they came
from go to the output folder and never replace a file."""

import sys
from pathlib import Path

from starlette.applications import Starlette
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Route

from nst_ext.budget import parse_size
from nst_ext.outputs import check_folder_writable
from nst_ext.web.queue import JobQueue
from nst_ext.web.server import LOCAL_HOST, PreviewStreams, bound_socket, page, static_mount, url_of, uvicorn_server
from nst_ext.web.uploads import SAMPLES, UploadError, Uploads


def web_app(queue: JobQueue, uploads: Uploads) -> Starlette:
    streams = PreviewStreams()

    async def submit(request):
        try:
            job = await uploads.job(request, queue.next_number)
        except UploadError as error:
            return JSONResponse({"error": str(error)}, status_code=400)
        queue.submit(job)
        return JSONResponse({"number": job.number}, status_code=201)

    async def jobs(request):
        return JSONResponse({"jobs": queue.shown(), "samples": list(SAMPLES)})

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

    async def unexpected(request, error):  # a bug: the page still gets a message, not a bare 500
        return JSONResponse({"error": f"the server failed: {type(error).__name__}: {error}"}, status_code=500)

    return Starlette(exception_handlers={Exception: unexpected}, routes=[
        Route("/", page("app.html")), Route("/jobs", jobs), Route("/jobs", submit, methods=["POST"]),
        Route("/jobs/{number:int}/stop", stop, methods=["POST"]), Route("/results/{name}", result),
        Route("/samples/{name}", sample), Route("/events", events), static_mount()])


def serve(out: str, host: str = LOCAL_HOST, port: int = 8765, device: str = "auto", max_upload: str = "25MiB") -> int:
    """Serves the app until Ctrl-C; then the running job keeps its best picture. Exit status 0."""
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_folder_writable(out_dir, str(out_dir / "result.png"))
    uploads = Uploads(out_dir, device, parse_size(max_upload))
    sock = bound_socket(host, port)
    queue = JobQueue()
    if host not in (LOCAL_HOST, "localhost", "::1"):
        print(f"nst-ext: warning: serving on {host}: anyone who can reach this machine there can upload pictures "
              "and run jobs on it", file=sys.stderr)
    print(f"nst-ext: serving at {url_of(sock)} (results in {out_dir}); Ctrl-C to stop", file=sys.stderr, flush=True)
    try:
        uvicorn_server(web_app(queue, uploads)).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn hands Ctrl-C on once it has shut down
        pass
    finally:
        running = queue.current if queue.current is not None and queue.current.state == "running" else None
        queue.close()
        if running is not None and running.state in ("done", "stopped"):
            print(f"nst-ext: the running job's best picture is in {running.output}", file=sys.stderr)
    print("nst-ext: stopped serving", file=sys.stderr)
    return 0
