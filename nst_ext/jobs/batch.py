"""Many pictures with one look (``nst-ext batch``): the items of a job, its manifest, resumption,
and the split of the items over the processes of a ``torchrun`` launch (torch.distributed).

A job is a folder of images (searched recursively; the layout is kept under the output folder) or a
text file listing image paths, one a line. Each result is ``OUT_DIR/<relative path>.<format>``. The
manifest, ``OUT_DIR/nst-ext-manifest.jsonl``, gets one JSON line per finished item (item, output,
status ``done`` or ``failed``, the settings' hash, seconds, how many pictures were optimised
together, rank), appended with one ``write`` to a file opened for appending, so lines from several
processes never interleave. Running the same job
again does only what is missing: an item is done when the manifest says so with the same settings
and its output still exists. Ctrl-C or a crash loses at most the items in flight.
"""

import dataclasses
import json
import os
import posixpath
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from nst_ext.errors import InputError, JobWarning, OptionError, OutputError
from nst_ext.jobs.common import LOCK_NAME, Distributed, JobLock, existing_styles, settings_hash
from nst_ext.plan.run import fitting_batch_size, stage_shapes
from nst_ext.plan.options import StyleOptions
from nst_ext.io.outputs import (
    FileSet,
    WriteError,
    check_regular_file,
    deferred_signals,
    make_output_folder,
    same_file,
)

MANIFEST_NAME = "nst-ext-manifest.jsonl"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
OUTPUT_FORMATS = ("png", "jpg", "webp")


@dataclass(frozen=True)
class BatchItem:
    source: Path  # the input image
    name: str  # its path relative to the job's folder (or as listed): the manifest's key
    output: Path


@dataclass
class BatchSummary:
    done: int = 0
    skipped: int = 0  # already done by an earlier run of the job
    failed: List[str] = dataclasses.field(default_factory=list)
    interrupted: bool = False

    def line(self) -> str:
        failed = f"{len(self.failed)} failed" + (
            f" ({', '.join(self.failed[:5])}{', …' if len(self.failed) > 5 else ''})" if self.failed else ""
        )
        return f"{self.done} done, {self.skipped} skipped as already done, {failed}"


def list_items(
    job_input: Path, out_dir: Path, output_format: str, inputs: Iterable[os.PathLike] = ()
) -> List[BatchItem]:
    """The job's items, sorted by name, each with its output inside `out_dir`. Raises InputError
    for a missing input, an empty job, two inputs that would write the same output (``a.jpg`` and
    ``a.png``), and an output that would replace an input of the job (an item, or one of `inputs`:
    the styles, an init image, a weights file), with or without --overwrite."""
    if output_format not in OUTPUT_FORMATS:
        raise OptionError(f"`output_format` must be one of {', '.join(OUTPUT_FORMATS)}, got {output_format!r}")
    if job_input.is_dir():
        if same_file(job_input, out_dir):
            raise OutputError(
                f"the output folder {str(out_dir)!r} is the input folder; the results would lie among "
                "(and could replace) the pictures: give another -o folder"
            )
        sources = [(path, path.relative_to(job_input).as_posix()) for path in _images_in(job_input, out_dir)]
        what = f"folder {str(job_input)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})"
    elif job_input.exists():
        check_regular_file(job_input, "the list of images")
        try:
            lines = job_input.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise InputError(f"cannot read the list of images {str(job_input)!r}: {error}") from None
        sources = []
        for line in lines:
            line = line.strip()
            if line and not line.startswith("#"):
                path = Path(line) if Path(line).is_absolute() else job_input.parent / line
                sources.append((path, _name_inside(line)))
        what = f"list {str(job_input)!r} names no images"
    else:
        raise InputError(
            f"batch input {str(job_input)!r} does not exist; give a folder of images or a text file listing image paths"
        )
    if not sources:
        raise InputError(what)
    items, by_output = [], {}
    for source, name in sources:
        output = out_dir / Path(name).with_suffix("." + output_format)
        if output in by_output:
            raise InputError(
                f"{by_output[output]!r} and {name!r} would both be written to {str(output)!r}; rename one of them"
            )
        by_output[output] = name
        items.append(BatchItem(source, name, output))
    protected = FileSet([item.source for item in items] + [Path(path) for path in inputs])
    for item in items:
        if item.output in protected:
            raise OutputError(
                f"{item.name!r} would be written to {str(item.output)!r}, which is one of this job's "
                "inputs; an input is never replaced, even with `overwrite`: give another `out_dir` folder "
                "(or `output_format`)"
            )
    return items


