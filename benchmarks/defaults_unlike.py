"""The defaults' style check on cases unlike the panel's: photographic textures at their own scale.

The panel's textures are at most 320 px, so a 512 px run enlarges them and their grain blurs: an
easier target than a photograph of gravel at its native resolution. Here each texture is mirrored
2×2 (640 px, the grain at its own scale, no seams) and used at 512 px with the portrait and the cat;
each pair runs at the style weights given, judged by both measures (nst_ext.metrics: the panel's
subject figure and the independent style measure).

    python benchmarks/defaults_unlike.py --weights 2.9,20 --json benchmarks/results/cpu-defaults-unlike.json
"""

import argparse
import json
import time

import torch

import nst_ext
from nst_ext.metrics import independent_style, subject_and_style
from nst_ext.stylizer import Stylizer
from quality import panel_image

PAIRS = [("hopper", "gravel"), ("chelsea", "grass")]


def mirrored(texture: torch.Tensor) -> torch.Tensor:
    """``(3, H, W)`` -> ``(3, 2H, 2W)``: the texture and its mirror images, seamless."""
    top = torch.cat([texture, texture.flip(-1)], dim=-1)
    return torch.cat([top, top.flip(-2)], dim=-2)


def main():
    nst_ext.allow_process_effects()  # measured as the nst-ext command runs (nst_ext.plan.effects)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="2.9,20")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    judge = Stylizer(size=args.size, device="cpu", mixed_precision=False).vgg
    rows = []
    for content_name, style_name in PAIRS:
        content, style = panel_image(content_name), mirrored(panel_image(style_name))
        for weight in (float(w) for w in args.weights.split(",")):
            started = time.perf_counter()
            result = Stylizer(size=args.size, device="cpu", style_weight=weight).run(content, style).tensor
            seconds = time.perf_counter() - started
            subject, style_left = subject_and_style(judge, result, content, style)
            independent = independent_style(judge, result, content, style)
            rows.append(
                dict(
                    content=content_name,
                    style=f"{style_name} 2x2 mirrored",
                    style_weight=weight,
                    subject=subject,
                    style_left=style_left,
                    independent=independent,
                    seconds=seconds,
                )
            )
            print(
                f"{content_name:>8} / {style_name:<7} weight {weight:5.1f}  subject {subject:.3f}  "
                f"style {style_left:.3f}  independent {independent:.3f}  {seconds:6.1f} s",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"size": args.size, "rows": rows}, out, indent=1)


if __name__ == "__main__":
    main()
