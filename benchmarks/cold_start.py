"""What a command's first picture pays for timing the forward's algorithms, and what the
on-disk cache of those choices (nst_ext.io.algorithm_cache) saves: the same `nst-ext stylize` in
fresh processes, alternately with an empty cache folder (every shape timed) and with the folder
the cold run filled (no shape timed).

    python benchmarks/cold_start.py [--size 256] [--steps 10] [--repeats 3] [--json F]

The figure is the run's own seconds of optimisation (the "wrote ... in S s" line) and the
process's wall time, medians of each."""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from _common import CONTENT, STYLE

import nst_ext


def one_run(cache, size, steps, folder, environment=None):
    """One `nst-ext stylize` in a fresh process with the algorithm cache in `cache` (and the
    variables `environment` too): (its seconds of optimisation, its wall time)."""
    out = os.path.join(folder, f"out-{time.monotonic_ns()}.png")
    started = time.perf_counter()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "nst_ext",
            "stylize",
            CONTENT,
            STYLE,
            "-o",
            out,
            "--size",
            str(size),
            "--steps",
            str(steps),
            "--seed",
            "0",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, NST_EXT_CACHE_DIR=cache, NST_EXT_GRAM_ALGORITHM="auto", **(environment or {})),
    )
    wall = time.perf_counter() - started
    if result.returncode:
        raise SystemExit(result.stderr)
    return float(re.search(r" in ([0-9.]+) s", result.stderr).group(1)), wall


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = {"cold": [], "cached": []}
    with tempfile.TemporaryDirectory() as folder:
        one_run(os.path.join(folder, "warm-up"), args.size, args.steps, folder)  # the OS's file cache, the weights
        for repeat in range(args.repeats):
            cache = os.path.join(folder, f"cache-{repeat}")
            rows["cold"].append(one_run(cache, args.size, args.steps, folder))
            rows["cached"].append(one_run(cache, args.size, args.steps, folder))
    report = {
        "machine": nst_ext.backend_info(),
        "cpu_threads": torch.get_num_threads(),
        "size": args.size,
        "steps": args.steps,
        "runs": rows,
    }
    for name, runs in rows.items():
        report[name] = {
            "optimisation_median_s": statistics.median(run[0] for run in runs),
            "wall_median_s": statistics.median(run[1] for run in runs),
        }
        print(
            f"{name}: {report[name]['optimisation_median_s']:.2f} s of optimisation, "
            f"{report[name]['wall_median_s']:.2f} s wall (medians of {len(runs)})",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=1)


if __name__ == "__main__":
    main()
