"""Peak memory of a full default stylization at 512 and 1024 pixels.

CPU: the peak resident set size of a fresh `nst-ext stylize` process. GPU (when
present): torch.cuda.max_memory_allocated of an in-process run.

    python benchmarks/memory.py [--sizes 512,1024] [--steps N]
"""

import argparse
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
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    nst_ext.Stylizer(size=size, device="cuda", **({"steps": steps} if steps else {})).run(
        os.path.join(DATA, "astronaut.jpg"), os.path.join(DATA, "swirls.jpg"))
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20, time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="512,1024")
    parser.add_argument("--steps", type=int, default=None, help="steps per stage (default: the stylizer's)")
    args = parser.parse_args()
    print("| size | device | steps per stage | peak memory (MiB) | wall time (s) |")
    print("|---:|---|---|---:|---:|")
    for size in sorted(int(s) for s in args.sizes.split(",")):
        stages = nst_ext.StyleOptions(size=size, steps=args.steps).stage_steps()
        peak, seconds = cpu_peak(size, args.steps)
        print(f"| {size} | cpu (RSS) | {stages} | {peak:.0f} | {seconds:.0f} |", flush=True)
        if torch.cuda.is_available():
            peak, seconds = gpu_peak(size, args.steps)
            print(f"| {size} | cuda (allocated) | {stages} | {peak:.0f} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
