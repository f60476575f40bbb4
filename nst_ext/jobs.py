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
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from nst_ext.errors import InputError, OptionError, OutputError
from nst_ext.options import StyleOptions
from nst_ext.outputs import check_folder_writable, deferred_signals

MANIFEST_NAME = "nst-ext-manifest.jsonl"
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


def list_items(job_input: Path, out_dir: Path, output_format: str) -> List[BatchItem]:
    """The job's items, sorted by name. Raises InputError for a missing input, an empty job, or
    two inputs that would write the same output (``a.jpg`` and ``a.png``)."""
    if output_format not in OUTPUT_FORMATS:
        raise OptionError(f"--format must be one of {', '.join(OUTPUT_FORMATS)}, got {output_format!r}")
    if job_input.is_dir():
        out_resolved = out_dir.resolve()
        sources = []
        for path in sorted(job_input.rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and out_resolved not in path.resolve().parents:
                sources.append((path, path.relative_to(job_input).as_posix()))
        what = f"folder {str(job_input)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})"
    elif job_input.is_file():
        try:
            lines = job_input.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise InputError(f"cannot read the list of images {str(job_input)!r}: {error}") from None
        sources = []
        for line in lines:
            line = line.strip()
            if line and not line.startswith("#"):
                path = Path(line) if Path(line).is_absolute() else job_input.parent / line
                sources.append((path, Path(line).as_posix().lstrip("/")))
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
    return items


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


def read_manifest(path: Path) -> List[dict]:
    """The manifest's records; a line cut short by a crash is ignored."""
    records = []
    if path.exists():
        with open(path) as manifest:
            for line in manifest:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    return records


def append_record(path: Path, record: dict) -> None:
    """One line, one write, to a file opened for appending: atomic against other processes doing
    the same, and flushed to disk before the next item starts."""
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    handle = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(handle, line)
        os.fsync(handle)
    finally:
        os.close(handle)


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
    """The style image paths of a job, each checked to exist before any work."""
    paths = [Path(style) for style in styles]
    for style in paths:
        if not style.is_file():
            raise InputError(f"style image {str(style)!r} does not exist")
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
    from nst_ext.images import load_image, save_image
    from nst_ext.stylizer import Stylizer

    options = options or StyleOptions()
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise OptionError(f"batch size must be a whole number of at least 1, got {batch_size!r}")
    distributed = distributed or Distributed()
    job_input, out_dir, styles = Path(job_input), Path(out_dir), _existing_styles(styles)
    items = list_items(job_input, out_dir, output_format)
    if distributed.rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
    distributed.barrier()
    check_folder_writable(out_dir, str(out_dir))
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
                item.output.parent.mkdir(parents=True, exist_ok=True)
                with deferred_signals():  # the picture and its manifest line land together
                    save_image(result.tensor, item.output, overwrite=True)
                    finish(item, started, pictures=len(group))

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
    so a stopped run continues where it stopped; the folder is removed once the video is written.
    Under torchrun each rank takes a contiguous chunk, started CHUNK_OVERLAP frames early; rank 0
    writes the video. on_frame(done, total) after each frame this process writes."""
    from nst_ext.images import load_image, long_side_shape, save_image
    from nst_ext.objective import TemporalTarget
    from nst_ext.stylizer import Stylizer
    from nst_ext.video import check_video_output, even_shape, probe, read_frames, write_video

    options = options or StyleOptions()
    distributed = distributed or Distributed()
    video, output, styles = Path(video), Path(output), _existing_styles(styles)
    if not (isinstance(frame_steps, int) and frame_steps >= 1):
        raise OptionError(f"frame steps must be a positive whole number, got {frame_steps!r}")
    if not temporal_weight >= 0:
        raise OptionError(f"temporal weight must be a non-negative number, got {temporal_weight!r}")
    check_video_output(output, overwrite, source=video if video.exists() else None)
    info = probe(video)
    shape = even_shape(long_side_shape(info.height, info.width, options.size), output.suffix.lower())
    work = output.parent / f".{output.name}.frames"
    settings = settings_hash(options, styles, json.dumps([temporal_weight, frame_steps, shape, str(video.resolve())]))
    record = work / "settings.json"
    if distributed.rank == 0:
        if work.exists():
            made_with = json.loads(record.read_text()).get("settings") if record.exists() else None
            if made_with != settings:
                if not overwrite:
                    raise OutputError(f"{str(work)!r} holds the frames of a stopped run with other settings; give "
                                      "--overwrite to start over, or the same settings to continue it")
                import shutil

                shutil.rmtree(work)
        work.mkdir(exist_ok=True)
        if not record.exists():
            record.write_text(json.dumps({"settings": settings, "video": str(video)}))
    distributed.barrier()

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
    summary.stylized = sum(distributed.gather(summary.stylized))
    if distributed.rank == 0:
        frames = (load_image(_frame_path(work, index)) for index in range(info.frames))
        write_video(frames, output, info.fps, audio_from=video if info.has_audio else None, overwrite=overwrite)
        import shutil

        shutil.rmtree(work)
    distributed.barrier()
    return summary
