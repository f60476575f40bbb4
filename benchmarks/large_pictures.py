"""Large pictures, tiled and untiled: the seconds of one evaluation (the loss and its gradient, what
an L-BFGS step costs) and the peak memory of short runs, against megapixels.

    python benchmarks/large_pictures.py --steps-at 1024,2048 [--repeats 3] [--tiles 512,1024] [--json F]
    python benchmarks/large_pictures.py --runs 1024,2048,4096,6000x4000,8192 [--max-memory M] [--json F] [--plot F.png]
    python benchmarks/large_pictures.py --plot F.png --plot-with A.json,B.json  # earlier reports drawn together

--steps-at: in one process, at each size, the median seconds of an evaluation untiled, untiled
with activation checkpointing and in tiles of each edge (the same picture's loss and gradient,
side by side; the demo images); with --every-tile-twice, the tiled ways again with each tile
through VGG twice; --float32 where the CPU would otherwise convolve in bfloat16.

--runs: each size in a fresh process, as `nst-ext stylize --scales 512,SIZE --steps 20,2` with no
memory option (the default budget chooses checkpointing or tiles; --max-memory sets one): its peak resident memory
(VmHWM), the median seconds per evaluation of the finest stage, the memory plan it chose and that
plan's estimate. SIZE is a long side (the demo's square content) or WIDTHxHEIGHT (a 3:2 crop of it).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from _common import CONTENT, STYLE

import nst_ext
from nst_ext.plan.memory import plan_stage


def _parse_size(text):
    if "x" in text:
        width, height = (int(part) for part in text.split("x"))
        return width, height
    return int(text), int(text)


def evaluation_seconds(stylizer, size, plan, repeats):
    """The median seconds of one evaluation of the finest stage's objective under `plan`."""
    image, objective = stylizer.objective(CONTENT, STYLE, size=size, plan=plan)
    image = image.clone().requires_grad_(True)
    evaluate = objective.evaluator(image, graph=False)
    evaluate()  # warm-up: oneDNN's kernels for these shapes
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        evaluate()
        times.append(time.perf_counter() - started)
    return statistics.median(times), times


def steps_at(sizes, tiles, repeats, every_tile_twice=False, float32=False):
    """`every_tile_twice`: each tiled way is timed again with no tile's graph kept from the first
    pass for the second (each tile through VGG twice: nst_ext.objective.tiled._kept_tile).
    `float32`: float32 convolutions where the default would take bfloat16 ones."""
    from nst_ext.objective import tiled

    stylizer = nst_ext.Stylizer(device="cpu", **({"mixed_precision": False} if float32 else {}))
    options = stylizer.options
    rows = []
    kept_tile = tiled._kept_tile
    for size in sizes:
        row = {"size": size}
        tiled_ways = [(f"tiles {edge}", {"tile": edge}) for edge in tiles]
        twice = [(f"{name}, every tile twice", overrides) for name, overrides in tiled_ways if every_tile_twice]
        for name, overrides in [
            ("untiled", {"checkpointing": False, "tile": 0}),
            ("checkpointed", {"checkpointing": True, "tile": 0}),
            *tiled_ways,
            *twice,
        ]:
            plan = plan_stage(
                size,
                size,
                options.content_layers,
                options.style_layers,
                20,
                [(size, size)],
                None,
                "cpu",
                4,
                **overrides,
            )
            if overrides.get("tile") and not plan.tile_edge:
                continue
            tiled._kept_tile = (lambda objective: None) if name.endswith("twice") else kept_tile
            median, times = evaluation_seconds(stylizer, size, plan, repeats)
            row[name] = {"median_s": median, "times_s": times, "estimate_bytes": plan.total}
            print(
                f"{size} px {name}: {median:.2f} s per evaluation ({', '.join(f'{t:.2f}' for t in times)})", flush=True
            )
        rows.append(row)
    tiled._kept_tile = kept_tile
    return rows


