"""Peak memory and time of a full default stylization at 512 and 1024 pixels.

CPU: the peak resident set size of a fresh `nst-ext stylize` process, and its
wall time. GPU (when present): torch.cuda.max_memory_allocated of an in-process
run, the optimisation's seconds (StylizeResult.seconds) and the call's wall
time; the first GPU run of a process also pays for CUDA's start-up, cuDNN's and
nst_ext's per-shape algorithm choices and graph capture, so each size is run
twice and both are reported.

    python benchmarks/memory.py [--sizes 512,1024] [--steps N] [--device cpu|cuda|all] [--json F]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch

import nst_ext

DATA = os.path.join(os.path.dirname(nst_ext.__file__), "data")


def cpu_peak(size, steps):
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "nst_ext", "stylize", os.path.join(DATA, "astronaut.jpg"),
                   os.path.join(DATA, "swirls.jpg"), "-o", os.path.join(folder, "out.png"), "--size", str(size),
                   "--device", "cpu", "--quiet"] + (["--steps", str(steps)] if steps else [])
        started = time.perf_counter()
        subprocess.run(command, check=True)
        seconds = time.perf_counter() - started
    # ru_maxrss of the largest child so far, in KiB on Linux; sizes run in increasing order.
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, seconds


def gpu_peak(size, steps):
    """(peak MiB allocated, optimisation seconds, wall seconds of the whole call)."""
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = nst_ext.Stylizer(size=size, device="cuda", **({"steps": steps} if steps else {})).run(
        os.path.join(DATA, "astronaut.jpg"), os.path.join(DATA, "swirls.jpg"))
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20, result.seconds, time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="512,1024")
    parser.add_argument("--steps", type=int, default=None, help="steps per stage (default: the stylizer's)")
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all",
                        help="all: the CPU, and the GPU when one is visible")
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible")
    rows = []
    print("| size | device | steps per stage | peak memory (MiB) | optimisation (s) | wall time (s) |")
    print("|---:|---|---|---:|---:|---:|")
    for size in sorted(int(s) for s in args.sizes.split(",")):
        stages = nst_ext.StyleOptions(size=size, steps=args.steps).stage_steps()
        if args.device in ("cpu", "all"):
            peak, seconds = cpu_peak(size, args.steps)
            rows.append(dict(size=size, device="cpu", steps=stages, peak_mib=peak, wall_seconds=seconds))
            print(f"| {size} | cpu (RSS) | {stages} | {peak:.0f} | | {seconds:.0f} |", flush=True)
        if args.device in ("cuda", "all") and torch.cuda.is_available():
            for run in ("first", "second"):
                peak, optimisation, wall = gpu_peak(size, args.steps)
                rows.append(dict(size=size, device=torch.cuda.get_device_name(), run=run, steps=stages,
                                 peak_mib=peak, optimisation_seconds=optimisation, wall_seconds=wall))
                print(f"| {size} | {torch.cuda.get_device_name()} (allocated, {run} run) | {stages} | {peak:.0f} | "
                      f"{optimisation:.2f} | {wall:.2f} |", flush=True)
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"torch": torch.__version__, "rows": rows}, out, indent=1)


if __name__ == "__main__":
    main()
