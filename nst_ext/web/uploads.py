"""The app's form turned into a job (``nst-ext serve``): the uploads checked before anything is
queued (size, a picture, its pixels) and kept under names that are free, the options checked as
the command line checks them, the result's name chosen free in the output folder. A refused form
gets one line for the page (:class:`UploadError`) and leaves nothing behind."""

import io
import itertools
import re
import threading
from importlib import resources
from pathlib import Path
from typing import Callable, List

from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from nst_ext.plan.budget import format_size
from nst_ext.errors import InputError
from nst_ext.io.images import decoded_picture
from nst_ext.plan.options import DEFAULT_MAX_INPUT_PIXELS, StyleOptions
from nst_ext.web.queue import Job

SAMPLES = {"astronaut": "astronaut.jpg", "swirls": "swirls.jpg"}  # nst_ext/data, with CREDITS.md
MAX_STYLES = 4
SMALLEST_SIZE = 16
LARGEST_SIZE = 2048  # the page's largest output side: beyond it the command line (memory plans, tiles)
LARGEST_STEPS = 2000  # the page's most steps per scale (the defaults take tens)
# The files of one form (the content, the styles, their masks) and its other fields at most.
MAX_FILES = 1 + MAX_STYLES
MAX_FIELDS = 32
# A form's text fields and multipart framing take at most this beside its files.
FORM_OVERHEAD = 64 * 1024
# The uploads folder holds at most this many times --max-upload: a page cannot fill the disk.
UPLOADS_FOLDER_UPLOADS = 100
FIRST_SEED = 0  # the form's seed until the user picks another: the same picture for the same uploads


def form_fields() -> dict:
    """The form's numbers, one home for the page (app.js fills its fields from them) and for the
    checks here: each field's default and bounds."""
    defaults = StyleOptions()
    return {
        "size": {"value": defaults.output_size, "min": SMALLEST_SIZE, "max": LARGEST_SIZE},
        "style_weight": {"value": defaults.style_weight, "min": 0},
        "seed": {"value": FIRST_SEED},
        "steps": {"min": 1, "max": LARGEST_STEPS},
    }


class UploadError(InputError):
    """What the page shows for a request it cannot take."""


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

    @property
    def max_request(self) -> int:
        """The largest request body a form may have: every file at the limit, and the fields."""
        return self.max_upload * MAX_FILES + FORM_OVERHEAD

    @property
    def max_folder(self) -> int:
        """The most the uploads folder may hold before uploads are refused."""
        return self.max_upload * UPLOADS_FOLDER_UPLOADS

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
        # The body's size is the guard's (nst_ext.web.guard): cut while it streams in.
        try:
            form = await request.form(max_files=MAX_FILES, max_fields=MAX_FIELDS, max_part_size=FORM_OVERHEAD)
        except (MultiPartException, HTTPException) as error:  # Starlette raises the one as the other
            reason = getattr(error, "message", None) or getattr(error, "detail", "")
            raise UploadError(
                f"the upload was refused: {reason} (at most {MAX_FILES} pictures and {MAX_FIELDS} "
                f"fields; each picture at most {format_size(self.max_upload)})"
            ) from None
        options = self._options(form)
        uploaded = [upload for upload in form.getlist("styles") if getattr(upload, "filename", "")]
        chosen = [name for name in form.getlist("style_samples") if name]
        if not uploaded and not chosen:
            raise UploadError("choose at least one style picture (upload one, or pick a sample)")
        if len(uploaded) + len(chosen) > MAX_STYLES:
            raise UploadError(f"at most {MAX_STYLES} style pictures, got {len(uploaded) + len(chosen)}")
        masks = [upload for upload in form.getlist("style_masks") if getattr(upload, "filename", "")]
        if masks and len(masks) != len(uploaded) + len(chosen):
            raise UploadError(
                f"give one style mask per style picture, in the same order ({len(uploaded) + len(chosen)} "
                f"styles, {len(masks)} masks), or none"
            )
        content, content_name = await self._content(form, saved)
        styles = [await self._upload(upload, "a style picture", saved) for upload in uploaded]
        styles += [self.sample_path(name) for name in chosen]
        names = [upload.filename for upload in uploaded] + chosen
        if masks:  # where each style applies (docs/control.md); the shape is checked against the content's by the run
            options.style_masks = [str(await self._upload(upload, "a style mask", saved)) for upload in masks]
        content_mask = form.get("content_mask")
        if getattr(content_mask, "filename", ""):
            options.content_mask = str(await self._upload(content_mask, "the content mask", saved))
        settings = {
            "content": content_name,
            "styles": ", ".join(names),
            "size": str(options.size),
            "style weight": f"{options.style_weight:g}",
            "colour": options.preserve_color or "the style's",
            "seed": str(options.seed),
        }
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

        fields = form_fields()
        size = number("size", int, fields["size"]["value"])
        if not SMALLEST_SIZE <= size <= LARGEST_SIZE:
            raise UploadError(
                f"size: from {SMALLEST_SIZE} to {LARGEST_SIZE} px here (larger pictures: the command line), got {size}"
            )
        steps = number("steps", int, None)
        if steps is not None and not 1 <= steps <= LARGEST_STEPS:
            raise UploadError(f"steps: from 1 to {LARGEST_STEPS} per scale here, got {steps}")
        colour = str(form.get("preserve_color") or "") or None
        options = StyleOptions(
            size=size,
            steps=[steps] if steps else None,
            style_weight=number("style_weight", float, fields["style_weight"]["value"]),
            preserve_color=colour,
            seed=number("seed", int, fields["seed"]["value"]),
            device=self.device,
            max_input_pixels=self.max_pixels,
        )
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
        size = upload.size if upload.size is not None else self.max_upload + 1  # known once parsed; else refused
        if size > self.max_upload:
            raise UploadError(
                f"{what} {upload.filename!r} is {format_size(size)}, over the limit of {format_size(self.max_upload)}"
            )
        data = await upload.read()
        self._check_picture(data, f"{what} {upload.filename!r}")
        self.folder.mkdir(parents=True, exist_ok=True)
        with self._names:
            held = sum(path.stat().st_size for path in self.folder.iterdir() if path.is_file())
            if held + len(data) > self.max_folder:
                raise UploadError(
                    f"the server's uploads folder holds {format_size(held)}, near its limit of "
                    f"{format_size(self.max_folder)}; old uploads must be removed from it first"
                )
            path = self._free(
                self.folder, _safe_stem(upload.filename), Path(upload.filename).suffix.lower()[:6] or ".img"
            )
            with open(path, "xb") as file:  # "x": never replaces a file
                saved.append(path)
                file.write(data)
        return path

    def _check_picture(self, data: bytes, what: str) -> None:
        with decoded_picture(io.BytesIO(data), what, self.max_pixels, UploadError, limit_advice="", memory_advice=""):
            pass

    @staticmethod
    def _free(folder: Path, stem: str, suffix: str) -> Path:
        """The first of STEM.SUFFIX, STEM-1.SUFFIX, … that does not exist in `folder`."""
        for index in itertools.count():
            path = folder / f"{stem}{'-' + str(index) if index else ''}{suffix}"
            if not path.exists():
                return path
