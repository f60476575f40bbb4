"""``nst-ext serve``: a local web app. A page to upload a content picture and styles (or pick the
shipped samples), set the main options and start; jobs wait in a queue and run one at a time on a
worker thread (:class:`JobQueue`), the running one shown live (nst_ext.web.preview), the finished
ones listed with their settings and a download link. Uploads are checked before a job is queued
(size, a picture, its pixels), so a bad one gets a message in the page; results and the uploads
they came from go to the output folder and never replace a file."""

import dataclasses
import itertools
import re
import sys
import threading
from importlib import resources
from pathlib import Path
from typing import Callable, Dict, List, Optional

from PIL import Image, UnidentifiedImageError
from starlette.applications import Starlette
from starlette.formparsers import MultiPartException
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Route

from nst_ext.budget import format_size, parse_size
from nst_ext.errors import InputError
from nst_ext.options import DEFAULT_MAX_INPUT_PIXELS, StyleOptions
from nst_ext.outputs import check_folder_writable, write_or_rescue
from nst_ext.web.preview import Preview
from nst_ext.web.server import LOCAL_HOST, PreviewStreams, bound_socket, page, static_mount, url_of, uvicorn_server

SAMPLES = {"astronaut": "astronaut.jpg", "swirls": "swirls.jpg"}  # nst_ext/data, with CREDITS.md
MAX_STYLES = 4
LARGEST_SIZE = 2048  # the page's largest output side: beyond it the command line (memory plans, tiles)
FINAL = ("done", "stopped", "failed")


class UploadError(InputError):
    """What the page shows for a request it cannot take."""


@dataclasses.dataclass
class Job:
    """One picture to make: its inputs (files in the output folder), its options, where the
    result goes, and how far it got."""
    number: int
    content: Path
    styles: List[Path]
    options: StyleOptions
    output: Path
    settings: Dict[str, str]  # what the page lists: the inputs' names and the options chosen
    state: str = "waiting"  # waiting, running, done, stopped, failed
    message: str = ""
    preview: Optional[Preview] = None
    stop_requested: threading.Event = dataclasses.field(default_factory=threading.Event)

    def shown(self, place: Optional[int]) -> dict:
        finished = self.state in ("done", "stopped") and self.output.is_file()
        return {"number": self.number, "state": self.state, "message": self.message, "place": place,
                "settings": self.settings, "result": f"/results/{self.output.name}" if finished else None}


def stylize_job(job: Job, on_progress: Callable) -> None:
    """Makes `job`'s picture and writes it (with its provenance record) to ``job.output``."""
    from nst_ext import provenance
    from nst_ext.images import save_image
    from nst_ext.stylizer import Stylizer

    stylizer = Stylizer(job.options)
    result = stylizer.run(str(job.content), [str(path) for path in job.styles], callback=on_progress)
    if result.interrupted and not result.history:  # as on the command line: no step, no picture
        job.state, job.message = "stopped", "stopped before the first step finished; nothing written"
        job.preview.finish(None, "stopped", job.message)
        return
    record = provenance.make_record(job.options, str(job.content), [str(path) for path in job.styles], result.seed,
                                    stylizer.weights.source, str(stylizer.device), command="serve")
    # A full disk: the picture goes to a fallback folder, named in the error the page shows.
    write_or_rescue(lambda path: save_image(result.tensor, path, record=record,
                                            icc_profile=provenance.icc_profile(str(job.content))), job.output)
    job.preview.finish(result.tensor, "stopped" if result.interrupted else "done")
    job.state = "stopped" if result.interrupted else "done"


