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
import fcntl
import hashlib
import json
import os
import posixpath
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence

from nst_ext.errors import InputError, JobWarning, OptionError, OutputError
from nst_ext.options import StyleOptions
from nst_ext.outputs import (WriteError, check_folder_writable, check_regular_file, deferred_signals,
                             describe_os_error, same_file, write_or_rescue)

MANIFEST_NAME = "nst-ext-manifest.jsonl"
# Held (flock) by the one job writing to an output folder; a second job there is refused.
LOCK_NAME = ".nst-ext.lock"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
OUTPUT_FORMATS = ("png", "jpg", "webp")
# Options that change how a picture is computed, not what it is: they do not make a new job.
SAME_PICTURE_OPTIONS = ("device", "devices", "device_split", "cuda_graph", "max_memory", "checkpointing")


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
        failed = f"{len(self.failed)} failed" + (f" ({', '.join(self.failed[:5])}"
                                                 f"{', …' if len(self.failed) > 5 else ''})" if self.failed else "")
        return f"{self.done} done, {self.skipped} skipped as already done, {failed}"


def list_items(job_input: Path, out_dir: Path, output_format: str, inputs: Iterable[os.PathLike] = ()) -> List[BatchItem]:
    """The job's items, sorted by name, each with its output inside `out_dir`. Raises InputError
    for a missing input, an empty job, two inputs that would write the same output (``a.jpg`` and
    ``a.png``), and an output that would replace an input of the job (an item, or one of `inputs`:
    the styles, an init image, a weights file), with or without --overwrite."""
    if output_format not in OUTPUT_FORMATS:
        raise OptionError(f"--format must be one of {', '.join(OUTPUT_FORMATS)}, got {output_format!r}")
    if job_input.is_dir():
        if same_file(job_input, out_dir):
            raise OutputError(f"the output folder {str(out_dir)!r} is the input folder; the results would lie among "
                              "(and could replace) the pictures: give another -o folder")
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
        raise InputError(f"batch input {str(job_input)!r} does not exist; give a folder of images or a text file "
                         "listing image paths")
    if not sources:
        raise InputError(what)
    items, by_output = [], {}
    for source, name in sources:
        output = out_dir / Path(name).with_suffix("." + output_format)
        if output in by_output:
            raise InputError(f"{by_output[output]!r} and {name!r} would both be written to {str(output)!r}; "
                             "rename one of them")
        by_output[output] = name
        items.append(BatchItem(source, name, output))
    protected = _FileSet([item.source for item in items] + [Path(path) for path in inputs])
    for item in items:
        if item.output in protected:
            raise OutputError(f"{item.name!r} would be written to {str(item.output)!r}, which is one of this job's "
                              "inputs; an input is never replaced, even with --overwrite: give another -o folder "
                              "(or --format)")
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


class _FileSet:
    """Paths compared as files: by real path, and by device and inode where they exist (hard links)."""

    def __init__(self, paths: Iterable[Path]):
        self.real, self.inodes = set(), set()
        for path in paths:
            self.real.add(os.path.realpath(path))
            try:
                info = os.stat(path)
                self.inodes.add((info.st_dev, info.st_ino))
            except OSError:
                pass

    def __contains__(self, path: Path) -> bool:
        if os.path.realpath(path) in self.real:
            return True
        try:
            info = os.stat(path)
        except OSError:
            return False
        return (info.st_dev, info.st_ino) in self.inodes


