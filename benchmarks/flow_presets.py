"""OpenCV's DIS optical-flow presets against the true motion of the video benchmark's clips
(benchmarks/clips.py): end-point error (pixels, median over frame pairs of the mean over visible
pixels) and milliseconds per flow (median), at two sizes, one OpenCV thread and all of them. The
video job's DIS_PRESET (nst_ext/jobs/flow.py) is chosen from this table.

    python benchmarks/flow_presets.py [--frames 6] [--sizes 160,512]
"""

import argparse
import statistics
import time

import numpy as np

from nst_ext.jobs import flow

from clips import motion_clips

PRESETS = ("ultrafast", "fast", "medium")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--sizes", default="160,512", help="long sides (4:3 clips)")
    args = parser.parse_args()
    import cv2

    threads = cv2.getNumThreads()
    print("| size | clip | " + " | ".join(f"{p} EPE px" for p in PRESETS) + " |")
    print("|---|---|" + "---:|" * len(PRESETS))
    timings = {}
    for size in map(int, args.sizes.split(",")):
        clips = motion_clips(args.frames, (size * 3 // 4, size))
        for clip in clips:
            errors = []
            for preset in PRESETS:
                flow.DIS_PRESET = preset
                pair_errors = []
                for t in range(1, len(clip.frames)):
                    estimated = flow.flow_between(clip.frames[t], clip.frames[t - 1]).numpy()
                    true, visible = clip.true_flow(t, t - 1)
                    pair_errors.append(float(np.sqrt(((estimated - true) ** 2).sum(0))[visible].mean()))
                errors.append(statistics.median(pair_errors))
            print(f"| {size} | {clip.name} | " + " | ".join(f"{e:.3f}" for e in errors) + " |")
        pan = clips[1]
        for preset in PRESETS:
            flow.DIS_PRESET = preset
            for count in (1, threads):
                cv2.setNumThreads(count)
                seconds = []
                for _ in range(5):
                    started = time.perf_counter()
                    flow.flow_between(pan.frames[1], pan.frames[0])
                    seconds.append(time.perf_counter() - started)
                timings[(size, preset, count)] = 1000 * statistics.median(seconds)
    print("\n| size | preset | ms per flow, 1 thread | ms per flow, " + f"{threads} threads |")
    print("|---|---|---:|---:|")
    for size in map(int, args.sizes.split(",")):
        for preset in PRESETS:
            print(f"| {size} | {preset} | {timings[(size, preset, 1)]:.1f} | {timings[(size, preset, threads)]:.1f} |")


if __name__ == "__main__":
    main()