class JobQueue:
    """Jobs run one at a time, in the order they came, on a worker thread; `run` makes one
    (:func:`stylize_job`, or a stand-in in tests)."""

    def __init__(self, run: Callable[[Job, Callable], None] = stylize_job):
        self.run = run
        self.jobs: List[Job] = []
        self.current: Optional[Job] = None
        self._numbers = itertools.count(1)
        self._wake = threading.Condition()
        self._closing = False
        self.worker = threading.Thread(target=self._work, name="nst-ext jobs", daemon=True)
        self.worker.start()

    def next_number(self) -> int:
        return next(self._numbers)

    def submit(self, job: Job) -> None:
        with self._wake:
            self.jobs.append(job)
            self._wake.notify_all()

    def stop(self, number: int) -> bool:
        """Stops a running job (it keeps its best picture) or drops a waiting one."""
        with self._wake:
            for job in self.jobs:
                if job.number == number and job.state in ("waiting", "running"):
                    job.stop_requested.set()
                    if job.state == "waiting":
                        job.state, job.message = "stopped", "removed from the queue before it started"
                    return True
        return False

    def shown(self) -> List[dict]:
        with self._wake:
            waiting = [job for job in self.jobs if job.state == "waiting"]
            return [job.shown(waiting.index(job) + 1 if job in waiting else None) for job in self.jobs]

    def preview(self) -> Optional[Preview]:
        current = self.current
        return current.preview if current is not None else None

    def close(self, timeout: float = 60.0) -> None:
        """Stops the running job (its best picture is saved) and drops the waiting ones."""
        with self._wake:
            self._closing = True
            for job in self.jobs:
                job.stop_requested.set()
            self._wake.notify_all()
        self.worker.join(timeout)

    def _work(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._closing or any(job.state == "waiting" for job in self.jobs))
                if self._closing:
                    return
                job = next(job for job in self.jobs if job.state == "waiting")
                job.state, job.preview = "running", Preview(f"picture {job.number}")
                self.current = job
            self._run_one(job)

    def _run_one(self, job: Job) -> None:
        def on_progress(progress):
            if job.stop_requested.is_set():
                raise KeyboardInterrupt  # the stylizer keeps its best picture, as for Ctrl-C
            job.preview.observe(progress)

        try:
            self.run(job, on_progress)
        except KeyboardInterrupt:  # a stop outside the optimiser's loop (while the network loads)
            job.state, job.message = "stopped", "stopped before the first step finished; nothing written"
            job.preview.finish(None, "stopped", job.message)
        except InputError as error:
            job.state, job.message = "failed", str(error)
            job.preview.finish(None, "failed", job.message)
        except Exception as error:  # the app goes on with the next job; the page says what happened
            job.state, job.message = "failed", f"{type(error).__name__}: {error}"
            job.preview.finish(None, "failed", job.message)


def _safe_stem(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(name or "picture").stem).strip("-")
    return stem[:40] or "picture"