def settings_hash(options: StyleOptions, styles: Sequence[Path], extra: str) -> str:
    """A hash of everything that decides the pictures: the options (less SAME_PICTURE_OPTIONS),
    the style images' bytes and `extra`, the job's own settings (a batch's output format, a video's
    temporal settings)."""
    fields = {k: v for k, v in dataclasses.asdict(options).items() if k not in SAME_PICTURE_OPTIONS}
    digest = hashlib.sha256(json.dumps([fields, extra], sort_keys=True, default=str).encode())
    for style in styles:
        with open(style, "rb") as data:
            for block in iter(lambda: data.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


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
            if not (isinstance(record, dict) and isinstance(record.get("item"), str)
                    and record.get("status") in RECORD_STATUSES and isinstance(record.get("settings"), str)):
                warnings.warn(JobWarning(f"{str(path)!r} line {number} is not a record of a job (torn by a crash or a "
                                         "full disk, or written by something else); skipped"))
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


class JobLock:
    """An exclusive lock (flock) on `path`, taken at once or refused (OutputError) when another
    process holds it: two jobs writing the same outputs would each do every item. The kernel
    releases it when the process ends, however it ends."""

    def __init__(self, path: Path, what: str):
        try:
            self.handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise OutputError(f"cannot write {str(path)!r}: {describe_os_error(error)}") from None
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.handle, 32, 0).decode(errors="replace").strip()
            os.close(self.handle)
            raise OutputError(f"another nst-ext job{f' (process {holder})' if holder else ''} is writing {what}; "
                              "wait for it to finish, or give another output") from None
        try:  # who holds it, for the refusal's message; on a full disk the lock holds without it
            os.ftruncate(self.handle, 0)
            os.pwrite(self.handle, str(os.getpid()).encode(), 0)
        except OSError:
            pass

    def release(self) -> None:
        if self.handle is not None:
            os.close(self.handle)
            self.handle = None


def pending_items(items: Sequence[BatchItem], records: Sequence[dict], settings: str,
                  overwrite: bool) -> List[BatchItem]:
    """The items still to do. Refuses (OutputError), unless `overwrite`, a job folder holding results
    of other settings, or an output file that the manifest does not account for."""
    done = {r["item"] for r in records if r.get("status") == "done" and r.get("settings") == settings}
    other = [r["item"] for r in records if r.get("status") == "done" and r.get("settings") != settings]
    if other and not overwrite:
        raise OutputError(f"the output folder holds {len(other)} result(s) made with other settings (e.g. "
                          f"{other[0]!r}); give --overwrite to redo them with these settings, or another -o folder")
    pending = []
    for item in items:
        if item.name in done and item.output.exists() and not overwrite:
            continue
        if item.output.exists() and item.name not in done and not overwrite:
            raise OutputError(f"{str(item.output)!r} exists but this job did not make it; give --overwrite to "
                              "replace it, or another -o folder")
        pending.append(item)
    return pending


def _existing_styles(styles: Sequence[os.PathLike]) -> List[Path]:
    """The style image paths of a job, each checked to be a readable file before any work."""
    paths = [Path(style) for style in styles]
    for style in paths:
        check_regular_file(style, "style image")
    return paths


