"""What a video frame costs and where the time goes: `nst_ext.run_video` end to end on a panning
clip (lossless .mov, so decoding is real and exact), each later frame's wall time split into decoding,
waiting for its optical flows (made on worker threads while the frame before it is optimised),
warps and consistency checks, optimisation, and writing the finished frame; the opening frame (the
full coarse-to-fine run) and the final encode apart. The baseline in the same process: the same
frames stylized one by one with the same steps (one stage at the output size, from the frame).

    python benchmarks/video_throughput.py [--sizes 256,512] [--frames 5] [--frame-steps 30]
        [--repeats 1] [--json F]

Medians over the later frames. The instrumentation wraps library functions in this process only.
"""

import argparse
import dataclasses
import json
import platform
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import torch

import nst_ext
import nst_ext.io.images as images_module
import nst_ext.io.video as video_module
import nst_ext.jobs.flow as flow_module
from nst_ext.jobs import FRAME_STEPS, run_video
from nst_ext.jobs.coherence import FrameChain
from nst_ext.stylizer import Stylizer

from _common import STYLE
from clips import motion_clip, write_clip


class Timers:
    """Seconds spent in each wrapped function: per call on the main thread, summed on workers."""

    def __init__(self):
        self.calls = defaultdict(list)
        self.worker = defaultdict(float)
        self.lock = threading.Lock()

    def wrap(self, owner, name, label):
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spent = time.perf_counter() - started
                if threading.current_thread() is threading.main_thread():
                    self.calls[label].append(spent)
                else:
                    with self.lock:
                        self.worker[label] += spent

        setattr(owner, name, timed)
        return original

    def wrap_generator(self, owner, name, label):
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            iterator = original(*args, **kwargs)
            while True:
                started = time.perf_counter()
                try:
                    item = next(iterator)
                except StopIteration:
                    return
                finally:
                    self.calls[label].append(time.perf_counter() - started)
                yield item

        setattr(owner, name, timed)
        return original


def instrumented_run(clip_path: Path, size: int, frame_steps: int, work: Path):
    """run_video on the clip with every phase timed; the timers and the total seconds."""
    timers = Timers()
    originals = [
        (video_module, "read_frames", timers.wrap_generator(video_module, "read_frames", "decode")),
        (video_module, "write_video", timers.wrap(video_module, "write_video", "encode")),
        (flow_module, "flow_between", timers.wrap(flow_module, "flow_between", "flow")),
        (FrameChain, "warped_past", timers.wrap(FrameChain, "warped_past", "warps")),
        (FrameChain, "stylize", timers.wrap(FrameChain, "stylize", "frame")),
        (Stylizer, "run", timers.wrap(Stylizer, "run", "optimise")),
        (images_module, "save_image", timers.wrap(images_module, "save_image", "write frame")),
    ]
    try:
        started = time.perf_counter()
        run_video(clip_path, [STYLE], work / "out.mp4", nst_ext.StyleOptions(size=size), frame_steps=frame_steps)
        total = time.perf_counter() - started
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)
    return timers, total


def one_by_one(clip, size: int, frame_steps: int):
    """Seconds per frame stylizing the later frames one by one with the video's steps."""
    options = dataclasses.replace(nst_ext.StyleOptions(size=size), scales=[size], steps=frame_steps)
    stylizer = Stylizer(options)
    style = nst_ext.load_image(STYLE)
    stylizer.run(clip.frames[0], [style], init=clip.frames[0])  # warm: the shapes' algorithm choices made
    seconds = []
    for frame in clip.frames[1:]:
        started = time.perf_counter()
        stylizer.run(frame, [style], init=frame)
        seconds.append(time.perf_counter() - started)
    return seconds


def measure(size: int, frames: int, frame_steps: int) -> dict:
    clip = motion_clip("pan", "chelsea", frames, (size * 3 // 4, size), pan=(2.0, 0.0))
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        clip_path = write_clip(clip, work / "clip.mov")
        timers, total = instrumented_run(clip_path, size, frame_steps, work)
    calls = timers.calls
    # Frame 0 is the opening run (no warps); the later frames' phases line up with their frame calls.
    later = {"frame": calls["frame"][1:], "optimise": calls["optimise"][1:], "warps": calls["warps"]}
    waits = [f - o - w for f, o, w in zip(later["frame"], later["optimise"], later["warps"])]
    decode = calls["decode"][1:] or [0.0]
    written = calls["write frame"][1:] or [0.0]
    row = {
        "size": size,
        "frames": frames,
        "frame_steps": frame_steps,
        "total_s": total,
        "opening_frame_s": calls["frame"][0],
        "encode_s": sum(calls["encode"]),
        "later_frame_s": statistics.median(f + d + s for f, d, s in zip(later["frame"], decode, written)),
        "decode_s": statistics.median(decode),
        "flow_wait_s": statistics.median(waits),
        "flow_worker_s_per_frame": timers.worker["flow"] / max(1, frames - 1),
        "warps_s": statistics.median(later["warps"]),
        "optimise_s": statistics.median(later["optimise"]),
        "write_frame_s": statistics.median(written),
    }
    alone = one_by_one(clip, size, frame_steps)
    row["one_by_one_s"] = statistics.median(alone)
    row["ratio"] = row["later_frame_s"] / row["one_by_one_s"]
    return row


def main():
    nst_ext.allow_process_effects()  # measured as the nst-ext command runs (nst_ext.plan.effects)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="256,512")
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--frame-steps", type=int, default=FRAME_STEPS)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = []
    print(
        "| size | later frame | decode | flow wait | flow (workers) | warps | optimise | write | one by one | ratio |"
        " opening frame | encode |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        flush=True,
    )
    for size in map(int, args.sizes.split(",")):
        row = measure(size, args.frames, args.frame_steps)
        rows.append(row)
        print(
            f"| {size} | {row['later_frame_s']:.2f} | {row['decode_s']:.3f} | {row['flow_wait_s']:.3f} | "
            f"{row['flow_worker_s_per_frame']:.3f} | {row['warps_s']:.3f} | {row['optimise_s']:.2f} | "
            f"{row['write_frame_s']:.3f} | {row['one_by_one_s']:.2f} | {row['ratio']:.2f} | "
            f"{row['opening_frame_s']:.1f} | {row['encode_s']:.2f} |",
            flush=True,
        )
    if args.json:
        machine = dict(cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads())
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(dict(vars(args), machine=machine, rows=rows), out, indent=1)


if __name__ == "__main__":
    main()
