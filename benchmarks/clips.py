"""A short synthetic clip for the tests and the video benchmark: the sample photo as a still
background with a patch of the sample painting moving across it (no camera motion: a case the
video job was built on, not a yardstick apart from it)."""

import os
from pathlib import Path
from typing import Tuple

import numpy as np
import torch

import nst_ext
from nst_ext.video import VIDEO_FORMATS


def synthetic_clip(path: os.PathLike, frames: int = 24, size: Tuple[int, int] = (96, 128), fps: int = 12,
                   audio: bool = True) -> Path:
    """A short clip for tests, benchmarks and trying things out: the sample photo as a still
    background with a patch of the sample painting moving across it, and (for .mp4 and .webm) a
    quiet tone. `size` is (height, width)."""
    import av

    from nst_ext.images import load_image, resize

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
        sound = None
        if audio and audio_codec is not None:
            sound = output.add_stream(audio_codec, rate=48000)
            sound.layout = "mono"
        for index in range(frames):
            frame = background.clone()
            left = round((width - side) * index / max(1, frames - 1))
            top = (height - side) // 2
            frame[:, top:top + side, left:left + side] = patch
            array = (frame * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
        if sound is not None:
            samples = int(48000 * frames / fps)
            tone = (0.1 * np.sin(2 * np.pi * 440 * np.arange(samples) / 48000)).astype(np.float32)
            frame_size = sound.codec_context.frame_size or 1024
            for offset in range(0, samples, frame_size):
                chunk = tone[offset:offset + frame_size]
                audio_frame = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
                audio_frame.sample_rate = 48000
                audio_frame.pts = offset
                for packet in sound.encode(audio_frame):
                    output.mux(packet)
            for packet in sound.encode():
                output.mux(packet)
    return path
