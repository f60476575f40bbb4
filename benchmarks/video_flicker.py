"""Flicker of a stylized video: nst_ext's temporally coherent `nst-ext video` against stylizing every
frame on its own (the default single-picture run per frame), on a synthetic clip (a still photo with a
painting's patch moving across it: most pixels are static), in one run.

Flicker: the mean absolute difference between consecutive output frames over the pixels that did not
change in the input (nst_ext.jobs.flicker), measured on the written videos (both H.264 at the same
settings). Also seconds per frame.

    python benchmarks/video_flicker.py [--frames 24] [--size 128] [--json F]
"""

import argparse
import json
import os
import tempfile
import time

import torch

import nst_ext
from nst_ext.jobs import FRAME_STEPS, TEMPORAL_WEIGHT, flicker, run_video
from nst_ext.stylizer import Stylizer
from nst_ext.video import probe, read_frames, write_video

from clips import synthetic_clip

STYLE = os.path.join(os.path.dirname(nst_ext.__file__), "data", "swirls.jpg")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        clip = synthetic_clip(os.path.join(folder, "clip.mp4"), frames=args.frames,
                              size=(args.size * 3 // 4, args.size), fps=12)
        options = nst_ext.StyleOptions(size=args.size)
        inputs = list(read_frames(clip, (args.size * 3 // 4, args.size)))

        started = time.perf_counter()
        stylizer = Stylizer(options)
        alone = [stylizer.run(frame, STYLE).tensor for frame in inputs]
        independent = os.path.join(folder, "independent.mp4")
        write_video(alone, independent, probe(clip).fps)
        rows.append(dict(method="each frame on its own (the default picture run per frame)",
                         seconds_per_frame=(time.perf_counter() - started) / len(inputs),
                         flicker=flicker(list(read_frames(independent)), inputs)))

        for weight in (0.0, TEMPORAL_WEIGHT):
            started = time.perf_counter()
            ours = os.path.join(folder, f"ours{weight}.mp4")
            run_video(clip, [STYLE], ours, options, temporal_weight=weight)
            rows.append(dict(method=f"nst-ext video, temporal weight {weight:g}, {FRAME_STEPS} steps a frame",
                             seconds_per_frame=(time.perf_counter() - started) / len(inputs),
                             flicker=flicker(list(read_frames(ours)), inputs)))
    print(f"{args.frames} frames at {args.size} px, CPU {torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| method | flicker (mean abs. change of static pixels, 0-1) | seconds per frame |")
    print("|---|---:|---:|")
    for row in rows:
        print(f"| {row['method']} | {row['flicker']:.4f} | {row['seconds_per_frame']:.2f} |")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"frames": args.frames, "size": args.size, "torch": torch.__version__, "rows": rows}, out, indent=1)


if __name__ == "__main__":
    main()
