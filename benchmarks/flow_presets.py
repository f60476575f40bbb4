"""Optical flow against the true motion of the video benchmark's clips (benchmarks/clips.py):
OpenCV's DIS presets alone, and the video job's flow (nst_ext.jobs.flow.flow_between: DIS's
DIS_PRESET with the camera's motion fitted and aligned in, where DIS agrees with it). End-point
error (pixels, median over frame pairs of the mean over visible pixels) and milliseconds per flow
(median of 5, on the pan and on the zoom), at two sizes, one OpenCV thread and all of them. The
video job's DIS_PRESET is chosen from this table.

    python benchmarks/flow_presets.py [--frames 6] [--sizes 160,512]
"""

import argparse
import statistics
import time

import numpy as np

from nst_ext.jobs import flow

from clips import motion_clips

PRESETS = ("ultrafast", "fast", "medium")
JOB = f"{flow.DIS_PRESET} + camera (the job's)"


def dis_alone(preset):
    import cv2

    def estimate(frame, other):
        dis = cv2.DISOpticalFlow_create(getattr(cv2, f"DISOPTICAL_FLOW_PRESET_{preset.upper()}"))
        return dis.calc(flow._gray8(frame.numpy()), flow._gray8(other.numpy()), None).transpose(2, 0, 1)

    return estimate


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--sizes", default="160,512", help="long sides (4:3 clips)")
    args = parser.parse_args()
    import cv2

    methods = {preset: dis_alone(preset) for preset in PRESETS}
    methods[JOB] = lambda frame, other: flow.flow_between(frame, other).numpy()
    threads = cv2.getNumThreads()
    print("| size | clip | " + " | ".join(f"{name} EPE px" for name in methods) + " |")
    print("|---|---|" + "---:|" * len(methods))
    timings = {}
    for size in map(int, args.sizes.split(",")):
        clips = motion_clips(args.frames, (size * 3 // 4, size))
        for clip in clips:
            errors = []
            for estimate in methods.values():
                pair_errors = []
                for t in range(1, len(clip.frames)):
                    estimated = estimate(clip.frames[t], clip.frames[t - 1])
                    true, visible = clip.true_flow(t, t - 1)
                    pair_errors.append(float(np.sqrt(((estimated - true) ** 2).sum(0))[visible].mean()))
                errors.append(statistics.median(pair_errors))
            print(f"| {size} | {clip.name} | " + " | ".join(f"{e:.3f}" for e in errors) + " |", flush=True)
        timed = {clip.name: clip for clip in clips if clip.name in ("pan", "zoom")}
        for name, estimate in methods.items():
            for count in (1, threads):
                cv2.setNumThreads(count)
                for clip_name, clip in timed.items():
                    seconds = []
                    for _ in range(5):
                        started = time.perf_counter()
                        estimate(clip.frames[1], clip.frames[0])
                        seconds.append(time.perf_counter() - started)
                    timings[(size, name, count, clip_name)] = 1000 * statistics.median(seconds)
    print(f"\n| size | method | ms per flow, 1 thread: pan, zoom | {threads} threads: pan, zoom |")
    print("|---|---|---:|---:|")
    for size in map(int, args.sizes.split(",")):
        for name in methods:
            cells = [
                ", ".join(f"{timings[(size, name, count, c)]:.1f}" for c in ("pan", "zoom")) for count in (1, threads)
            ]
            print(f"| {size} | {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