CHILD = r"""
import json, statistics, sys, time
import nst_ext
content, style, width, height = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
stylizer = nst_ext.Stylizer(scales=[512, max(width, height)], steps=[20, 2], device="cpu", max_memory=sys.argv[5] or None)
stamps, plans = [], []

def callback(progress):
    if progress.stage == progress.stages - 1:
        stamps.append(time.perf_counter())
        plans.append(progress.memory_plan)

started = time.perf_counter()
result = stylizer.run(content, style, callback=callback)
seconds = time.perf_counter() - started
with open("/proc/self/status") as status:
    peak = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
plan = plans[0]
print(json.dumps({"peak_bytes": peak, "seconds": seconds, "shape": list(result.tensor.shape),
                  "evaluation_s": statistics.median(b - a for a, b in zip(stamps, stamps[1:])),
                  "evaluations": len(stamps), "estimate_bytes": plan.total, "plan": plan.describe(),
                  "tile_edge": plan.tile_edge, "checkpointing": plan.checkpointing,
                  "history_size": plan.history_size}))
"""


def runs(shapes, folder, max_memory=None):
    from PIL import Image

    rows = []
    for width, height in shapes:
        content = CONTENT
        if width != height:  # the demo content cropped to the aspect asked for
            image = Image.open(CONTENT).convert("RGB")
            side = image.width
            crop_height = round(side * min(width, height) / max(width, height))
            content = os.path.join(folder, f"content-{width}x{height}.png")
            image.crop((0, 0, side, crop_height)).save(content)
        completed = subprocess.run(
            [sys.executable, "-c", CHILD, content, STYLE, str(width), str(height), max_memory or ""],
            capture_output=True,
            text=True,
        )
        if completed.returncode:
            print(completed.stderr[-2000:], file=sys.stderr)
            rows.append({"width": width, "height": height, "error": completed.stderr.strip().splitlines()[-1]})
            continue
        row = {
            "width": width,
            "height": height,
            "megapixels": width * height / 1e6,
            "max_memory": max_memory,
            **json.loads(completed.stdout.strip().splitlines()[-1]),
        }
        print(
            f"{width}x{height}: peak {row['peak_bytes'] / 2**30:.2f} GiB (estimate {row['estimate_bytes'] / 2**30:.2f}), "
            f"{row['evaluation_s']:.1f} s per evaluation, {row['seconds']:.0f} s in all; {row['plan']}",
            flush=True,
        )
        rows.append(row)
    return rows


