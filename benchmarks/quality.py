"""The quality panel: content/style pairs chosen to differ (portrait, animal, object, outdoor and
night scenes; strong textures, photographs, flat graphics, a grayscale style, a tiny style), run
at one size and one set of options, judged by eye and by numbers.

Writes OUT/sheet.png (one row per pair: content, style, result, with the figures) and
OUT/quality.json (per pair: the figures and the run's seconds). The figures, per pair
(nst_ext.metrics.subject_and_style):
    subject   content distance of the result ÷ content distance of the style image itself
              (0: the content unchanged; 1: as far from the content as the style is)
    style     style distance of the result ÷ style distance of the content image itself
              (1: no style taken on; 0: the style's own statistics)
    independent  the same question by a measure built apart from the optimiser and the figure
              above (nst_ext.metrics.independent_style: pictures 256 px wide, Frobenius norms of
              Gram differences summed over relu1_1 … relu5_1; 1: none taken on, 0: all)
and beside them the judge with no VGG in it (nst_ext.judge):
    texture   texture statistics' gap to the style, as a share of the content's (1: the content's
              texture, 0: the style's)
    colour    the same over the Lab colour moments
    layout    correlation of blurred luminance with the content's (1: the content's layout)

    python benchmarks/quality.py --size 256 --out docs/panel [--set style_weight=1 --set steps=100] [--held-out]
"""

import argparse
import json
import os
import sys
import time

import torch
from PIL import Image, ImageDraw

import nst_ext
from nst_ext.io.images import load_image, resize_to_long_side, to_pil
from nst_ext import judge
from nst_ext.metrics import independent_style, subject_and_style
from nst_ext.stylizer import Stylizer

PANEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "panel")
# (content, style, what the pair tests)
PAIRS = [
    ("hopper", "gravel", "portrait / strong texture"),
    ("chelsea", "ihc", "animal / colourful texture"),
    ("coffee", "rocket", "object / photograph"),
    ("rocket", "blocks", "outdoor scene / flat graphic"),
    ("hubble", "brick", "night sky / texture"),
    ("camera", "retina", "grayscale portrait / colour photograph"),
    ("hopper", "camera", "portrait / grayscale style"),
    ("coffee", "horse", "object / tiny flat graphic"),
    ("chelsea", "grass", "animal / texture"),
]
# Pairs apart from the panel (--held-out): no default, weight or loss was chosen looking at them.
HELD_OUT = [
    ("retina", "gravel", "colour photograph / fine texture"),
    ("blocks", "hubble", "flat graphic / night photograph"),
    ("camera", "grass", "grayscale portrait / texture"),
    ("horse", "brick", "tiny flat graphic / texture"),
    ("ihc", "coffee", "colour photograph / photograph"),
]
CELL = 200  # pixels of a contact-sheet cell's long side


def panel_image(name):
    return load_image(os.path.join(PANEL, f"{name}.jpg"), name)


def run_panel(options: dict, pairs=PAIRS, log=print):
    """Runs every pair with `options` (StyleOptions fields); returns one dict per pair with the
    result tensor under "image"."""
    stylizer = Stylizer(**options)
    judge_vgg = Stylizer(**{**options, "device": options.get("device", "auto"), "mixed_precision": False})
    rows = []
    for content_name, style_name, what in pairs:
        content, style = panel_image(content_name), panel_image(style_name)
        started = time.perf_counter()
        result = stylizer.run(content, style)
        seconds = time.perf_counter() - started
        subject, style_left = subject_and_style(judge_vgg.vgg, result.tensor, content, style)
        independent = independent_style(judge_vgg.vgg, result.tensor, content, style)
        texture, colour = judge.gaps(result.tensor, content, style)
        layout = judge.layout(result.tensor, content)
        rows.append(
            dict(
                content=content_name,
                style=style_name,
                what=what,
                subject=subject,
                style_left=style_left,
                independent=independent,
                texture=texture,
                colour=colour,
                layout=layout,
                seconds=seconds,
                steps=len(result.history),
                image=result.tensor,
            )
        )
        log(
            f"{content_name:>8} / {style_name:<7} subject {subject:.3f}  style {style_left:.3f}  "
            f"independent {independent:.3f}  texture {texture:.3f}  colour {colour:.3f}  layout {layout:.3f}  "
            f"{seconds:6.1f} s  {len(result.history)} steps",
            flush=True,
        )
    return rows


