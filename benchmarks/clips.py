"""Clips for the tests and the video benchmark: a short synthetic clip file (the sample photo as a
still background with a patch of the sample painting moving across it: no camera motion, a case
the video job was first built on), and clips with known motion (pans, a zoom, moving objects)
made from the panel's photos, with the warping error that judges a stylized clip by the true
motion."""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

import nst_ext
from nst_ext.io.video import VIDEO_FORMATS


def synthetic_clip(
    path: os.PathLike,
    frames: int = 24,
    size: Tuple[int, int] = (96, 128),
    fps: int = 12,
    audio: bool = True,
    audio_rate: int = 48000,
    display_rotation: int = 0,
) -> Path:
    """A short clip for tests, benchmarks and trying things out: the sample photo as a still
    background with a patch of the sample painting moving across it, and (for .mp4 and .webm) a
    quiet tone sampled at `audio_rate` Hz. `size` is (height, width) as stored; `display_rotation`
    (degrees counterclockwise, as FFmpeg's display matrix) tells players to turn it, as a phone's
    portrait clip does."""
    import av

    from nst_ext.io.images import load_image, resize

    data = Path(nst_ext.__file__).parent / "data"
    height, width = size
    background = resize(load_image(data / "astronaut.jpg"), (height, width))
    side = max(8, height // 3)
    patch = resize(load_image(data / "swirls.jpg"), (side, side))
    path = Path(path)
    container_format, codec, pixel_format, audio_codec = VIDEO_FORMATS[path.suffix.lower()]
    with av.open(str(path), mode="w", format=container_format) as output:
        stream = output.add_stream(codec, rate=fps)
        stream.height, stream.width, stream.pix_fmt = height, width, pixel_format
        if display_rotation:
            stream.set_display_rotation(display_rotation)
        sound = None
        if audio and audio_codec is not None:
            sound = output.add_stream(audio_codec, rate=audio_rate)
            sound.layout = "mono"
        for index in range(frames):
            frame = background.clone()
            left = round((width - side) * index / max(1, frames - 1))
            top = (height - side) // 2
            frame[:, top : top + side, left : left + side] = patch
            array = (frame * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
        if sound is not None:
            samples = int(audio_rate * frames / fps)
            tone = (0.1 * np.sin(2 * np.pi * 440 * np.arange(samples) / audio_rate)).astype(np.float32)
            frame_size = sound.codec_context.frame_size or 1024
            for offset in range(0, samples, frame_size):
                chunk = tone[offset : offset + frame_size]
                audio_frame = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
                audio_frame.sample_rate = audio_rate
                audio_frame.pts = offset
                for packet in sound.encode(audio_frame):
                    output.mux(packet)
            for packet in sound.encode():
                output.mux(packet)
    return path


# -- clips with known motion: the yardstick of the video benchmark and tests -----------------------
# Each is rendered from a scene model (a background moved by the camera, optionally an object moving
# on the screen), so the true correspondence between any two frames is known exactly. Nothing here
# uses nst_ext's own flow or warp: the judge is built apart from what it judges.

PANEL = Path(__file__).resolve().parent / "panel"
SUPERSAMPLE = 4  # each pixel is the mean of 4×4 samples of the background: no aliasing as it moves


@dataclass(frozen=True)
class MotionClip:
    """A clip of `frames` ``(3, H, W)`` float32 in [0, 1] with known motion. ``pan`` is the camera's
    pan (pixels a frame, x then y; the background slides the other way), ``zoom`` its zoom factor a
    frame about the centre, ``object_step`` the on-screen motion of the object (pixels a frame) whose
    top-left corner is at ``object_start`` in frame 0 (no object when ``object_side`` is 0)."""

    name: str
    frames: List[torch.Tensor]
    size: Tuple[int, int]  # (height, width)
    pan: Tuple[float, float] = (0.0, 0.0)
    zoom: float = 1.0
    object_side: int = 0
    object_start: Tuple[int, int] = (0, 0)
    object_step: Tuple[int, int] = (0, 0)

    def to_background(self, t: int, x: np.ndarray, y: np.ndarray):
        """Background coordinates (in frame-0 screen pixels) seen at screen (x, y) in frame t."""
        height, width = self.size
        cx, cy = (width - 1) / 2, (height - 1) / 2
        scale = self.zoom**t
        return cx + (x - cx) / scale + self.pan[0] * t, cy + (y - cy) / scale + self.pan[1] * t

    def from_background(self, t: int, bx: np.ndarray, by: np.ndarray):
        """Screen coordinates in frame t of background coordinates (bx, by)."""
        height, width = self.size
        cx, cy = (width - 1) / 2, (height - 1) / 2
        scale = self.zoom**t
        return cx + (bx - self.pan[0] * t - cx) * scale, cy + (by - self.pan[1] * t - cy) * scale

    def object_at(self, t: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Whether screen (x, y) shows the object in frame t."""
        if not self.object_side:
            return np.zeros(np.shape(x), dtype=bool)
        left, top = (self.object_start[0] + self.object_step[0] * t, self.object_start[1] + self.object_step[1] * t)
        return (x >= left) & (x < left + self.object_side) & (y >= top) & (y < top + self.object_side)

    def true_flow(self, t: int, earlier: int) -> Tuple[np.ndarray, np.ndarray]:
        """For each pixel p of frame t: where it was in frame `earlier` (``(2, H, W)`` float64 flow,
        frame_t(p) = frame_earlier(p + flow(p))), and whether it was visible there ``(H, W)`` bool
        (inside the frame and not behind the object)."""
        height, width = self.size
        y, x = np.mgrid[0:height, 0:width].astype(np.float64)
        on_object = self.object_at(t, x, y)
        bx, by = self.to_background(t, x, y)
        qx, qy = self.from_background(earlier, bx, by)
        step = np.array(self.object_step, dtype=np.float64) * (earlier - t)
        qx, qy = np.where(on_object, x + step[0], qx), np.where(on_object, y + step[1], qy)
        visible = (qx >= 0) & (qx <= width - 1) & (qy >= 0) & (qy <= height - 1)
        hidden = self.object_at(earlier, np.round(qx), np.round(qy)) & ~on_object
        return np.stack([qx - x, qy - y]), visible & ~hidden


def _background(name: str, height: int, width: int, margin: int) -> np.ndarray:
    """The photo `name` of the panel, resized to cover the screen and `margin` pixels around it, at
    SUPERSAMPLE× resolution: float32 (H', W', 3)."""
    from nst_ext.io.images import load_image, resize

    shape = ((height + 2 * margin) * SUPERSAMPLE, (width + 2 * margin) * SUPERSAMPLE)
    return resize(load_image(PANEL / f"{name}.jpg"), shape).permute(1, 2, 0).contiguous().numpy()


def motion_clip(
    name: str,
    photo: str,
    frames: int = 12,
    size: Tuple[int, int] = (120, 160),
    pan: Tuple[float, float] = (0.0, 0.0),
    zoom: float = 1.0,
    object_photo: Optional[str] = None,
    object_step: Tuple[int, int] = (0, 0),
    noise: float = 0.0,
    object_scale: float = 1 / 3,
) -> MotionClip:
    """A clip of the panel photo `photo` seen by a camera panning `pan` pixels a frame and zooming by
    `zoom` a frame, with optionally a square of the panel photo `object_photo` (`object_scale` of the
    height) crossing the screen at `object_step` pixels a frame, vertically centred, and a camera's
    sensor `noise` (Gaussian, this standard deviation, new in every frame; seeded)."""
    import cv2

    from nst_ext.io.images import load_image, resize

    height, width = size
    margin = int(max(abs(pan[0]), abs(pan[1])) * frames) + 2
    background = _background(photo, height, width, margin)
    side = int(height * object_scale) if object_photo else 0
    start = ((width - side - object_step[0] * (frames - 1)) // 2, (height - side) // 2)
    clip = MotionClip(name, [], size, pan, zoom, side, start, object_step)
    # Sample k of pixel x lies at x − 0.5 + (k + 0.5) / SUPERSAMPLE.
    fine_y, fine_x = (np.mgrid[0 : height * SUPERSAMPLE, 0 : width * SUPERSAMPLE] + 0.5) / SUPERSAMPLE - 0.5
    patch = resize(load_image(PANEL / f"{object_photo}.jpg"), (side, side)) if object_photo else None
    for t in range(frames):
        bx, by = clip.to_background(t, fine_x, fine_y)
        sample_x = ((bx + margin + 0.5) * SUPERSAMPLE - 0.5).astype(np.float32)
        sample_y = ((by + margin + 0.5) * SUPERSAMPLE - 0.5).astype(np.float32)
        fine = cv2.remap(background, sample_x, sample_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        frame = torch.from_numpy(fine).reshape(height, SUPERSAMPLE, width, SUPERSAMPLE, 3).mean((1, 3))
        frame = frame.permute(2, 0, 1).clamp(0, 1).contiguous()
        if patch is not None:  # the part of the object inside the frame (a long clip carries it out)
            left, top = start[0] + object_step[0] * t, start[1] + object_step[1] * t
            x0, y0, x1, y1 = max(left, 0), max(top, 0), min(left + side, width), min(top + side, height)
            if x0 < x1 and y0 < y1:
                frame[:, y0:y1, x0:x1] = patch[:, y0 - top : y1 - top, x0 - left : x1 - left]
        if noise:
            generator = torch.Generator().manual_seed(t)
            frame = (frame + noise * torch.randn(frame.shape, generator=generator)).clamp(0, 1)
        clip.frames.append(frame)
    return clip


def motion_clips(frames: int = 12, size: Tuple[int, int] = (120, 160)) -> List[MotionClip]:
    """The benchmark's clips (panel photos): a still camera with sensor noise, a 2 px/frame pan, a pan
    over a large sky, a 1%/frame zoom, an object crossing a still background, an object crossing a
    panned one, a small object crossing a still shot, parallax (a near object past a slow pan), a
    tracking shot, a flat object crossing a pan, and four more zooms."""
    return [
        motion_clip("still", "chelsea", frames, size, noise=0.01),
        motion_clip("pan", "chelsea", frames, size, pan=(2, 0)),
        motion_clip("sky pan", "rocket", frames, size, pan=(2, 0)),
        motion_clip("zoom", "coffee", frames, size, zoom=1.01),
        motion_clip("object", "hopper", frames, size, object_photo="ihc", object_step=(3, 0)),
        motion_clip("pan and object", "horse", frames, size, pan=(2, 0), object_photo="brick", object_step=(-3, 0)),
        # A small thing moving across a still shot (a tenth of the height), and parallax: the camera
        # translating past a near object, which slides four times as fast as the background.
        motion_clip(
            "small object", "camera", frames, size, object_photo="retina", object_step=(2, 1), object_scale=0.1
        ),
        motion_clip(
            "parallax", "coffee", frames, size, pan=(1, 0), object_photo="brick", object_step=(-4, 0), object_scale=0.7
        ),
        # Unlike the clips the flow was built on (BENCHMARKS.md, "Video"): a tracking shot (a subject
        # still on the screen while the camera pans past the scene behind it) and a flat-coloured
        # object crossing a pan, slowly against it (any motion fits its inside).
        motion_clip("tracking shot", "hopper", frames, size, pan=(1.5, -0.5), object_photo="coffee", object_scale=0.5),
        motion_clip(
            "flat object",
            "coffee",
            frames,
            size,
            pan=(1, 0),
            object_photo="horse",
            object_step=(2, 0),
            object_scale=0.6,
        ),
        # Zooms beside the first: out over a sky, in while panning over a flat graphic (the camera
        # motion's fit was tuned looking at these two), and two not tuned on: in over grass (fine
        # texture) while panning, out over a dark sky of small bright things.
        motion_clip("zoom out", "rocket", frames, size, zoom=0.985),
        motion_clip("zoom and pan", "horse", frames, size, zoom=1.015, pan=(1, 1)),
        motion_clip("grass zoom", "grass", frames, size, zoom=1.02, pan=(-1.5, 0.5)),
        motion_clip("hubble zoom out", "hubble", frames, size, zoom=0.98),
    ]


# How the warping error reads an earlier frame between its pixels. Bilinear is the literature's (and
# flatters a warp that blurs: it is its own kernel); Lanczos-4 is a kernel no method here warps with,
# and near the ideal one for a picture without aliasing.
WARP_KERNELS = ("bilinear", "lanczos")


def true_warp_difference(
    clip: MotionClip, outputs: Sequence[torch.Tensor], t: int, back: int, kernel: str = "bilinear"
):
    """|O_t − W(O_{t−back})| per pixel ``(H, W)`` (mean over channels) with W the true motion
    (OpenCV's remap, `kernel` one of WARP_KERNELS), and the pixels visible in both frames."""
    import cv2

    flow, visible = clip.true_flow(t, t - back)
    height, width = flow.shape[1:]
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    earlier = outputs[t - back].float().permute(1, 2, 0).contiguous().numpy()
    warped = cv2.remap(
        earlier,
        x + flow[0].astype(np.float32),
        y + flow[1].astype(np.float32),
        {"bilinear": cv2.INTER_LINEAR, "lanczos": cv2.INTER_LANCZOS4}[kernel],
        borderMode=cv2.BORDER_REPLICATE,
    )
    return np.abs(outputs[t].float().permute(1, 2, 0).numpy() - warped).mean(2), visible


def warping_error(clip: MotionClip, outputs: Sequence[torch.Tensor], back: int = 1, kernel: str = "bilinear") -> float:
    """The temporal-consistency figure of video style-transfer papers: mean |O_t − W(O_{t−back})|
    over the pixels visible in both frames, averaged over frame pairs, with W the true motion read
    with `kernel` (WARP_KERNELS). Values in [0, 1]; `back` > 1 is the long-term error."""
    values = []
    for t in range(back, len(outputs)):
        difference, visible = true_warp_difference(clip, outputs, t, back, kernel)
        values.append(float(difference[visible].mean()))
    return sum(values) / max(1, len(values))


def object_path_error(clip: MotionClip, outputs: Sequence[torch.Tensor], band: int = 4) -> Tuple[float, float, float]:
    """(warping error inside the object's path, the same away from the object's edges, elsewhere),
    background pixels only. A ghost or trail left behind a moving object shows as the first two far
    above the third; the second leaves out the `band` pixels around the object in both frames of a
    pair, where the style of an edge changes with what is on its other side."""
    import torch.nn.functional as F

    height, width = outputs[0].shape[-2:]
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    path = np.zeros((height, width), dtype=bool)
    for t in range(len(outputs)):
        path |= clip.object_at(t, x, y)
    inside_path, trail, elsewhere = [], [], []
    for t in range(1, len(outputs)):
        difference, visible = true_warp_difference(clip, outputs, t, 1)
        background = visible & ~clip.object_at(t, x, y)
        near = torch.from_numpy(clip.object_at(t, x, y) | clip.object_at(t - 1, x, y)).float()[None, None]
        near = F.max_pool2d(near, 2 * band + 1, stride=1, padding=band)[0, 0].numpy() > 0
        for values, pixels in (
            (inside_path, background & path),
            (trail, background & path & ~near),
            (elsewhere, background & ~path),
        ):
            values.append(float(difference[pixels].mean()) if pixels.any() else float("nan"))
    return tuple(_mean_of_means(values) for values in (inside_path, trail, elsewhere))


def _mean_of_means(values: Sequence[float]) -> float:
    """The mean of the frames' means that exist (a set can be empty: a still object's path is all
    object, there is no background in it); NaN when none does."""
    present = [value for value in values if np.isfinite(value)]
    return sum(present) / len(present) if present else float("nan")


def object_error(clip: MotionClip, outputs: Sequence[torch.Tensor], kernel: str = "bilinear") -> float:
    """The warping error on the object's own pixels (visible in both frames of a pair), averaged over
    frame pairs: whether what the object shows moves with it (a flat object's texture left behind, or
    a still subject resampled every frame, shows here)."""
    height, width = outputs[0].shape[-2:]
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    values = []
    for t in range(1, len(outputs)):
        difference, visible = true_warp_difference(clip, outputs, t, 1, kernel)
        on_object = visible & clip.object_at(t, x, y)
        values.append(float(difference[on_object].mean()) if on_object.any() else float("nan"))
    return _mean_of_means(values)


def write_clip(clip: MotionClip, path: os.PathLike, fps: int = 10) -> Path:
    """`clip`'s frames as a lossless video file (PNG frames in QuickTime: `path` should end in .mov),
    so that what the video job reads is exactly the clip."""
    import av

    path = Path(path)
    height, width = clip.size
    with av.open(str(path), mode="w", format="mov") as output:
        stream = output.add_stream("png", rate=fps)
        stream.height, stream.width, stream.pix_fmt = height, width, "rgb24"
        for frame in clip.frames:
            array = (frame * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return path