def plot(reports, path):
    """Peak memory and seconds per evaluation against megapixels, from the reports of --runs
    (measured peaks, tiled or not) and --steps-at (the plan's estimates and the seconds of each
    way at one size), any number of each, into `path` (a PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (memory, seconds) = plt.subplots(1, 2, figsize=(11, 4.2))
    ways = {}  # way -> [(megapixels, estimate GiB, seconds)]
    for report in reports:
        for row in report.get("steps", []):
            for way, figures in row.items():
                if way != "size":
                    ways.setdefault(way, []).append(
                        (row["size"] ** 2 / 1e6, figures["estimate_bytes"] / 2**30, figures["median_s"])
                    )
    for way, points in sorted(ways.items()):
        points.sort()
        megapixels, estimates, times = zip(*points)
        memory.plot(megapixels, estimates, "--", marker="o", fillstyle="none", label=f"{way} (plan's estimate)")
        seconds.plot(megapixels, times, "--", marker="o", fillstyle="none", label=way)
    runs = sorted(
        (row for report in reports for row in report.get("runs", []) if "error" not in row),
        key=lambda row: row["megapixels"],
    )
    for tiled, marker in ((False, "D"), (True, "s")):
        chosen = [row for row in runs if bool(row["tile_edge"]) == tiled]
        if not chosen:
            continue
        label = "tiled run" if tiled else "untiled run"
        memory.plot(
            [r["megapixels"] for r in chosen],
            [r["peak_bytes"] / 2**30 for r in chosen],
            "-",
            marker=marker,
            label=f"{label}: peak resident memory",
        )
        memory.plot(
            [r["megapixels"] for r in chosen],
            [r["estimate_bytes"] / 2**30 for r in chosen],
            linestyle="none",
            marker=marker,
            fillstyle="none",
            color="black",
            label=f"{label}: the plan's estimate",
        )
        timed = [r for r in chosen if r.get("evaluation_s")]  # null where the run shared the CPU
        seconds.plot(
            [r["megapixels"] for r in timed],
            [r["evaluation_s"] for r in timed],
            "-",
            marker=marker,
            label=f"{label} (the plan's tiles)",
        )
        for row in chosen:
            memory.annotate(
                f"{row['width']}x{row['height']}"
                + (f", {row['max_memory']}" if row["max_memory"] else ", default budget"),
                (row["megapixels"], row["peak_bytes"] / 2**30),
                textcoords="offset points",
                xytext=(6, 2) if row["megapixels"] > 5 else (6, -10),
                fontsize=7,
            )
    memory.set(xlabel="megapixels", ylabel="GiB", xscale="log", yscale="log", title="memory")
    seconds.set(
        xlabel="megapixels",
        ylabel="seconds per evaluation",
        xscale="log",
        yscale="log",
        title="one evaluation (loss and gradient)",
    )
    doublings = [2.0**k for k in range(-2, 14)]  # log axes read best at powers of two: 0.25 ... 8192
    for axis in (memory, seconds):
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(
            fontsize=7,
            loc="upper left" if axis is seconds else "lower right",
            bbox_to_anchor=None if axis is seconds else (1.0, 0.12),
        )
        for scale in (axis.xaxis, axis.yaxis):
            scale.set_major_locator(matplotlib.ticker.FixedLocator(doublings))
            scale.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            scale.set_minor_formatter(matplotlib.ticker.NullFormatter())
    threads = sorted({report["cpu_threads"] for report in reports if "cpu_threads" in report})
    figure.suptitle(
        f"large pictures on the CPU ({', '.join(map(str, threads))} threads): "
        "runs with --scales 512,SIZE --steps 20,2, and one evaluation each way",
        fontsize=9,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main():
    nst_ext.allow_process_effects()  # measured as the nst-ext command runs (nst_ext.plan.effects)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps-at", type=lambda t: [int(s) for s in t.split(",")], default=None)
    parser.add_argument("--tiles", type=lambda t: [int(s) for s in t.split(",")], default=[512, 1024])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--float32",
        action="store_true",
        help="--steps-at: float32 convolutions (default: bfloat16 where the CPU runs them natively)",
    )
    parser.add_argument(
        "--every-tile-twice",
        action="store_true",
        help="--steps-at: also each tiled way with every tile through VGG twice (the way before "
        "the first pass kept a tile's graph)",
    )
    parser.add_argument("--runs", type=lambda t: [_parse_size(s) for s in t.split(",")], default=None)
    parser.add_argument("--max-memory", default=None, help="the runs' --max-memory (default: the default budget)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--plot", default=None, help="a PNG of this run's figures and those of --plot-with")
    parser.add_argument(
        "--plot-with",
        default="",
        metavar="JSON,...",
        help="earlier reports (--json of --runs or --steps-at) drawn in the --plot too",
    )
    args = parser.parse_args()
    torch.set_grad_enabled(True)
    report = {"machine": nst_ext.backend_info(), "cpu_threads": torch.get_num_threads()}
    if args.steps_at:
        report["steps"] = steps_at(args.steps_at, args.tiles, args.repeats, args.every_tile_twice, args.float32)
        report["convolutions"] = "float32" if args.float32 else "the default (bfloat16 where native)"
    if args.runs:
        with tempfile.TemporaryDirectory() as folder:
            report["runs"] = runs(args.runs, folder, args.max_memory)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=1)
    if args.plot:
        earlier = []
        for name in filter(None, args.plot_with.split(",")):
            with open(name) as source:
                earlier.append(json.load(source))
        plot(earlier + [report], args.plot)


if __name__ == "__main__":
    main()
