"""Reading and writing video through PyAV (FFmpeg's bindings, as torchvision's video I/O uses).

Frames inside nst_ext are float32 tensors ``(3, H, W)``, RGB, in [0, 1], like images, upright: a
clip with a display rotation (a phone's portrait clip) is read turned as a player shows it. Written
videos keep the input's frame count and frame rate; ``.mp4`` is H.264 and ``.webm`` VP9 (both
4:2:0, so their sides are made even), ``.gif`` a palette GIF. The audio of the input is carried
over: copied as it is where the container takes its codec, else re-encoded (AAC in MP4, Opus in
WebM, at the input's sample rate where the encoder takes it, else resampled; a GIF has none). A video is written to a temporary file beside its name and renamed, and
Ctrl-C or SIGTERM wait until it is in place. Every problem with an input is one VideoError line.
"""

import itertools
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Iterable, Iterator, Optional, Tuple, cast

import numpy as np
import torch

from nst_ext.errors import InputError, OutputError
from nst_ext.io.outputs import atomic_write, check_regular_file, deferred_signals

if TYPE_CHECKING:
    import av.container

# suffix: (container format, video codec, pixel format, audio codec when re-encoded)
VIDEO_FORMATS = {
    ".mp4": ("mp4", "libx264", "yuv420p", "aac"),
    ".webm": ("webm", "libvpx-vp9", "yuv420p", "libopus"),
    ".gif": ("gif", "gif", "rgb8", None),
}


class VideoError(InputError):
    """A video that cannot be read or written."""


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    fps: Fraction
    width: int
    height: int
    has_audio: bool


def _av() -> ModuleType:
    try:
        import av
    except ImportError:
        raise VideoError("video needs PyAV, a dependency of nst_ext: pip install av") from None
    return av


def _open(path: Path) -> "av.container.InputContainer":
    av = _av()

    check_regular_file(path, "video", VideoError)
    try:
        return av.open(str(path))
    except av.FFmpegError as error:
        raise VideoError(f"{str(path)!r} is not a video FFmpeg can read ({error.strerror or error})") from None


def _quarter_turns(frame) -> int:
    """How many quarter turns counterclockwise show `frame` upright (its display rotation, which
    FFmpeg gives in degrees counterclockwise; other than quarter turns are rounded)."""
    return round((getattr(frame, "rotation", 0) or 0) / 90) % 4


