"""Seconds per stylization step (an L-BFGS update and one evaluation, as a run does it) at each
stage size of the default schedule, with float32 and with bfloat16 convolutions, back to back in one
process: the figures behind the default schedule (BENCHMARKS.md, "A good picture, fast").

    python benchmarks/step_times.py [--sizes 128,256,512] [--device cpu]
"""

import argparse
import statistics
import time

import torch

import nst_ext

from _common import lbfgs_step


def main():
    nst_ext.allow_process_effects()  # measured as the nst-ext command runs (nst_ext.plan.effects)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="128,256,512")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    for mixed_precision in (False, True):
        for size in (int(s) for s in args.sizes.split(",")):
            step = lbfgs_step(nst_ext.Stylizer(size=size, device=args.device, mixed_precision=mixed_precision))
            step()
            step()  # warm-up: per-shape choices, allocator, the L-BFGS history
            samples = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                step()
                samples.append(time.perf_counter() - started)
            print(
                f"bfloat16 convolutions {'on ' if mixed_precision else 'off'}  {size:5d} px  "
                f"{statistics.median(samples) * 1e3:7.0f} ms per step (median of {args.repeats})",
                flush=True,
            )


if __name__ == "__main__":
    main()
