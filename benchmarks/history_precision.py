"""What storing the L-BFGS pairs or the content targets in bfloat16 costs the picture and the time:
the same run (same pictures, options and seed) with everything in float32, with the pairs in
bfloat16, and with the content targets in bfloat16, side by side in one process, for each size
asked, beside a run that differs from the first only in its summation order (float32, one thread
instead of all): how far two runs drift apart from rounding alone, the yardstick for the bfloat16
runs' differences.

Reports per run the last evaluation's loss and its terms, the seconds, the history's bytes per
stage, and two measures apart from the loss L-BFGS minimises (nst_ext.metrics: the panel's subject
figure and the independent style measure); and each picture's mean and largest absolute difference
from the float32 run in 1/255 steps. `--pictures DIR` saves the pictures side by side. `--variants`
runs some of them (the float32 run always, first).

    python benchmarks/history_precision.py --sizes 256 --json benchmarks/results/cpu-history-precision.json
    python benchmarks/history_precision.py --variants "content targets in bfloat16" --json F
"""

import argparse
import json
import os

import torch

from _common import CONTENT, STYLE
import nst_ext
from nst_ext.io.images import load_image, save_image
from nst_ext.metrics import independent_style, subject_and_style
from nst_ext.stylizer import Stylizer

# (name, the options it forces, threads: None for all)
VARIANTS = [
    ("float32", {}, None),
    ("bfloat16", {"lbfgs_history_bfloat16": True}, None),
    ("content targets in bfloat16", {"content_target_bfloat16": True}, None),
    ("float32, 1 thread", {}, 1),
]


def run(content, style, size, forced, threads, seed):
    all_threads = torch.get_num_threads()
    torch.set_num_threads(threads or all_threads)
    try:
        plans = []

        def callback(progress):
            if progress.memory_plan is not None and (not plans or plans[-1] is not progress.memory_plan):
                plans.append(progress.memory_plan)

        result = Stylizer(size=size, device="cpu", seed=seed, **forced).run(content, style, callback=callback)
    finally:
        torch.set_num_threads(all_threads)
    return result, {
        "seconds": result.seconds,
        "threads": threads or all_threads,
        "final": result.history[-1],
        "history_bytes": [plan.history for plan in plans],
        "pairs": [plan.history_size for plan in plans],
    }


def main():
    nst_ext.allow_process_effects()  # measured as the nst-ext command runs (nst_ext.plan.effects)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="256")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    parser.add_argument("--pictures", default=None, metavar="DIR")
    parser.add_argument(
        "--variants",
        default=None,
        help="comma-separated names among: " + ", ".join(name for name, _, _ in VARIANTS[1:]) + " (default: all)",
    )
    args = parser.parse_args()
    content, style = load_image(CONTENT), load_image(STYLE)
    judge = Stylizer(size=256, device="cpu", mixed_precision=False).vgg
    chosen = None if args.variants is None else {name.strip() for name in args.variants.split(",")}
    if chosen and chosen - {name for name, _, _ in VARIANTS}:
        parser.error(f"unknown variants: {', '.join(sorted(chosen - {name for name, _, _ in VARIANTS}))}")
    variants = [variant for variant in VARIANTS if chosen is None or variant[0] in chosen or variant is VARIANTS[0]]
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        row = {"size": size, "seed": args.seed, "runs": {}}
        pictures = {}
        for name, forced, threads in variants:
            result, figures = run(content, style, size, forced, threads, args.seed)
            pictures[name] = result.tensor
            figures["subject"], figures["style_left"] = subject_and_style(judge, result.tensor, content, style)
            figures["independent_style"] = independent_style(judge, result.tensor, content, style)
            difference = (result.tensor - pictures["float32"]).abs() * 255
            figures["mean_abs_difference_255"] = difference.mean().item()
            figures["max_abs_difference_255"] = difference.max().item()
            row["runs"][name] = figures
            print(
                f"{size} px, {name:>27}: loss {figures['final']['total']:.4f}  subject "
                f"{figures['subject']:.3f}  independent style {figures['independent_style']:.3f}  "
                f"vs float32 {figures['mean_abs_difference_255']:.2f}/255 mean, "
                f"{figures['max_abs_difference_255']:.0f}/255 max  {figures['seconds']:.1f} s",
                flush=True,
            )
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
