"""A video with one look (``nst-ext video``): every frame stylized with temporal coherence after
Ruder, Dosovitskiy & Brox (2016), the finished frames kept in a work folder so that a stopped run
continues, the frames split over the processes of a ``torchrun`` launch. How a frame follows the
ones before it is :mod:`nst_ext.jobs.coherence`'s; reading and writing video :mod:`nst_ext.io.video`'s."""

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from nst_ext.errors import InputError, OptionError, OutputError
from nst_ext.jobs.coherence import LONG_TERM, TEMPORAL_WEIGHT, FrameChain, check_long_term
from nst_ext.jobs.passes import check_passes, refine_in_passes
from nst_ext.jobs.common import LOCK_NAME, Distributed, JobLock, existing_styles, settings_hash
from nst_ext.plan.options import StyleOptions
from nst_ext.io.outputs import describe_os_error

# Defaults of `nst-ext video` (BENCHMARKS.md, "Video"): each frame after the first runs one stage of
# FRAME_STEPS at the output size, after the frames before it (nst_ext.jobs.coherence).
FRAME_STEPS = 30
# Under torchrun each rank's chunk starts this many frames early (not written) so that its first
# frame is coherent with the chunk before.
CHUNK_OVERLAP = 3
# In the work folder: how many passes over the whole clip are finished (`passes` > 1).
PASSES_NAME = "passes.json"


@dataclass
class VideoSummary:
    frames: int = 0  # frames of the clip
    stylized: int = 0  # stylized by this run (all ranks)
    kept: int = 0  # kept from a stopped run
    interrupted: bool = False


def _frame_path(work: Path, index: int) -> Path:
    return work / f"frame{index:06d}.png"


def _checked_frame_settings(
    frame_steps: int, temporal_weight: float, coherence: str, long_term: Sequence[int]
) -> Sequence[int]:
    """Refuses (OptionError, one line) a video's own settings out of range; returns `long_term` checked."""
    if not (isinstance(frame_steps, int) and frame_steps >= 1):
        raise OptionError(f"frame steps must be a positive whole number, got {frame_steps!r}")
    if not temporal_weight >= 0:
        raise OptionError(f"temporal weight must be a non-negative number, got {temporal_weight!r}")
    long_term = check_long_term(long_term)
    FrameChain.check_coherence(coherence)
    return long_term


def _write_finished_video(video: Path, info, work: Path, output: Path, options, styles, overwrite: bool) -> None:
    """The finished frames of `work` written as `output` with the input's frame rate and audio and
    the run's record; the work folder removed."""
    import shutil

    from nst_ext.io import provenance
    from nst_ext.io.images import load_image
    from nst_ext.io.video import write_video

    frames = (load_image(_frame_path(work, index)) for index in range(info.frames))
    record = provenance.make_record(options, video, styles, options.seed, None, options.device, command="video")
    write_video(
        frames, output, info.fps, audio_from=video if info.has_audio else None, overwrite=overwrite, comment=record
    )
    shutil.rmtree(work)


