"""The summary of scripts/gpu_check.sh: RESULTS_DIR/summary.md (for people) and summary.json,
from the parts' statuses (parts.tsv), the machine (machine.txt) and the benchmarks' JSON.
Exit status 0 when every part that ran passed, 1 otherwise.

    python3 scripts/gpu_check_summary.py RESULTS_DIR TOTAL_SECONDS
"""

import json
import os
import statistics
import sys


def read_json(path):
    try:
        with open(path) as source:
            return json.load(source)
    except (OSError, ValueError):
        return None


def ops_lines(ops):
    """Per dtype and op: the compiled op's speed-up over torch.bmm's Gram and over the reference
    (worst and median over layers, sizes and layouts), and which algorithm auto chose."""
    if not ops or not ops.get("rows"):
        return ["(no kernel benchmark results)"]
    lines = [
        "| op | dtype | vs torch.bmm: worst / median | vs reference: worst / median | rows |",
        "|---|---|---:|---:|---:|",
    ]
    groups = {}
    for row in ops["rows"]:
        groups.setdefault((row["op"], row["dtype"]), []).append(row["seconds"])
    for (op, dtype), rows in sorted(groups.items()):

        def ratios(name):
            values = [r[name] / r["compiled"] for r in rows if name in r]
            return f"{min(values):.2f}x / {statistics.median(values):.2f}x" if values else "-"

        lines.append(f"| {op} | {dtype} | {ratios('torch.bmm')} | {ratios('reference')} | {len(rows)} |")
    own = sum(1 for c in ops.get("choices", []) if c["algorithm"] == "own")
    lines.append(
        f"\nauto chose our own kernel for {own} of {len(ops.get('choices', []))} shapes (cuBLAS for the rest)."
    )
    if not ops.get("complete", True):
        lines.append("The kernel benchmark stopped at its time limit: some rows are missing.")
    return lines


def step_lines(step):
    if not step or not step.get("benchmarks"):
        return ["(no step benchmark results)"]
    lines = ["| group | implementation | median ms |", "|---|---|---:|"]
    for bench in sorted(step["benchmarks"], key=lambda b: (b["group"], b["stats"]["median"])):
        implementation = bench["name"].split("-", 1)[-1].rstrip("]")
        lines.append(f"| {bench['group']} | {implementation} | {bench['stats']['median'] * 1e3:.2f} |")
    return lines


# The step benchmark's implementation whose convolutions run in each kernel dtype.
STEP_FOR_DTYPE = {"float32": "compiled", "bfloat16": "compiled-bf16"}


def share_lines(ops, step):
    """What the compiled style losses are of a whole step: per size and dtype, the style layers'
    ``style_loss+backward`` (compiled, channels-last, as the network hands them on a GPU) summed,
    over the step benchmark's median for the same size and convolution dtype."""
    if not ops or not ops.get("rows") or not step or not step.get("benchmarks"):
        return ["(needs both the kernel and the step benchmark)"]
    steps = {
        (bench["params"].get("step_size"), bench["params"].get("implementation")): bench["stats"]["median"]
        for bench in step["benchmarks"]
        if "params" in bench
    }
    losses = {}
    for row in ops["rows"]:
        if row["op"] == "style_loss+backward" and row.get("layout") == "channels_last" and "compiled" in row["seconds"]:
            key = (row["size"], row["dtype"])
            losses.setdefault(key, []).append(row["seconds"]["compiled"])
    lines = [
        "| px | dtype | style losses, forward and backward (ms) | step (ms) | share |",
        "|---:|---|---:|---:|---:|",
    ]
    for (size, dtype), seconds in sorted(losses.items()):
        whole = steps.get((size, STEP_FOR_DTYPE.get(dtype)))
        if whole:
            lines.append(
                f"| {size} | {dtype} | {sum(seconds) * 1e3:.3f} ({len(seconds)} layers) | {whole * 1e3:.2f} "
                f"| {sum(seconds) / whole:.1%} |"
            )
    return lines if len(lines) > 2 else ["(no size and dtype in both benchmarks)"]


def e2e_lines(e2e):
    if not e2e or not e2e.get("rows"):
        return ["(no end-to-end results)"]
    lines = [
        "| size | run | steps per stage | optimisation s | whole call s | peak MiB |",
        "|---:|---|---|---:|---:|---:|",
    ]
    for row in e2e["rows"]:
        lines.append(
            f"| {row['size']} | {row.get('run', '')} | {row['steps']} | {row.get('optimisation_seconds', 0):.2f} "
            f"| {row['wall_seconds']:.2f} | {row['peak_mib']:.0f} |"
        )
    return lines


def main():
    results, total_seconds = sys.argv[1], int(sys.argv[2])
    parts = []
    with open(os.path.join(results, "parts.tsv")) as source:
        for line in source:
            name, status, seconds, detail = (line.rstrip("\n").split("\t") + [""] * 4)[:4]
            parts.append({"part": name, "status": status, "seconds": int(seconds or 0), "detail": detail})
    with open(os.path.join(results, "machine.txt")) as source:
        machine = source.read().strip()
    ok = all(p["status"] in ("passed", "not run") for p in parts)
    ops, step, e2e = (read_json(os.path.join(results, name)) for name in ("ops.json", "step.json", "e2e.json"))

    md = [
        "# nst_ext GPU check",
        "",
        "```",
        machine,
        "```",
        "",
        f"Overall: **{'passed' if ok else 'FAILED'}** in {total_seconds} s.",
        "",
        "| part | status | seconds | detail |",
        "|---|---|---:|---|",
    ]
    md += [f"| {p['part']} | {p['status']} | {p['seconds']} | {p['detail']} |" for p in parts]
    for p in parts:
        if p["status"] in ("failed", "timed out"):
            log = os.path.join(results, p["part"] + ".log")
            try:
                with open(log, errors="replace") as source:
                    lines = source.read().splitlines()
            except OSError:
                lines = []
            failures = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
            md += ["", f"## {p['part']}: {p['status']} (last lines of {p['part']}.log)", "", "```"]
            md += (failures[:60] + ["..."] if failures else []) + lines[-40:] + ["```"]
    md += ["", "## Kernels (compiled op vs torch.bmm's Gram and the reference)", ""] + ops_lines(ops)
    md += ["", "## End to end (default settings)", ""] + e2e_lines(e2e)
    md += ["", "## One stylization step (median)", ""] + step_lines(step)
    md += ["", "## The style losses' share of a step", ""] + share_lines(ops, step)
    with open(os.path.join(results, "summary.md"), "w") as out:
        out.write("\n".join(md) + "\n")
    with open(os.path.join(results, "summary.json"), "w") as out:
        json.dump({"passed": ok, "seconds": total_seconds, "machine": machine, "parts": parts}, out, indent=1)
    print("\n".join(md))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
