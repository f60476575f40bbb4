"""A run beside other work: the same `nst-ext stylize` in fresh processes on a quiet machine and
beside one busy process (a pure-Python loop, as a browser tab or a build would be), with OpenMP's
threads waiting as they do by default (spinning a while at each barrier) and with
OMP_WAIT_POLICY=PASSIVE (sleeping at once).

    python benchmarks/busy_machine.py [--size 256] [--steps 30] [--repeats 3] [--json F]

The figure is the run's own seconds of optimisation (its "wrote ... in S s" line), medians of
`--repeats`, the settings interleaved so that a drift in the machine falls on all of them."""

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile

import torch

from cold_start import one_run

import nst_ext

WAIT_POLICIES = {"default": {}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"}}


@contextlib.contextmanager
def busy_process(busy: bool):
    """With `busy`, one process spinning on a core for the block's duration."""
    if not busy:
        yield
        return
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        spinner.kill()
        spinner.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    settings = [(policy, busy) for busy in (False, True) for policy in WAIT_POLICIES]
    seconds = {setting: [] for setting in settings}
    with tempfile.TemporaryDirectory() as folder:
        cache = os.path.join(folder, "cache")
        one_run(cache, args.size, args.steps, folder)  # fills the algorithm cache and the OS's file cache
        for _ in range(args.repeats):
            for policy, busy in settings:
                with busy_process(busy):
                    seconds[(policy, busy)].append(
                        one_run(cache, args.size, args.steps, folder, WAIT_POLICIES[policy])[0]
                    )
    rows = []
    quiet_default = statistics.median(seconds[("default", False)])
    print("| OpenMP waits | machine | optimisation s (median) | × quiet, default |\n|---|---|---:|---:|")
    for policy, busy in settings:
        median = statistics.median(seconds[(policy, busy)])
        rows.append(
            {"wait_policy": policy, "busy_process": busy, "seconds": seconds[(policy, busy)], "median_s": median}
        )
        machine = "beside a busy process" if busy else "quiet"
        print(f"| {policy} | {machine} | {median:.2f} | {median / quiet_default:.2f}× |", flush=True)
    if args.json:
        report = {
            "machine": nst_ext.backend_info(),
            "cpu_threads": torch.get_num_threads(),
            "size": args.size,
            "steps": args.steps,
            "rows": rows,
        }
        with open(args.json, "w") as out:
            json.dump(report, out, indent=1)


if __name__ == "__main__":
    main()