def _images_in(folder: Path, out_dir: Path) -> List[Path]:
    """The images under `folder`, sorted, following linked subfolders (each real folder once, so
    a link loop ends), leaving out `out_dir` where it lies inside `folder` (an earlier run's results)."""
    out_real = os.path.realpath(out_dir)
    results_inside = out_real.startswith(os.path.realpath(folder) + os.sep)
    seen, found = set(), []
    for top, folders, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(top)
        if real in seen or (results_inside and (real == out_real or real.startswith(out_real + os.sep))):
            folders[:] = []
            continue
        seen.add(real)
        folders.sort()
        for name in files:
            path = Path(top) / name
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                found.append(path)
    return sorted(found)


def _name_inside(line: str) -> str:
    """A list line's name under the output folder: the path as written, less what would climb out
    of the folder (``..``, a leading ``/``), so that every output lands inside it."""
    parts = [part for part in posixpath.normpath(line.replace(os.sep, "/")).split("/") if part not in ("", ".", "..")]
    return "/".join(parts) or posixpath.basename(line) or "item"


RECORD_STATUSES = ("done", "failed")


def read_manifest(path: Path) -> List[dict]:
    """The manifest's records. A line that is not one (torn by a crash or a full disk, not UTF-8,
    or JSON of another shape) is skipped with a JobWarning."""
    records = []
    if not path.exists():
        return records
    with open(path, "rb") as manifest:
        for number, line in enumerate(manifest, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                record = None
            if not (
                isinstance(record, dict)
                and isinstance(record.get("item"), str)
                and record.get("status") in RECORD_STATUSES
                and isinstance(record.get("settings"), str)
            ):
                warnings.warn(
                    JobWarning(
                        f"{str(path)!r} line {number} is not a record of a job (torn by a crash or a "
                        "full disk, or written by something else); skipped"
                    ),
                    stacklevel=2,
                )
                continue
            records.append(record)
    return records


def append_record(path: Path, record: dict) -> None:
    """One line, one write, to a file opened for appending: atomic against other processes doing
    the same, and flushed to disk before the next item starts. A line left torn by an earlier
    crash is ended first, so this one stands on its own; a write cut short (a full disk) raises
    WriteError, and the torn line it leaves is skipped by :func:`read_manifest`."""
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    try:
        handle = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(handle).st_size
            if size and os.pread(handle, 1, size - 1) != b"\n":
                line = b"\n" + line
            if os.write(handle, line) != len(line):
                raise OSError(28, "No space left on device")  # ENOSPC: a short write
            os.fsync(handle)
        finally:
            os.close(handle)
    except OSError as error:
        raise WriteError(path, error) from None


def pending_items(
    items: Sequence[BatchItem], records: Sequence[dict], settings: str, overwrite: bool
) -> List[BatchItem]:
    """The items still to do. Refuses (OutputError), unless `overwrite`, a job folder holding results
    of other settings, or an output file that the manifest does not account for."""
    done = {r["item"] for r in records if r.get("status") == "done" and r.get("settings") == settings}
    other = [r["item"] for r in records if r.get("status") == "done" and r.get("settings") != settings]
    if other and not overwrite:
        raise OutputError(
            f"the output folder holds {len(other)} result(s) made with other settings (e.g. "
            f"{other[0]!r}); give `overwrite=True` to redo them with these settings, or another `out_dir` folder"
        )
    pending = []
    for item in items:
        if item.name in done and item.output.exists() and not overwrite:
            continue
        if item.output.exists() and item.name not in done and not overwrite:
            raise OutputError(
                f"{str(item.output)!r} exists but this job did not make it; give `overwrite=True` to "
                "replace it, or another `out_dir` folder"
            )
        pending.append(item)
    return pending


# At most this many pictures optimised together when the batch size is left to the job (GPUs).
AUTO_BATCH_LIMIT = 8


def run_batch(
    job_input: os.PathLike,
    styles: Sequence[os.PathLike],
    out_dir: os.PathLike,
    options: Optional[StyleOptions] = None,
    output_format: str = "png",
    overwrite: bool = False,
    on_item: Optional[Callable[[BatchItem, str, Optional[str]], None]] = None,
    on_progress: Optional[Callable] = None,
    distributed: Optional[Distributed] = None,
    on_start: Optional[Callable[[int, int], None]] = None,
    batch_size: Optional[int] = None,
) -> BatchSummary:
    """Stylizes every image of `job_input` (a folder or a list file) with `styles` into `out_dir`,
    doing only what an earlier run of the same job left undone (module docstring).

    batch_size: up to this many pictures of the same shape are optimised together, one VGG batch
    per step (``Stylizer.run_many``; each picture's result is the one it gets alone); fewer where
    that many would not fit the memory budget without checkpointing. None: 1 on a CPU (where
    a batch gains nothing at the default 512 px: BENCHMARKS.md, "Many pictures"), as many as fit
    up to AUTO_BATCH_LIMIT on a GPU. on_start(total, already_done) is called once the items are known;
    on_item(item, status, error) after each item this process finishes (status ``done`` or
    ``failed``, error: the one-line reason); on_progress: the stylizer's per-step callback. Under
    torchrun (`distributed`) the pending items are dealt round-robin to the ranks and the returned
    summary is the whole job's. Raises InputError for a job that cannot start (before any work).
    """
    options = options or StyleOptions()
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise OptionError(f"batch size must be a whole number of at least 1, got {batch_size!r}")
    distributed = distributed or Distributed()
    job_input, out_dir, styles = Path(job_input), Path(out_dir), existing_styles(styles)
    items = list_items(job_input, out_dir, output_format, inputs=[*styles, *options.input_files()])
    lock = distributed.on_first(lambda: _take_output_folder(out_dir))
    try:
        callbacks = _Callbacks(on_item, on_progress, on_start)
        return _run_items(items, styles, out_dir, options, output_format, overwrite, callbacks, distributed, batch_size)
    finally:
        if lock is not None:
            lock.release()


def _take_output_folder(out_dir: Path) -> JobLock:
    """Makes the output folder if missing and locks it for this job; raises OutputError (one line)
    where it is a file, cannot be made or written, or another job holds it."""
    make_output_folder(out_dir, "a batch")
    return JobLock(out_dir / LOCK_NAME, f"to {str(out_dir)!r}")


@dataclass
class _Callbacks:
    """run_batch's callbacks (any may be None)."""

    on_item: Optional[Callable] = None
    on_progress: Optional[Callable] = None
    on_start: Optional[Callable] = None


def _run_items(
    items, styles, out_dir, options, output_format, overwrite, callbacks: _Callbacks, distributed, batch_size
) -> BatchSummary:
    """run_batch's work once the output folder is this job's."""
    manifest = out_dir / MANIFEST_NAME
    settings = settings_hash(options, styles, output_format)
    pending = pending_items(items, read_manifest(manifest), settings, overwrite)
    # Every rank has read the same manifest before any rank appends to it.
    distributed.barrier()
    work = _BatchWork(
        manifest, settings, styles, distributed, callbacks, BatchSummary(skipped=len(items) - len(pending))
    )
    if callbacks.on_start is not None:
        callbacks.on_start(len(items), work.summary.skipped)
    try:
        work.run(pending[distributed.rank :: distributed.world_size], options, batch_size)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the items in flight are lost, every finished one stays
        work.summary.interrupted = True
    summary = work.summary
    if summary.interrupted:
        return summary
    everyone = distributed.gather((summary.done, summary.failed))
    summary.done = sum(done for done, _ in everyone)
    summary.failed = sorted(name for _, failed in everyone for name in failed)
    return summary


class _BatchWork:
    """This process's items of a batch job: loaded, grouped by their stage shapes into batches that
    fit (nst_ext.plan.run.fitting_batch_size), run, written and recorded in the manifest."""

    def __init__(
        self, manifest: Path, settings: str, styles, distributed, callbacks: _Callbacks, summary: BatchSummary
    ):
        self.manifest, self.settings, self.styles = manifest, settings, styles
        self.distributed, self.callbacks, self.summary = distributed, callbacks, summary
        self.limits: Dict[Tuple, int] = {}  # stage shapes -> how many pictures of them fit together
        self.waiting: Dict[Tuple, List] = {}  # stage shapes -> [(item, content, loaded at)] not yet run

    def finish(self, item, started: float, error: Optional[str] = None, pictures: int = 1) -> None:
        """The item's manifest line and count: done, or failed with the one-line `error`."""
        status = "done" if error is None else "failed"
        record = dict(
            item=item.name, output=str(item.output), status=status, settings=self.settings, rank=self.distributed.rank
        )
        if error is not None:
            record["error"] = error
            self.summary.failed.append(item.name)
        else:
            record.update(seconds=round(time.perf_counter() - started, 3), batch=pictures)
            self.summary.done += 1
        append_record(self.manifest, record)
        if self.callbacks.on_item is not None:
            self.callbacks.on_item(item, status, error)

    def run(self, mine, options, batch_size: Optional[int]) -> None:
        """Runs the items `mine`, each batch as soon as it is full, the partial ones at the end."""
        from nst_ext.io.images import load_image
        from nst_ext.stylizer import Stylizer

        self.stylizer = Stylizer(dataclasses.replace(options, device=self.distributed.device(options.device)))
        self.style_images = [
            load_image(style, f"style image {style}", options.max_input_pixels) for style in self.styles
        ]
        most = batch_size or (AUTO_BATCH_LIMIT if self.stylizer.device.type == "cuda" else 1)
        if not self.stylizer.shares_style_targets:  # nothing to batch: each picture's own targets
            most = 1
        waiting = self.waiting
        for item in mine:
            started = time.perf_counter()
            try:
                content = load_image(item.source, f"{item.name}", options.max_input_pixels)
            except InputError as error:
                self.finish(item, started, str(error))
                continue
            shapes = stage_shapes(self.stylizer.options, tuple(content.shape[-2:]))
            group = waiting.setdefault(shapes, [])
            group.append((item, content, started))
            if len(group) >= self._limit(shapes, content, most):
                self.run_group(waiting.pop(shapes))
            elif sum(len(g) for g in waiting.values()) >= 2 * most:  # bound the pictures held in memory
                self.run_group(waiting.pop(max(waiting, key=lambda key: len(waiting[key]))))
        for shapes in list(waiting):  # the last, partial batches
            self.run_group(waiting.pop(shapes))

    def _limit(self, shapes: Tuple, content, most: int) -> int:
        """How many pictures of these stage shapes fit together (worked out once per shapes)."""
        if shapes not in self.limits:
            self.limits[shapes] = (
                1
                if most == 1
                else fitting_batch_size(
                    self.stylizer.options,
                    self.stylizer.network,
                    tuple(content.shape[-2:]),
                    [tuple(style.shape[-2:]) for style in self.style_images],
                    most,
                )
            )
        return self.limits[shapes]

    def run_group(self, group) -> None:
        """Optimises `group`'s pictures together; an input error runs each alone, which says which."""
        from nst_ext.jobs.finish import finish_picture

        started = group[0][2]
        try:
            results = self.stylizer.run_many(
                [content for _, content, _ in group], self.style_images, callback=self.callbacks.on_progress
            )
        except InputError as error:  # e.g. too small for the layers at a stage: each alone says which
            if len(group) > 1:
                for member in group:
                    self.run_group([member])
                return
            self.finish(group[0][0], started, str(error))
            return
        if any(result.interrupted for result in results):
            raise KeyboardInterrupt
        for (item, _, _), result in zip(group, results):
            with deferred_signals():  # the picture and its manifest line land together
                # A full disk stops the job: the picture goes to a fallback folder, said in the error.
                finish_picture(
                    self.stylizer,
                    result,
                    item.source,
                    self.styles,
                    item.output,
                    "batch",
                    overwrite=True,
                    make_folder=True,
                )
                try:
                    self.finish(item, started, pictures=len(group))
                except WriteError:  # no line, no picture: the next run redoes the item
                    item.output.unlink(missing_ok=True)
                    raise
