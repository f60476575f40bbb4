"""The frontier: for each method (style loss and parametrisation), a sweep of style weights on a set
of pairs, each picture judged with no VGG (nst_ext.judge): texture gap against layout kept. One
method is better than another only where its curve lies below the other's at the same layout.

Writes, in OUT: frontier.json (per method and weight, each pair's figures and seconds; a rerun
skips what is there, so a sweep can be run in parts), images/ (each picture), frontier.png (each
method's curve of median texture gap against median layout, one point per weight, and the same
per pair in small multiples) and sheet.jpg (the pictures side by side: one row per pair, one
column per method and weight).

    python benchmarks/frontier.py --out DIR [--held-out] [--methods gram,w2] [--size 256]
"""

import argparse
import json
import os
import statistics
import sys

import torch
from PIL import Image, ImageDraw

import nst_ext
from nst_ext.io.images import load_image, resize_to_long_side, to_pil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from quality import HELD_OUT, PAIRS, panel_image, run_panel  # noqa: E402

# Each method's options (StyleOptions fields) and the style weights its curve is traced at: from
# "the content with a little style" to "the style's structure takes over", for that loss's scale.
METHODS = {
    "gram": ({}, (2.9, 20, 60)),
    "gram pyramid": ({"parametrization": "pyramid"}, (5, 20, 60)),
    "w2": ({"style_loss": "w2"}, (2, 5, 20)),
    "sliced": ({"style_loss": "sliced"}, (5, 20)),
}
CELL = 128  # pixels of a sheet cell's long side


def run_key(method: str, weight: float) -> str:
    return f"{method} @ {weight:g}"


def image_path(out: str, method: str, weight: float, content: str, style: str) -> str:
    name = f"{method}-{weight:g}-{content}-{style}".replace(" ", "-")
    return os.path.join(out, "images", name + ".png")


def sweep(out: str, methods, pairs, size: int, results: dict) -> None:
    """Runs each method at each of its weights on `pairs`, skipping runs in `results`; writes
    frontier.json after each run."""
    for method in methods:
        options, weights = METHODS[method]
        for weight in weights:
            key = run_key(method, weight)
            if key in results:
                continue
            rows = run_panel({"size": size, "device": "cpu", "style_weight": weight, **options}, pairs)
            for row in rows:
                to_pil(row.pop("image")).save(image_path(out, method, weight, row["content"], row["style"]))
            results[key] = {"method": method, "weight": weight, "options": options, "rows": rows}
            _write_json(out, results)


def _write_json(out: str, results: dict) -> None:
    path = os.path.join(out, "frontier.json")
    with open(path + ".partial", "w") as file:
        json.dump(results, file, indent=1)
    os.replace(path + ".partial", path)


def curves(results: dict, pairs=None):
    """Per method, its points (weight, median layout, median texture, median seconds), by weight;
    `pairs`: only these (content, style) names."""
    by_method: dict = {}
    for run in results.values():
        rows = [r for r in run["rows"] if pairs is None or (r["content"], r["style"]) in pairs]
        if not rows:
            continue
        point = (
            run["weight"],
            statistics.median(r["layout"] for r in rows),
            statistics.median(r["texture"] for r in rows),
            statistics.median(r["seconds"] for r in rows),
        )
        by_method.setdefault(run["method"], []).append(point)
    return {method: sorted(points) for method, points in by_method.items()}


def against_baseline(results: dict, baseline: str = "gram"):
    """Per method and weight, per pair, its texture gap less the `baseline` curve's at the same
    layout (that pair's baseline points joined by straight lines; negative: below the curve, the
    better picture), or None where its layout lies outside the baseline's sweep. The medians of
    the plot's first panel mix pairs; this is the judgement pair by pair."""
    curve_of = {}
    for pair in {(r["content"], r["style"]) for run in results.values() for r in run["rows"]}:
        points = curves(results, {pair}).get(baseline, [])
        curve_of[pair] = sorted((layout, texture) for _, layout, texture, _ in points)
    verdicts = {}
    for key, run in results.items():
        if run["method"] == baseline:
            continue
        differences = {}
        for row in run["rows"]:
            pair = (row["content"], row["style"])
            curve, layout = curve_of.get(pair, []), row["layout"]
            below = [(x, y) for x, y in curve if x <= layout]
            above = [(x, y) for x, y in curve if x >= layout]
            if not below or not above:
                differences[pair] = None
                continue
            (x0, y0), (x1, y1) = below[-1], above[0]
            at = y0 if x1 == x0 else y0 + (y1 - y0) * (layout - x0) / (x1 - x0)
            differences[pair] = row["texture"] - at
        verdicts[key] = differences
    return verdicts


