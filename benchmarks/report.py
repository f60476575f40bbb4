"""Turns a pytest-benchmark JSON file into a markdown table and a PNG plot.

    python benchmarks/report.py benchmarks/results/latest.json [--plot out.png]

Within each benchmark group, every implementation whose name starts with
"compiled" (ours: the compiled kernels, "compiled-bf16" with bfloat16
convolutions) is compared with every other one in the group ("reference",
"pastiche", …): the table gives each median and the speed-up, baseline
median / ours.
"""

import argparse
import json
import sys
from collections import OrderedDict

OURS = "compiled"


def load(path):
    with open(path, encoding="utf-8") as stream:
        data = json.load(stream)
    groups = OrderedDict()
    for bench in data["benchmarks"]:
        implementation = bench["params"].get("implementation", bench["name"])
        groups.setdefault(bench["group"], {})[implementation] = bench["stats"]["median"]
    return data["machine_info"], data.get("datetime", ""), groups


def machine_line(machine, when):
    cpu = machine.get("cpu", {})
    gpu = machine.get("cuda_device")
    return (
        f"{cpu.get('brand_raw', 'unknown CPU')} ({cpu.get('count', '?')} cores), torch {machine.get('torch')}, "
        f"{machine.get('torch_threads')} threads" + (f", GPU {gpu}" if gpu else ", no GPU") + f"; run {when}"
    )


def rows(groups):
    for group, medians in groups.items():
        ours = {name: seconds for name, seconds in medians.items() if name.startswith(OURS)}
        for name, ours_seconds in ours.items():
            label = group if name == OURS else f"{group} [{name}]"
            for baseline, seconds in medians.items():
                if baseline not in ours:
                    yield label, baseline, ours_seconds, seconds, seconds / ours_seconds


def markdown(machine, when, groups) -> str:
    lines = [
        f"Machine: {machine_line(machine, when)}",
        "",
        "| benchmark | ours (ms) | baseline | baseline (ms) | speed-up |",
        "|---|---:|---|---:|---:|",
    ]
    for group, baseline, ours, seconds, ratio in rows(groups):
        ours_text = f"{ours * 1e3:.2f}" if ours else "—"
        ratio_text = f"**{ratio:.2f}×**" if ratio else "—"
        lines.append(f"| {group} | {ours_text} | {baseline} | {seconds * 1e3:.2f} | {ratio_text} |")
    return "\n".join(lines)


def plot(groups, path):
    """Op benchmarks ("op layer SIZEpx bB dtype device"): one panel per size and batch, bars per
    layer and op. Anything else: one bar per comparison."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = [(group.split(), baseline, ratio) for group, baseline, _, _, ratio in rows(groups)]
    op_groups = [d for d in data if len(d[0]) == 6 and d[0][2].endswith("px")]
    if op_groups and len(op_groups) == len(data):
        panels = sorted({(int(g[2][:-2]), g[3], g[4], g[5]) for g, _, _ in op_groups})
        ops = list(dict.fromkeys(g[0] for g, _, _ in op_groups))
        layers = list(dict.fromkeys(g[1] for g, _, _ in op_groups))
        columns = min(3, len(panels))
        figure, axes = plt.subplots(
            (len(panels) + columns - 1) // columns,
            columns,
            squeeze=False,
            figsize=(4.2 * columns, 3.2 * ((len(panels) + columns - 1) // columns)),
            dpi=100,
        )
        ratio_of = {(g[0], g[1], int(g[2][:-2]), g[3], g[4], g[5]): r for g, _, r in op_groups}
        width = 0.8 / len(ops)
        for axis, panel in zip(axes.flat, panels):
            for k, op in enumerate(ops):
                values = [ratio_of.get((op, layer, *panel), 0) for layer in layers]
                axis.bar([x + k * width for x in range(len(layers))], values, width, label=op)
            axis.axhline(1.0, color="black", linewidth=0.8)
            axis.axhline(1.5, color="grey", linestyle=":", linewidth=0.8)
            axis.set_xticks([x + 0.4 - width / 2 for x in range(len(layers))], layers, fontsize=7)
            axis.set_title(f"{panel[0]} px, batch {panel[1][1:]}, {panel[2]} {panel[3]}", fontsize=9)
            axis.set_ylabel("speed-up vs reference", fontsize=8)
        for axis in list(axes.flat)[len(panels) :]:
            axis.axis("off")
        axes.flat[0].legend(fontsize=7)
    else:
        figure, axis = plt.subplots(figsize=(9, 0.3 * len(data) + 1.2), dpi=100)
        axis.barh(range(len(data)), [r for _, _, r in data])
        axis.set_yticks(range(len(data)), [f"{' '.join(g)} vs {b}" for g, b, _ in data], fontsize=7)
        axis.invert_yaxis()
        axis.axvline(1.0, color="black", linewidth=0.8)
        axis.set_xlabel("speed-up of nst_ext (baseline median / ours)")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json")
    parser.add_argument("--plot", default=None, help="write a PNG bar chart of the speed-ups")
    args = parser.parse_args(argv)
    machine, when, groups = load(args.json)
    print(markdown(machine, when, groups))
    if args.plot:
        plot(groups, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
