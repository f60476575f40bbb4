"""The pictures of docs/control.md: spatial control (two styles by region, from a soft mask made
from the content's own colours) and one picture per colour mode, all from the quality panel.

    python benchmarks/control_sheet.py --out docs/control [--size 256]

Writes OUT/spatial.jpg (content, mask, the two styles, the result with masks, the same two styles
blended without) and OUT/colour.jpg (content, style, then the result plain and under each colour
mode), each cell labelled.
"""

import argparse
import os
import time

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

import nst_ext
from nst_ext.io.images import resize_to_long_side, to_pil
from nst_ext.stylizer import Stylizer
from quality import panel_image

CELL = 220
COLOUR_MODES = [
    ("plain", {}),
    ("luminance, yuv", dict(preserve_color="luminance")),
    ("luminance, lab", dict(preserve_color="luminance", color_space="lab")),
    ("transfer pca", dict(color_transfer="pca")),
    ("transfer cholesky", dict(color_transfer="cholesky")),
    ("transfer histogram", dict(color_transfer="histogram")),
]


def sky_mask(image: torch.Tensor) -> torch.Tensor:
    """A soft mask of the blue sky of `image` ``(3, H, W)``: where blue leads red and green, smoothed."""
    red, green, blue = image
    lead = blue - torch.maximum(red, green)
    mask = ((lead - 0.01) / 0.07).clamp(0, 1)  # the dusk sky leads by 0.11-0.13, the ground trails
    return F.avg_pool2d(mask[None, None], 5, stride=1, padding=2, count_include_pad=False)[0, 0]


def sheet(cells, title):
    """One row of labelled cells: [(label, (3, H, W) image)]."""
    header = 24
    canvas = Image.new("RGB", (len(cells) * (CELL + 4), header + CELL + 20), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((6, 6), title, fill=(0, 0, 0))
    for i, (label, image) in enumerate(cells):
        picture = to_pil(resize_to_long_side(image, CELL))
        canvas.paste(picture, (i * (CELL + 4) + (CELL - picture.width) // 2, header + (CELL - picture.height) // 2))
        draw.text((i * (CELL + 4) + 4, header + CELL + 4), label, fill=(0, 0, 0))
    return canvas


def main():
    nst_ext.allow_process_effects()  # measured as the nst-ext command runs (nst_ext.plan.effects)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--parts", default="spatial,colour", help="which sheets to make")
    args = parser.parse_args()
    parts = args.parts.split(",")
    os.makedirs(args.out, exist_ok=True)
    common = dict(size=args.size, device="cpu")

    if "spatial" in parts:
        spatial_sheet(args.size, common, args.out)
    if "colour" in parts:
        colour_sheet(args.size, common, args.out)


def spatial_sheet(size, common, out):
    rocket, sky_style, ground_style = panel_image("rocket"), panel_image("ihc"), panel_image("brick")
    mask = sky_mask(rocket)
    started = time.perf_counter()
    masked = Stylizer(**common, style_masks=[mask, 1 - mask]).run(rocket, [sky_style, ground_style]).tensor
    blended = Stylizer(**common).run(rocket, [sky_style, ground_style]).tensor
    print(f"spatial: {time.perf_counter() - started:.0f} s")
    sheet(
        [
            ("content", rocket),
            ("sky mask (soft)", mask[None].expand(3, -1, -1)),
            ("style: sky", sky_style),
            ("style: the rest", ground_style),
            ("--style-masks", masked),
            ("blended, no masks", blended),
        ],
        f"spatial control at {size} px, default settings",
    ).save(os.path.join(out, "spatial.jpg"), quality=90)


def colour_sheet(size, common, out):
    coffee, style = panel_image("coffee"), panel_image("retina")
    cells = [("content", coffee), ("style", style)]
    for label, options in COLOUR_MODES:
        started = time.perf_counter()
        cells.append((label, Stylizer(**common, **options).run(coffee, style).tensor))
        print(f"{label}: {time.perf_counter() - started:.0f} s")
    sheet(cells, f"colour control at {size} px, default settings").save(os.path.join(out, "colour.jpg"), quality=90)


if __name__ == "__main__":
    main()