class Distributed:
    """This process's place in a torchrun launch (``WORLD_SIZE`` > 1 in the environment): rank,
    world size, and the device of its local rank (GPU ``local_rank % count``, or the CPU); one
    process alone otherwise."""

    def __init__(self):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if self.world_size > 1:
            import torch.distributed as dist

            # Only small Python objects cross processes (barriers, the summary), never tensors: gloo
            # carries them on every machine, and several processes may share one GPU (NCCL refuses).
            dist.init_process_group("gloo")

    def device(self, requested: str) -> str:
        if requested == "auto" and self.world_size > 1:
            import torch

            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            return f"cuda:{self.local_rank % count}" if count else "cpu"
        return requested

    def on_first(self, work: Callable):
        """Runs `work` on rank 0 alone and shares its outcome: where it raised an InputError, every
        rank raises it (no rank is left waiting for one that stopped). Returns work's result on
        rank 0, None on the others."""
        result = error = None
        if self.rank == 0:
            try:
                result = work()
            except InputError as problem:
                error = problem
        first = self.gather(None if error is None else (type(error), str(error)))[0]
        if error is not None:
            raise error
        if first is not None:
            kind, message = first
            raise kind(message)
        return result

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def gather(self, value) -> List:
        if self.world_size == 1:
            return [value]
        import torch.distributed as dist

        values = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def close(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


# At most this many pictures optimised together when the batch size is left to the job (GPUs).
AUTO_BATCH_LIMIT = 8


def fitting_batch_size(stylizer, content_shape, style_shapes, most: int) -> int:
    """The largest number of pictures of `content_shape`, up to `most`, that `stylizer` can optimise
    together within its memory budget without checkpointing or a shorter L-BFGS history (their
    price per step would eat what the batch gains); at least 1."""
    for pictures in range(most, 1, -1):
        try:
            plans = stylizer.memory_plans(content_shape, style_shapes, pictures=pictures)
        except OptionError:  # does not fit at all
            continue
        if not any(plan.budget_limited for plan in plans):
            return pictures
    return 1


def run_batch(job_input: os.PathLike, styles: Sequence[os.PathLike], out_dir: os.PathLike,
              options: Optional[StyleOptions] = None, output_format: str = "png", overwrite: bool = False,
              on_item: Optional[Callable[[BatchItem, str, Optional[str]], None]] = None,
              on_progress: Optional[Callable] = None, distributed: Optional[Distributed] = None,
              on_start: Optional[Callable[[int, int], None]] = None, batch_size: Optional[int] = None) -> BatchSummary:
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
    job_input, out_dir, styles = Path(job_input), Path(out_dir), _existing_styles(styles)
    items = list_items(job_input, out_dir, output_format, inputs=[*styles, *options.input_files()])
    lock = distributed.on_first(lambda: _take_output_folder(out_dir))
    try:
        return _run_items(items, styles, out_dir, options, output_format, overwrite, on_item, on_progress,
                          distributed, on_start, batch_size)
    finally:
        if lock is not None:
            lock.release()


def _take_output_folder(out_dir: Path) -> JobLock:
    """Makes the output folder if missing and locks it for this job; raises OutputError (one line)
    where it is a file, cannot be made or written, or another job holds it."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"the output {str(out_dir)!r} is a file; a batch writes into a folder: give a folder name")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot make the output folder {str(out_dir)!r}: {describe_os_error(error)}") from None
    check_folder_writable(out_dir, str(out_dir))
    return JobLock(out_dir / LOCK_NAME, f"to {str(out_dir)!r}")


def _save_item(image, output: Path) -> None:
    """A batch item's picture, into its subfolder (made if missing)."""
    from nst_ext.images import save_image

    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WriteError(output, error) from None
    save_image(image, output, overwrite=True)


def _run_items(items, styles, out_dir, options, output_format, overwrite, on_item, on_progress, distributed, on_start,
               batch_size) -> BatchSummary:
    """run_batch's work once the output folder is this job's."""
    from nst_ext.images import load_image
    from nst_ext.stylizer import Stylizer

    manifest = out_dir / MANIFEST_NAME
    settings = settings_hash(options, styles, output_format)
    pending = pending_items(items, read_manifest(manifest), settings, overwrite)
    # Every rank has read the same manifest before any rank appends to it.
    distributed.barrier()
    mine = pending[distributed.rank::distributed.world_size]
    summary = BatchSummary(skipped=len(items) - len(pending))
    if on_start is not None:
        on_start(len(items), summary.skipped)

    def finish(item, started, error=None, pictures=1):
        """The item's manifest line and count: done, or failed with the one-line `error`."""
        status = "done" if error is None else "failed"
        record = dict(item=item.name, output=str(item.output), status=status, settings=settings,
                      rank=distributed.rank)
        if error is not None:
            record["error"] = error
            summary.failed.append(item.name)
        else:
            record.update(seconds=round(time.perf_counter() - started, 3), batch=pictures)
            summary.done += 1
        append_record(manifest, record)
        if on_item is not None:
            on_item(item, status, error)

    try:
        stylizer = Stylizer(dataclasses.replace(options, device=distributed.device(options.device)))
        style_images = [load_image(style, f"style image {style}", options.max_input_pixels) for style in styles]
        most = batch_size or (AUTO_BATCH_LIMIT if stylizer.device.type == "cuda" else 1)
        if not stylizer.shares_style_targets:  # nothing to batch: each picture's own targets
            most = 1
        limits = {}  # stage shapes -> how many pictures of them fit together
        waiting = {}  # stage shapes -> [(item, content, loaded at)] not yet run

        def run(group):
            started = group[0][2]
            try:
                results = stylizer.run_many([content for _, content, _ in group], style_images, callback=on_progress)
            except InputError as error:  # e.g. too small for the layers at a stage: each alone says which
                if len(group) > 1:
                    for member in group:
                        run([member])
                    return
                finish(group[0][0], started, str(error))
                return
            if any(result.interrupted for result in results):
                raise KeyboardInterrupt
            for (item, _, _), result in zip(group, results):
                with deferred_signals():  # the picture and its manifest line land together
                    # A full disk stops the job: the picture goes to a fallback folder, said in the error.
                    write_or_rescue(lambda path: _save_item(result.tensor, path), item.output)
                    try:
                        finish(item, started, pictures=len(group))
                    except WriteError:  # no line, no picture: the next run redoes the item
                        item.output.unlink(missing_ok=True)
                        raise

        for item in mine:
            started = time.perf_counter()
            try:
                content = load_image(item.source, f"{item.name}", options.max_input_pixels)
            except InputError as error:
                finish(item, started, str(error))
                continue
            shapes = stylizer.stage_shapes(tuple(content.shape[-2:]))
            if shapes not in limits:
                limits[shapes] = 1 if most == 1 else fitting_batch_size(
                    stylizer, tuple(content.shape[-2:]), [tuple(style.shape[-2:]) for style in style_images], most)
            group = waiting.setdefault(shapes, [])
            group.append((item, content, started))
            if len(group) >= limits[shapes]:
                run(waiting.pop(shapes))
            elif sum(len(g) for g in waiting.values()) >= 2 * most:  # bound the pictures held in memory
                run(waiting.pop(max(waiting, key=lambda key: len(waiting[key]))))
        for shapes in list(waiting):  # the last, partial batches
            run(waiting.pop(shapes))
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the items in flight are lost, every finished one stays
        summary.interrupted = True
    if summary.interrupted:
        return summary
    everyone = distributed.gather((summary.done, summary.failed))
    summary.done = sum(done for done, _ in everyone)
    summary.failed = sorted(name for _, failed in everyone for name in failed)
    return summary


# -- video -------------------------------------------------------------------------------------------
# Defaults of `nst-ext video` (BENCHMARKS.md, "Video"): each frame after the first starts from the
# previous stylized frame and runs one stage of FRAME_STEPS at the output size; the temporal term
# keeps pixels that did not move in the input where they were.
FRAME_STEPS = 30
TEMPORAL_WEIGHT = 200.0
# A pixel is static when no channel changed by more than this between two input frames (values in
# [0, 1]); the motion is grown by MOTION_MARGIN pixels so that the edges of moving things are free.
STATIC_THRESHOLD = 0.03
MOTION_MARGIN = 2
# Under torchrun each rank's chunk starts this many frames early (not written) so that its first
# frame is coherent with the chunk before.
CHUNK_OVERLAP = 3


def motion_mask(current, previous):
    """(H, W) float32: 1 where the input frame did not change (both ``(3, H, W)`` in [0, 1]), 0
    where it moved and within MOTION_MARGIN pixels of that."""
    import torch.nn.functional as F

    moved = ((current - previous).abs().amax(0) > STATIC_THRESHOLD).float()[None, None]
    moved = F.max_pool2d(moved, 2 * MOTION_MARGIN + 1, stride=1, padding=MOTION_MARGIN)
    return 1.0 - moved[0, 0]


def flicker(outputs, inputs) -> float:
    """Mean absolute difference between consecutive output frames over the pixels static in the
    input (motion_mask), averaged over frame pairs: the figure BENCHMARKS.md reports."""
    values = []
    for index in range(1, len(outputs)):
        mask = motion_mask(inputs[index], inputs[index - 1])
        difference = (outputs[index] - outputs[index - 1]).abs().mean(0)
        values.append(float((difference * mask).sum() / mask.sum().clamp(min=1)))
    return sum(values) / max(1, len(values))


@dataclass
class VideoSummary:
    frames: int = 0  # frames of the clip
    stylized: int = 0  # stylized by this run (all ranks)
    kept: int = 0  # kept from a stopped run
    interrupted: bool = False


def _frame_path(work: Path, index: int) -> Path:
    return work / f"frame{index:06d}.png"


def run_video(video: os.PathLike, styles: Sequence[os.PathLike], output: os.PathLike,
              options: Optional[StyleOptions] = None, temporal_weight: float = TEMPORAL_WEIGHT,
              frame_steps: int = FRAME_STEPS, overwrite: bool = False,
              on_frame: Optional[Callable[[int, int], None]] = None, on_progress: Optional[Callable] = None,
              distributed: Optional[Distributed] = None) -> VideoSummary:
    """Stylizes every frame of `video` with temporal coherence (Ruder et al. 2016: each frame starts
    from the previous stylized frame, and a temporal term keeps static pixels) into `output`, with
    the input's frame count, frame rate and audio, at ``options.size`` (sides made even for
    4:2:0 video). Finished frames are kept in a work folder beside the output (``.NAME.frames``),
    so a stopped run continues where it stopped; the folder is removed once the video is written,
    and when the run is refused before its first frame. The folder is locked: a second job writing
    the same video is refused. Under torchrun each rank takes a contiguous chunk, started
    CHUNK_OVERLAP frames early; rank 0 writes the video. on_frame(done, total) after each frame
    this process writes."""
    import shutil

    from nst_ext.images import load_image, long_side_shape
    from nst_ext.video import check_video_output, even_shape, probe, write_video

    options = options or StyleOptions()
    distributed = distributed or Distributed()
    video, output, styles = Path(video), Path(output), _existing_styles(styles)
    if not (isinstance(frame_steps, int) and frame_steps >= 1):
        raise OptionError(f"frame steps must be a positive whole number, got {frame_steps!r}")
    if not temporal_weight >= 0:
        raise OptionError(f"temporal weight must be a non-negative number, got {temporal_weight!r}")
    check_video_output(output, overwrite, inputs=[video, *styles, *options.input_files()])
    info = probe(video)
    shape = even_shape(long_side_shape(info.height, info.width, options.size), output.suffix.lower())
    work = output.parent / f".{output.name}.frames"
    settings = settings_hash(options, styles, json.dumps([temporal_weight, frame_steps, shape, str(video.resolve())]))
    lock = distributed.on_first(lambda: _take_work_folder(work, settings, video, output, overwrite))
    try:
        try:
            summary = _stylize_frames(video, info, shape, styles, work, options, temporal_weight, frame_steps,
                                      on_frame, on_progress, distributed)
        except InputError:  # refused (e.g. a style too small for the layers): no empty work folder left
            if distributed.rank == 0 and not any(_frame_path(work, index).exists() for index in range(info.frames)):
                shutil.rmtree(work, ignore_errors=True)
            raise
        if summary.interrupted:
            return summary
        summary.stylized = sum(distributed.gather(summary.stylized))
        if distributed.rank == 0:
            frames = (load_image(_frame_path(work, index)) for index in range(info.frames))
            write_video(frames, output, info.fps, audio_from=video if info.has_audio else None, overwrite=overwrite)
            shutil.rmtree(work)
        distributed.barrier()
        return summary
    finally:
        if lock is not None:
            lock.release()


def _take_work_folder(work: Path, settings: str, video: Path, output: Path, overwrite: bool) -> JobLock:
    """The video's work folder, made if missing and locked for this job. A stopped run's frames are
    kept when they were made with the same `settings`, cleared with `overwrite` otherwise; raises
    OutputError (one line) for a file in its place, a folder of other or unreadable settings
    without `overwrite`, or another job holding it."""
    if work.exists() and not work.is_dir():
        raise OutputError(f"{str(work)!r} is a file, where this video keeps its finished frames; move or remove it")
    existed = work.exists()
    try:
        work.mkdir(exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot make the work folder {str(work)!r}: {describe_os_error(error)}") from None
    lock = JobLock(work / LOCK_NAME, f"the video {str(output)!r}")
    try:
        record = work / "settings.json"
        made_with = None
        if record.exists():
            try:
                made_with = json.loads(record.read_text()).get("settings")
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
                made_with = "unreadable"
        if existed and made_with != settings:
            if not overwrite:
                if made_with == "unreadable":
                    raise OutputError(f"{str(work)!r} holds a stopped run whose settings.json cannot be read, so its "
                                      "frames cannot be matched to these settings; give --overwrite to start over")
                raise OutputError(f"{str(work)!r} holds the frames of a stopped run with other settings; give "
                                  "--overwrite to start over, or the same settings to continue it")
            import shutil

            for path in work.iterdir():
                if path.name != LOCK_NAME:
                    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            made_with = None
        if made_with is None:
            record.write_text(json.dumps({"settings": settings, "video": str(video)}))
    except OSError as error:
        lock.release()
        raise OutputError(f"cannot write the work folder {str(work)!r}: {describe_os_error(error)}") from None
    except BaseException:
        lock.release()
        raise
    return lock


def _stylize_frames(video, info, shape, styles, work, options, temporal_weight, frame_steps, on_frame, on_progress,
                    distributed) -> VideoSummary:
    """The frames of this process's chunk that the work folder lacks, each written there."""
    from nst_ext.images import load_image, save_image
    from nst_ext.objective import TemporalTarget
    from nst_ext.stylizer import Stylizer
    from nst_ext.video import read_frames

    chunk = -(-info.frames // distributed.world_size)
    first, last = distributed.rank * chunk, min(info.frames, (distributed.rank + 1) * chunk)
    missing = [index for index in range(first, last) if not _frame_path(work, index).exists()]
    summary = VideoSummary(frames=info.frames, kept=sum(1 for i in range(info.frames) if _frame_path(work, i).exists()))
    distributed.barrier()  # every rank has looked before any writes
    try:
        if missing:
            size = max(shape)
            opening = Stylizer(dataclasses.replace(options, size=size, scales=None,
                                                   device=distributed.device(options.device)))
            following = Stylizer(dataclasses.replace(opening.options, scales=[size], steps=frame_steps))
            style_images = [load_image(style, f"style image {style}", options.max_input_pixels) for style in styles]
            start = missing[0]
            previous_output = previous_input = None
            if start > first:  # continue the chain from the last frame written
                previous_output = load_image(_frame_path(work, start - 1))
                begin = start - 1
            else:
                begin = max(0, first - CHUNK_OVERLAP)
            for index, frame in enumerate(read_frames(video, shape, start=begin), start=begin):
                if index >= last:
                    break
                if index < start and previous_output is not None:  # the frame before `start`
                    previous_input = frame
                    continue
                if index >= first and _frame_path(work, index).exists():  # kept from a stopped run
                    previous_output, previous_input = load_image(_frame_path(work, index)), frame
                    continue
                if previous_output is None:
                    result = opening.run(frame, style_images, callback=on_progress)
                else:
                    temporal = TemporalTarget(previous_output, motion_mask(frame, previous_input), temporal_weight)
                    result = following.run(frame, style_images, callback=on_progress, init=previous_output,
                                           temporal=temporal)
                if result.interrupted:
                    raise KeyboardInterrupt
                previous_output, previous_input = result.tensor, frame
                if index >= first:
                    save_image(result.tensor, _frame_path(work, index), overwrite=True)
                    summary.stylized += 1
                    if on_frame is not None:
                        on_frame(index - first + 1, last - first)
    except KeyboardInterrupt:
        summary.interrupted = True
    return summary