def probe(path: os.PathLike) -> VideoInfo:
    """Frame count (by decoding: containers' own counts can be missing or wrong), frame rate, size
    and whether there is audio. Raises VideoError for a file with no decodable video stream."""
    import av

    path = Path(path)
    with _open(path) as container:
        if not container.streams.video:
            raise VideoError(f"{str(path)!r} has no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        frames, turns = 0, 0
        try:
            for frame in container.decode(stream):
                turns = _quarter_turns(frame) if frames == 0 else turns
                frames += 1
        except av.FFmpegError as error:
            raise VideoError(f"cannot decode the video of {str(path)!r} ({error.strerror or error})") from None
        if frames == 0 or not rate:
            raise VideoError(f"{str(path)!r} has no decodable video frames")
        width, height = stream.codec_context.width, stream.codec_context.height
        if turns % 2:  # shown on its side: the upright frame's sides are swapped
            width, height = height, width
        return VideoInfo(frames, Fraction(rate), width, height, bool(container.streams.audio))


def read_frames(path: os.PathLike, shape: Optional[Tuple[int, int]] = None, start: int = 0) -> Iterator[torch.Tensor]:
    """The frames from index `start`, each ``(3, H, W)`` float32 in [0, 1], resized to `shape`
    ((height, width)) when given."""
    import av

    from nst_ext.io.images import resize

    path = Path(path)
    with _open(path) as container:
        try:
            for index, frame in enumerate(container.decode(video=0)):
                if index < start:
                    continue
                array = np.rot90(frame.to_ndarray(format="rgb24"), _quarter_turns(frame))
                tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float().div_(255.0)
                yield resize(tensor, shape) if shape and tuple(tensor.shape[-2:]) != tuple(shape) else tensor
        except av.FFmpegError as error:
            raise VideoError(f"cannot decode the video of {str(path)!r} ({error.strerror or error})") from None


def even_shape(shape: Tuple[int, int], suffix: str) -> Tuple[int, int]:
    """4:2:0 video needs even sides: each odd one loses a pixel (GIFs keep theirs)."""
    if VIDEO_FORMATS[suffix][2] != "yuv420p":
        return shape
    height, width = shape
    return max(2, height - height % 2), max(2, width - width % 2)


def check_video_output(path: Path, overwrite: bool, inputs: Iterable[os.PathLike] = ()) -> None:
    """Refuses, before any work, an output that cannot or must not be written (OutputError): an
    unknown extension, a folder, an existing file without `overwrite`, one of the run's `inputs`
    (the video, the styles, an init image, a weights file), even with `overwrite`."""
    from nst_ext.io.outputs import check_folder_writable, same_file

    for source in inputs:
        if same_file(path, Path(source)):
            raise OutputError(
                f"{str(path)!r} is one of this run's inputs; it is never replaced, even with "
                "`overwrite`: choose another output name"
            )
    if path.suffix.lower() not in VIDEO_FORMATS:
        raise OutputError(f"cannot write {str(path)!r}: unknown video extension; use one of {', '.join(VIDEO_FORMATS)}")
    if path.is_dir():
        raise OutputError(f"cannot write {str(path)!r}: it is a folder; give a file name inside it")
    if path.exists() and not overwrite:
        raise OutputError(f"{str(path)!r} already exists; choose another name or pass `overwrite=True`")
    check_folder_writable(path.parent, str(path))


def write_video(
    frames: Iterable[torch.Tensor],
    path: os.PathLike,
    fps: Fraction,
    audio_from: Optional[os.PathLike] = None,
    overwrite: bool = False,
    comment: Optional[str] = None,
) -> Path:
    """Encodes `frames` (``(3, H, W)`` in [0, 1], all one size) at `fps` into `path` by its suffix,
    with the audio of `audio_from` when it has some; atomically (module docstring). `comment`: text
    kept in the container's metadata (``comment``; nst_ext.io.provenance's record)."""
    import av
    from av.video.stream import VideoStream

    path = Path(path)
    check_video_output(path, overwrite)
    container_format, codec, pixel_format, audio_codec = VIDEO_FORMATS[path.suffix.lower()]
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise VideoError("no frames to write")
    with deferred_signals(), atomic_write(path, overwrite) as temporary:
        with av.open(temporary, mode="w", format=container_format) as output:
            if comment is not None:
                output.metadata["comment"] = comment
            # Every stream exists before the first packet is written (the header).
            stream = cast(VideoStream, output.add_stream(codec, rate=fps))  # a video codec's: VIDEO_FORMATS
            stream.height, stream.width = first.shape[-2:]
            stream.pix_fmt = pixel_format
            if codec == "libx264":
                stream.options = {"crf": "17"}
            elif codec == "libvpx-vp9":
                stream.options = {"crf": "24", "b": "0"}
            audio = None
            if audio_from is not None and audio_codec is not None:
                audio = _AudioCarrier(Path(audio_from), output, audio_codec)
            for frame in itertools.chain([first], frames):
                array = (frame.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
                for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                    output.mux(packet)
            for packet in stream.encode():
                output.mux(packet)
            if audio is not None:
                audio.carry()
    return path


def encoder_rate(codec: str, rate: Optional[int]) -> int:
    """The sample rate to encode audio of `rate` Hz with `codec`: the same where the encoder takes it,
    else the lowest it takes above it (Opus has 48 kHz for 44.1 kHz), else its highest."""
    import av

    rates = sorted(av.codec.Codec(codec, "w").audio_rates or ())
    rate = rate or 48000
    if not rates or rate in rates:
        return rate
    return next((option for option in rates if option > rate), rates[-1])


class _AudioCarrier:
    """The first audio stream of `source` into `output`: its packets copied when the container
    takes the codec, else decoded and re-encoded with `audio_codec`. The stream is added when
    made (before any packet is written); ``carry()`` writes the audio."""

    COPIED = {"mp4": ("aac", "mp3", "alac", "opus"), "webm": ("opus", "vorbis")}

    def __init__(self, source: Path, output, audio_codec: str):
        import av

        self.input = av.open(str(source))
        self.output, self.stream, self.source = output, None, None
        if not self.input.streams.audio:
            return
        self.source = self.input.streams.audio[0]
        self.copy = self.source.codec_context.name in self.COPIED.get(output.format.name.split(",")[0], ())
        if self.copy:
            self.stream = output.add_stream_from_template(self.source)
        else:  # the encoder resamples each frame to the stream's rate
            self.stream = output.add_stream(
                audio_codec, rate=encoder_rate(audio_codec, self.source.codec_context.sample_rate)
            )

    def carry(self) -> None:
        try:
            if self.stream is None:
                return
            if self.copy:
                for packet in self.input.demux(self.source):
                    if packet.dts is None:
                        continue
                    packet.stream = self.stream
                    self.output.mux(packet)
                return
            for frame in self.input.decode(self.source):
                frame.pts = None
                for packet in self.stream.encode(frame):
                    self.output.mux(packet)
            for packet in self.stream.encode():
                self.output.mux(packet)
        finally:
            self.input.close()
