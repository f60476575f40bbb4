"""What storing the L-BFGS pairs in bfloat16 costs the picture and the time: the same run (same
pictures, options and seed) with the history in float32 and in bfloat16, side by side in one
process, for each size asked, beside a third run that differs from the first only in its summation
order (float32 history, one thread instead of all): how far two runs drift apart from rounding
alone, the yardstick for the bfloat16 run's difference.

Reports per run the last evaluation's loss and its terms, the seconds, the history's bytes per
stage, and two measures apart from the loss L-BFGS minimises (nst_ext.metrics: the panel's subject
figure and the independent style measure); and each picture's mean and largest absolute difference
from the float32 run in 1/255 steps. `--pictures DIR` saves the three pictures side by side.

    python benchmarks/history_precision.py --sizes 256 --json benchmarks/results/cpu-history-precision.json
"""

import argparse
import json
import os

import torch

from _common import CONTENT, STYLE
from nst_ext.images import load_image, save_image
from nst_ext.metrics import independent_style, subject_and_style
from nst_ext.stylizer import Stylizer

VARIANTS = [("float32", False, None), ("bfloat16", True, None), ("float32, 1 thread", False, 1)]


def run(content, style, size, bfloat16, threads, seed):
    all_threads = torch.get_num_threads()
    torch.set_num_threads(threads or all_threads)
    try:
        plans = []

        def callback(progress):
            if progress.memory_plan is not None and (not plans or plans[-1] is not progress.memory_plan):
                plans.append(progress.memory_plan)

        result = Stylizer(size=size, device="cpu", lbfgs_history_bfloat16=bfloat16, seed=seed).run(
            content, style, callback=callback)
    finally:
        torch.set_num_threads(all_threads)
    return result, {"seconds": result.seconds, "threads": threads or all_threads, "final": result.history[-1],
                    "history_bytes": [plan.history for plan in plans],
                    "pairs": [plan.history_size for plan in plans]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="256")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    parser.add_argument("--pictures", default=None, metavar="DIR")
    args = parser.parse_args()
    content, style = load_image(CONTENT), load_image(STYLE)
    judge = Stylizer(size=256, device="cpu", mixed_precision=False).vgg
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        row = {"size": size, "seed": args.seed, "runs": {}}
        pictures = {}
        for name, bfloat16, threads in VARIANTS:
            result, figures = run(content, style, size, bfloat16, threads, args.seed)
            pictures[name] = result.tensor
            figures["subject"], figures["style_left"] = subject_and_style(judge, result.tensor, content, style)
            figures["independent_style"] = independent_style(judge, result.tensor, content, style)
            difference = (result.tensor - pictures["float32"]).abs() * 255
            figures["mean_abs_difference_255"] = difference.mean().item()
            figures["max_abs_difference_255"] = difference.max().item()
            row["runs"][name] = figures
            print(f"{size} px, history {name:>18}: loss {figures['final']['total']:.4f}  subject "
                  f"{figures['subject']:.3f}  independent style {figures['independent_style']:.3f}  "
                  f"vs float32 {figures['mean_abs_difference_255']:.2f}/255 mean, "
                  f"{figures['max_abs_difference_255']:.0f}/255 max  {figures['seconds']:.1f} s", flush=True)
        if args.pictures:
            os.makedirs(args.pictures, exist_ok=True)
            save_image(torch.cat(list(pictures.values()), dim=-1), os.path.join(args.pictures, f"history-{size}.png"))
        rows.append(row)
    report = {"machine": f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}", "rows": rows}
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=1)


if __name__ == "__main__":
    main()