class Uploads:
    """Turns a submitted form into a Job: the files checked and kept in ``out/uploads``, the
    options checked as the command line checks them, the result's name chosen free in ``out``."""

    def __init__(self, out: Path, device: str, max_upload: int, max_pixels: int = DEFAULT_MAX_INPUT_PIXELS):
        self.out, self.device, self.max_upload, self.max_pixels = out, device, max_upload, max_pixels
        self.folder = out / "uploads"
        self._names = threading.Lock()

    async def job(self, request, next_number: Callable[[], int]) -> Job:
        """The job a request asks for, numbered by `next_number()` once it is accepted; its uploads
        are removed again when it is refused."""
        saved: List[Path] = []
        try:
            return await self._job(request, next_number, saved)
        except BaseException:
            for path in saved:
                path.unlink(missing_ok=True)
            raise

    async def _job(self, request, next_number: Callable[[], int], saved: List[Path]) -> Job:
        length = int(request.headers.get("content-length") or 0)
        if length > self.max_upload * (1 + MAX_STYLES) + 65536:
            raise UploadError(f"the upload is {format_size(length)}; each picture may be at most "
                              f"{format_size(self.max_upload)}")
        try:
            form = await request.form(max_files=1 + MAX_STYLES, max_fields=32, max_part_size=self.max_upload)
        except MultiPartException as error:
            raise UploadError(f"the upload was refused: {error.message} (each picture may be at most "
                              f"{format_size(self.max_upload)})") from None
        options = self._options(form)
        uploaded = [upload for upload in form.getlist("styles") if getattr(upload, "filename", "")]
        chosen = [name for name in form.getlist("style_samples") if name]
        if not uploaded and not chosen:
            raise UploadError("choose at least one style picture (upload one, or pick a sample)")
        if len(uploaded) + len(chosen) > MAX_STYLES:
            raise UploadError(f"at most {MAX_STYLES} style pictures, got {len(uploaded) + len(chosen)}")
        masks = [upload for upload in form.getlist("style_masks") if getattr(upload, "filename", "")]
        if masks and len(masks) != len(uploaded) + len(chosen):
            raise UploadError(f"give one style mask per style picture, in the same order ({len(uploaded) + len(chosen)} "
                              f"styles, {len(masks)} masks), or none")
        content, content_name = await self._content(form, saved)
        styles = [await self._upload(upload, "a style picture", saved) for upload in uploaded]
        styles += [self.sample_path(name) for name in chosen]
        names = [upload.filename for upload in uploaded] + chosen
        if masks:  # where each style applies (docs/control.md); the shape is checked against the content's by the run
            options.style_masks = [str(await self._upload(upload, "a style mask", saved)) for upload in masks]
        content_mask = form.get("content_mask")
        if getattr(content_mask, "filename", ""):
            options.content_mask = str(await self._upload(content_mask, "the content mask", saved))
        settings = {"content": content_name, "styles": ", ".join(names), "size": str(options.size),
                    "style weight": f"{options.style_weight:g}", "colour": options.preserve_color or "the style's",
                    "seed": str(options.seed)}
        settings["steps"] = ",".join(map(str, options.stage_steps()))
        if masks:
            settings["style masks"] = ", ".join(upload.filename for upload in masks)
        if options.content_mask:
            settings["content mask"] = content_mask.filename
        with self._names:
            number = next_number()
            output = self._free(self.out, f"{number:04d}-{_safe_stem(content_name)}", ".png")
        return Job(number, content, styles, options, output, settings)

    def _options(self, form) -> StyleOptions:
        def number(name, kind, default):
            text = str(form.get(name) or "").strip()
            if not text:
                return default
            try:
                return kind(text)
            except ValueError:
                raise UploadError(f"{name.replace('_', ' ')}: expected a number, got {text!r}") from None

        size = number("size", int, 512)
        if not 16 <= size <= LARGEST_SIZE:
            raise UploadError(f"size: from 16 to {LARGEST_SIZE} px here (larger pictures: the command line), got {size}")
        steps = number("steps", int, None)
        colour = str(form.get("preserve_color") or "") or None
        options = StyleOptions(size=size, steps=[steps] if steps else None, style_weight=number("style_weight", float, 20.0),
                               preserve_color=colour, seed=number("seed", int, 0), device=self.device,
                               max_input_pixels=self.max_pixels)
        try:
            options.validate()
        except InputError as error:
            raise UploadError(str(error)) from None
        return options

    @staticmethod
    def sample_path(name: str) -> Path:
        if name not in SAMPLES:
            raise UploadError(f"no sample named {name!r}; the samples: {', '.join(SAMPLES)}")
        return Path(str(resources.files("nst_ext") / "data" / SAMPLES[name]))

    async def _content(self, form, saved: List[Path]):
        """The content picture's path and the name the page shows for it."""
        upload = form.get("content")
        if getattr(upload, "filename", ""):
            return await self._upload(upload, "the content picture", saved), upload.filename
        sample = str(form.get("content_sample") or "")
        if not sample:
            raise UploadError("choose the content picture (upload one, or pick a sample)")
        return self.sample_path(sample), sample

    async def _upload(self, upload, what: str, saved: List[Path]) -> Path:
        """An uploaded picture checked and kept in the uploads folder under a free name (added
        to `saved`)."""
        data = await upload.read()
        if len(data) > self.max_upload:
            raise UploadError(f"{what} {upload.filename!r} is {format_size(len(data))}, over the limit of "
                              f"{format_size(self.max_upload)}")
        self._check_picture(data, f"{what} {upload.filename!r}")
        self.folder.mkdir(parents=True, exist_ok=True)
        with self._names:
            path = self._free(self.folder, _safe_stem(upload.filename), Path(upload.filename).suffix.lower()[:6] or ".img")
            with open(path, "xb") as file:  # "x": never replaces a file
                saved.append(path)
                file.write(data)
        return path

    def _check_picture(self, data: bytes, what: str) -> None:
        import io

        previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # our own limit, below
        try:
            with Image.open(io.BytesIO(data)) as image:
                if image.width * image.height > self.max_pixels:
                    raise UploadError(f"{what} is {image.width}x{image.height} pixels, over the limit of "
                                      f"{self.max_pixels:,}")
                image.load()
        except UnidentifiedImageError:
            raise UploadError(f"{what} is not a picture (PNG, JPEG, WebP, TIFF, BMP or GIF)") from None
        except (OSError, SyntaxError, ValueError) as error:
            raise UploadError(f"{what} cannot be read as a picture ({error})") from None
        finally:
            Image.MAX_IMAGE_PIXELS = previous

    @staticmethod
    def _free(folder: Path, stem: str, suffix: str) -> Path:
        """The first of STEM.SUFFIX, STEM-1.SUFFIX, … that does not exist in `folder`."""
        for index in itertools.count():
            path = folder / f"{stem}{'-' + str(index) if index else ''}{suffix}"
            if not path.exists():
                return path


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