def run_video(
    video: os.PathLike,
    styles: Sequence[os.PathLike],
    output: os.PathLike,
    options: Optional[StyleOptions] = None,
    temporal_weight: float = TEMPORAL_WEIGHT,
    frame_steps: int = FRAME_STEPS,
    coherence: str = "flow",
    long_term: Sequence[int] = LONG_TERM,
    overwrite: bool = False,
    on_frame: Optional[Callable[[int, int], None]] = None,
    on_progress: Optional[Callable] = None,
    distributed: Optional[Distributed] = None,
    passes: int = 1,
) -> VideoSummary:
    """Stylizes every frame of `video` with temporal coherence (Ruder et al. 2016; `coherence` and
    `long_term` as :class:`nst_ext.jobs.coherence.FrameChain` takes them) into `output`, with
    the input's frame count, frame rate and audio, at ``options.output_size`` (sides made even for
    4:2:0 video). Finished frames are kept in a work folder beside the output (``.NAME.frames``),
    so a stopped run continues where it stopped; the folder is removed once the video is written,
    and when the run is refused before its first frame. The folder is locked: a second job writing
    the same video is refused. Under torchrun each rank takes a contiguous chunk, started
    CHUNK_OVERLAP frames early; rank 0 writes the video. With `passes` > 1, further passes over the
    whole clip follow in alternating directions (:mod:`nst_ext.jobs.passes`; one process only), the
    finished passes recorded in the work folder. on_frame(done, total) after each frame this process
    writes (the count starts again for each pass after the first)."""
    import shutil

    from nst_ext.plan.layers import long_side_shape
    from nst_ext.io.video import check_video_output, even_shape, probe

    options = options or StyleOptions()
    distributed = distributed or Distributed()
    video, output, styles = Path(video), Path(output), existing_styles(styles)
    long_term = _checked_frame_settings(frame_steps, temporal_weight, coherence, long_term)
    check_passes(passes)
    if passes > 1 and distributed.world_size > 1:
        raise OptionError("several passes run in one process: launch the video without torchrun, or use one pass")
    if passes > 1 and coherence != "flow":
        raise OptionError("several passes follow the optical flow: use `coherence=flow`, or one pass")
    check_video_output(output, overwrite, inputs=[video, *styles, *options.input_files()])
    info = probe(video)
    if coherence == "flow":
        from nst_ext.jobs.flow import require_opencv

        require_opencv()  # one line before any work, not at the second frame
    shape = even_shape(long_side_shape(info.height, info.width, options.output_size), output.suffix.lower())
    work = output.parent / f".{output.name}.frames"
    settings = settings_hash(
        options,
        styles,
        json.dumps(
            [temporal_weight, frame_steps, coherence, long_term, shape, str(video.resolve())] + [passes] * (passes > 1)
        ),
    )
    lock = distributed.on_first(lambda: _take_work_folder(work, settings, video, output, overwrite))
    try:
        try:
            chain = dict(coherence=coherence, long_term=long_term, temporal_weight=temporal_weight)
            summary = _stylize_frames(
                video, info, shape, styles, work, options, chain, frame_steps, on_frame, on_progress, distributed
            )
        except InputError:  # refused (e.g. a style too small for the layers): no empty work folder left
            if distributed.rank == 0 and not any(_frame_path(work, index).exists() for index in range(info.frames)):
                shutil.rmtree(work, ignore_errors=True)
            raise
        if summary.interrupted:
            return summary
        if passes > 1:
            device = distributed.device(options.device)
            try:
                summary.interrupted = _refine_in_passes(
                    video, info, shape, styles, work, options, device, temporal_weight, frame_steps, passes, on_frame
                )
            except KeyboardInterrupt:  # while the input frames were kept: the finished passes stand
                summary.interrupted = True
            if summary.interrupted:
                return summary
        summary.stylized = sum(distributed.gather(summary.stylized))
        if distributed.rank == 0:
            _write_finished_video(video, info, work, output, options, styles, overwrite)
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
                    raise OutputError(
                        f"{str(work)!r} holds a stopped run whose settings.json cannot be read, so its "
                        "frames cannot be matched to these settings; give `overwrite=True` to start over"
                    )
                raise OutputError(
                    f"{str(work)!r} holds the frames of a stopped run with other settings; give "
                    "`overwrite=True` to start over, or the same settings to continue it"
                )
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


def _frame_stylizers(options: StyleOptions, shape, frame_steps: int, device):
    """(the first frame's Stylizer: the full coarse-to-fine run at the frame's long side; the later
    frames': one stage of `frame_steps` at that size), on `device`."""
    from nst_ext.stylizer import Stylizer

    size = max(shape)
    opening = Stylizer(dataclasses.replace(options, size=size, scales=None, device=device))
    return opening, Stylizer(dataclasses.replace(opening.options, scales=[size], steps=frame_steps))


class _WorkFrames:
    """The finished frames in a work folder as a sequence: read when asked for, written (atomically)
    when replaced; each ``(3, H, W)`` float32 in [0, 1]."""

    def __init__(self, work: Path, frames: int):
        self.work, self.frames = work, frames

    def __len__(self) -> int:
        return self.frames

    def __getitem__(self, index: int):
        from nst_ext.io.images import load_image

        return load_image(_frame_path(self.work, index))

    def __setitem__(self, index: int, frame) -> None:
        from nst_ext.io.images import save_image

        save_image(frame, _frame_path(self.work, index), overwrite=True)