def contact_sheet(rows, title, images_of=None):
    """One row per result: content, style, result, with the figures. `images_of(row)` gives the
    row's (content, style) tensors (default: the panel images named in the row)."""
    images_of = images_of or (lambda row: (panel_image(row["content"]), panel_image(row["style"])))

    def cell(image):
        picture = to_pil(resize_to_long_side(image, CELL))
        canvas = Image.new("RGB", (CELL, CELL), (255, 255, 255))
        canvas.paste(picture, ((CELL - picture.width) // 2, (CELL - picture.height) // 2))
        return canvas

    label_width, header = 230, 28
    sheet = Image.new("RGB", (label_width + 3 * CELL + 8, header + len(rows) * (CELL + 4)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.text((6, 8), title, fill=(0, 0, 0))
    for i, name in enumerate(("content", "style", "result")):
        draw.text((label_width + i * CELL + CELL // 2 - 20, header - 14), name, fill=(80, 80, 80))
    for r, row in enumerate(rows):
        top = header + r * (CELL + 4)
        lines = [
            row["what"],
            f"{row['content']} / {row['style']}",
            f"subject {row['subject']:.2f}",
            f"style {row['style_left']:.2f}",
        ]
        if "independent" in row:
            lines.append(f"independent style {row['independent']:.2f}")
        if "texture" in row:
            lines.append(f"no VGG: texture {row['texture']:.2f}, layout {row['layout']:.2f}")
        lines.append(f"{row['seconds']:.0f} s, {row['steps']} steps")
        for k, line in enumerate(lines):
            draw.text((6, top + 40 + 16 * k), line, fill=(0, 0, 0))
        for c, image in enumerate((*images_of(row), row["image"])):
            sheet.paste(cell(image), (label_width + c * CELL, top))
    return sheet


def parse_value(text):
    try:
        return json.loads(text)
    except ValueError:
        return text


def main():
    nst_ext.allow_process_effects()  # measured as the nst-ext command runs (nst_ext.plan.effects)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--out", required=True, help="folder for sheet.png and quality.json")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="OPTION=VALUE",
        help="a StyleOptions field (JSON value), e.g. style_weight=1 or steps=[100,30]",
    )
    parser.add_argument("--pairs", default=None, help="comma-separated indices into the panel (default: all)")
    parser.add_argument("--held-out", action="store_true", help="the pairs apart from the panel (HELD_OUT) instead")
    parser.add_argument("--title", default=None)
    args = parser.parse_args()
    options = {"size": args.size, "device": "cpu"}
    for item in args.set:
        key, _, value = item.partition("=")
        options[key] = parse_value(value)
    panel = HELD_OUT if args.held_out else PAIRS
    pairs = panel if args.pairs is None else [panel[int(i)] for i in args.pairs.split(",")]
    os.makedirs(args.out, exist_ok=True)
    rows = run_panel(options, pairs)
    title = args.title or (
        "nst_ext quality panel, "
        + ", ".join(f"{k}={v}" for k, v in options.items())
        + f", torch {torch.__version__}, nst_ext {nst_ext.__version__}"
    )
    contact_sheet(rows, title).save(os.path.join(args.out, "sheet.png"))
    with open(os.path.join(args.out, "quality.json"), "w") as out:
        json.dump(
            {"options": options, "rows": [{k: v for k, v in row.items() if k != "image"} for row in rows]},
            out,
            indent=1,
        )
    total = sum(row["seconds"] for row in rows)
    print(
        f"total {total:.0f} s; worst subject {max(r['subject'] for r in rows):.3f}; "
        f"worst style {max(r['style_left'] for r in rows):.3f}; "
        f"worst independent style {max(r['independent'] for r in rows):.3f}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