def plot(results: dict, pairs, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("median over the pairs", None)] + [(f"{c} / {s}", {(c, s)}) for c, s, _ in pairs]
    columns = 3
    rows = (len(panels) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.6 * rows), dpi=100, squeeze=False)
    for axis, (name, chosen) in zip(axes.flat, panels):
        for method, points in curves(results, chosen).items():
            layouts, textures = [p[1] for p in points], [p[2] for p in points]
            axis.plot(layouts, textures, marker="o", label=method)
            for weight, layout, texture, _ in points:
                axis.annotate(f"{weight:g}", (layout, texture), fontsize=7, xytext=(3, 3), textcoords="offset points")
        axis.set_title(name, fontsize=9)
        axis.set_xlabel("layout kept (1: the content's)", fontsize=8)
        axis.set_ylabel("texture gap (0: the style's)", fontsize=8)
        axis.invert_xaxis()
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(panels) :]:
        axis.axis("off")
    axes.flat[0].legend(fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def sheet(out: str, results: dict, pairs, title: str) -> Image.Image:
    runs = sorted(results.values(), key=lambda run: (list(METHODS).index(run["method"]), run["weight"]))
    header, label = 34, 130
    canvas = Image.new("RGB", (label + (2 + len(runs)) * CELL, header + len(pairs) * (CELL + 14)), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), title, fill=(0, 0, 0))
    for c, name in enumerate(["content", "style"] + [run_key(run["method"], run["weight"]) for run in runs]):
        draw.text((label + c * CELL + 2, header - 14), name, fill=(60, 60, 60))
    for r, (content, style, what) in enumerate(pairs):
        top = header + r * (CELL + 14)
        draw.text((4, top + CELL // 2 - 14), f"{content} / {style}", fill=(0, 0, 0))
        draw.text((4, top + CELL // 2), what[:22], fill=(90, 90, 90))
        cells = [panel_image(content), panel_image(style)]
        figures = ["", ""]
        for run in runs:
            row = next((row for row in run["rows"] if (row["content"], row["style"]) == (content, style)), None)
            path = image_path(out, run["method"], run["weight"], content, style)
            cells.append(load_image(path, path) if row and os.path.exists(path) else None)
            figures.append(f"t {row['texture']:.2f} l {row['layout']:.2f}" if row else "")
        for c, (image, text) in enumerate(zip(cells, figures)):
            if image is not None:
                picture = to_pil(resize_to_long_side(image, CELL))
                canvas.paste(
                    picture, (label + c * CELL + (CELL - picture.width) // 2, top + (CELL - picture.height) // 2)
                )
            draw.text((label + c * CELL + 2, top + CELL), text, fill=(0, 0, 0))
    return canvas


def main():
    nst_ext.allow_process_effects()  # measured as the nst-ext command runs (nst_ext.plan.effects)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--held-out", action="store_true", help="the pairs apart from the panel (quality.HELD_OUT)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of: {', '.join(METHODS)}")
    parser.add_argument("--report-only", action="store_true", help="only redraw the plot and sheet from frontier.json")
    args = parser.parse_args()
    methods = [name.strip() for name in args.methods.split(",")]
    unknown = [name for name in methods if name not in METHODS]
    if unknown:
        parser.error(f"unknown methods: {', '.join(unknown)}")
    pairs = HELD_OUT if args.held_out else PAIRS
    os.makedirs(os.path.join(args.out, "images"), exist_ok=True)
    path = os.path.join(args.out, "frontier.json")
    results = json.load(open(path)) if os.path.exists(path) else {}
    results.pop("note", None)  # a copy kept in benchmarks/results/ says where it ran
    if not args.report_only:
        sweep(args.out, methods, pairs, args.size, results)
    title = (
        f"nst_ext frontier, {'held-out pairs' if args.held_out else 'panel'}, {args.size} px, "
        f"torch {torch.__version__}, nst_ext {nst_ext.__version__}"
    )
    plot(results, pairs, os.path.join(args.out, "frontier.png"), title)
    sheet(args.out, results, pairs, title).save(os.path.join(args.out, "sheet.jpg"), quality=88)
    verdicts = against_baseline(results)
    for method, points in curves(results).items():
        for weight, layout, texture, seconds in points:
            line = f"{method:>14} {weight:>5g}: layout {layout:.3f}  texture {texture:.3f}  {seconds:5.1f} s a pair"
            differences = [d for d in verdicts.get(run_key(method, weight), {}).values() if d is not None]
            if differences:
                line += (
                    f"  against gram at equal layout: below on {sum(d < 0 for d in differences)} of "
                    f"{len(differences)} pairs in its range, median {statistics.median(differences):+.3f}"
                )
            print(line)


if __name__ == "__main__":
    main()
