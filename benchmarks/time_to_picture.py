"""Time to a good picture: today's defaults against the earlier ones, in one run, on the same
pairs, with the quality figures of both (benchmarks/quality.py explains them).

The earlier defaults (before 2026-11-28): stages 256 → 512 with 150 + 50 L-BFGS steps, float32
convolutions, the style term not normalised, style weight 5, no content detail added between stages,
the loss scored on the unclamped pixels; the same otherwise.

    python benchmarks/time_to_picture.py --size 512 --out docs/time-to-picture
"""

import argparse
import json
import os
import time

import torch

import nst_ext
from nst_ext.metrics import subject_and_style
from nst_ext.stylizer import Stylizer

from quality import PAIRS, contact_sheet, panel_image

EARLIER_DEFAULTS = {
    "scales": [256, 512],
    "steps": [150, 50],
    "mixed_precision": False,
    "normalize_style": False,
    "content_detail": False,
    "style_weight": 5.0,
    "clamp_in_loss": False,
}
DEMO = (
    os.path.join(os.path.dirname(nst_ext.__file__), "data", "astronaut.jpg"),
    os.path.join(os.path.dirname(nst_ext.__file__), "data", "swirls.jpg"),
)


def main():
    nst_ext.allow_process_effects()  # measured as the nst-ext command runs (nst_ext.plan.effects)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--pairs", default="demo,1,5", help="'demo' and/or indices into the quality panel")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    settings = {"earlier defaults": dict(EARLIER_DEFAULTS, size=args.size), "defaults": {"size": args.size}}
    if args.size != 512:
        settings["earlier defaults"]["scales"] = [args.size // 2, args.size]
    judge = Stylizer(size=args.size, device="cpu", mixed_precision=False).vgg
    rows = []
    for item in args.pairs.split(","):
        if item == "demo":
            names, images = ("astronaut", "swirls", "demo"), [nst_ext.load_image(p) for p in DEMO]
        else:
            names = PAIRS[int(item)]
            images = [panel_image(names[0]), panel_image(names[1])]
        for label, options in settings.items():
            stylizer = Stylizer(device="cpu", **options)
            started = time.perf_counter()
            result = stylizer.run(*images)
            wall = time.perf_counter() - started
            subject, style = subject_and_style(judge, result.tensor, *images)
            rows.append(
                dict(
                    content=names[0],
                    style=names[1],
                    what=f"{names[2]}: {label}",
                    settings=label,
                    subject=subject,
                    style_left=style,
                    seconds=result.seconds,
                    wall_seconds=wall,
                    steps=len(result.history),
                    image=result.tensor,
                    images=images,
                )
            )
            print(
                f"{names[0]:>9}/{names[1]:<7} {label:<17} {result.seconds:6.1f} s  {len(result.history)} steps  "
                f"subject {subject:.3f}  style {style:.3f}",
                flush=True,
            )
    sheet = contact_sheet(
        [{**r, "image": r["image"]} for r in rows],
        f"time to picture at {args.size} px, CPU {torch.get_num_threads()} threads, torch {torch.__version__}",
        images_of=lambda r: r["images"],
    )
    sheet.save(os.path.join(args.out, "sheet.png"))
    with open(os.path.join(args.out, "time_to_picture.json"), "w") as out:
        json.dump(
            {
                "settings": settings,
                "rows": [{k: v for k, v in r.items() if k not in ("image", "images")} for r in rows],
            },
            out,
            indent=1,
        )


if __name__ == "__main__":
    main()