class _InputFrames:
    """The clip's input frames at the run's size, decoded once into the work folder as 8-bit PNGs
    (a pass runs backward, which a video cannot be read in; a long clip does not fit in memory), each
    given back as ``(3, H, W)`` float32 in [0, 1]."""

    def __init__(self, video: Path, shape, work: Path, frames: int):
        from nst_ext.io.images import save_image
        from nst_ext.io.video import read_frames

        self.work, self.frames = work, frames
        if not all(self._path(index).exists() for index in range(frames)):
            for index, frame in enumerate(read_frames(video, shape)):
                if index < frames and not self._path(index).exists():
                    save_image(frame, self._path(index), overwrite=True)

    def _path(self, index: int) -> Path:
        return self.work / f"input{index:06d}.png"

    def __len__(self) -> int:
        return self.frames

    def __getitem__(self, index: int):
        from nst_ext.io.images import load_image

        return load_image(self._path(index))


def _refine_in_passes(
    video, info, shape, styles, work, options, device, temporal_weight, frame_steps, passes, on_frame
) -> bool:
    """Passes 2 … `passes` over the finished frames of `work` (nst_ext.jobs.passes), the input
    frames kept there too (:class:`_InputFrames`). The passes finished are recorded in the work
    folder (PASSES_NAME), so a stopped run continues with the pass it stopped in (from its start:
    the frames that pass had redone are redone once more). Returns True when Ctrl-C stopped it."""
    from nst_ext.io.images import load_image
    from nst_ext.io.outputs import atomic_write

    record = work / PASSES_NAME
    try:
        done = int(json.loads(record.read_text())["done"]) if record.exists() else 1
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        done = 1  # unreadable: the passes start over from the single pass's frames (none is lost)
    if done >= passes:
        return False

    def on_pass(finished: int) -> None:
        with atomic_write(record, True) as temporary:
            Path(temporary).write_text(json.dumps({"done": finished}))

    done_in_pass: dict = {}

    def on_frame_of_pass(in_pass: int, index: int) -> None:
        done_in_pass[in_pass] = done_in_pass.get(in_pass, 0) + 1
        if on_frame is not None:
            on_frame(done_in_pass[in_pass], info.frames - 1)

    _, following = _frame_stylizers(options, shape, frame_steps, device)
    style_images = [load_image(style, f"style image {style}", options.max_input_pixels) for style in styles]
    return refine_in_passes(
        following,
        style_images,
        _InputFrames(video, shape, work, info.frames),
        _WorkFrames(work, info.frames),
        passes,
        temporal_weight,
        callback=on_frame_of_pass,
        done=done,
        on_pass=on_pass,
    )


def _stylize_frames(
    video, info, shape, styles, work, options, chain_settings, frame_steps, on_frame, on_progress, distributed
) -> VideoSummary:
    """The frames of this process's chunk that the work folder lacks, each written there."""
    from nst_ext.io.images import load_image, save_image
    from nst_ext.io.video import read_frames

    chunk = -(-info.frames // distributed.world_size)
    first, last = distributed.rank * chunk, min(info.frames, (distributed.rank + 1) * chunk)
    missing = [index for index in range(first, last) if not _frame_path(work, index).exists()]
    summary = VideoSummary(frames=info.frames, kept=sum(1 for i in range(info.frames) if _frame_path(work, i).exists()))
    distributed.barrier()  # every rank has looked before any writes
    if not missing:
        return summary

    def finish(chain, index):
        path = _frame_path(work, index)
        if index >= first and path.exists():  # kept from a stopped run
            chain.add_output(index, load_image(path))
            return
        result = chain.stylize(index, callback=on_progress)
        if result.interrupted:
            raise KeyboardInterrupt
        if index >= first:
            save_image(result.tensor, path, overwrite=True)
            summary.stylized += 1
            if on_frame is not None:
                on_frame(index - first + 1, last - first)

    try:
        opening, following = _frame_stylizers(options, shape, frame_steps, distributed.device(options.device))
        style_images = [load_image(style, f"style image {style}", options.max_input_pixels) for style in styles]
        with FrameChain(opening, following, style_images, **chain_settings) as chain:
            start = missing[0]
            # A stopped run continues from the frames it wrote; a chunk starts CHUNK_OVERLAP frames early.
            begin = max(first, start - chain.reach) if start > first else max(0, first - CHUNK_OVERLAP)
            waiting = None  # the frame to stylize once the next one is read (its flow then runs meanwhile)
            for index, frame in enumerate(read_frames(video, shape, start=begin), start=begin):
                if index >= last:
                    break
                chain.add_input(index, frame)
                if waiting is not None:
                    finish(chain, waiting)
                waiting = index
            if waiting is not None:
                finish(chain, waiting)
    except KeyboardInterrupt:
        summary.interrupted = True
    return summary
