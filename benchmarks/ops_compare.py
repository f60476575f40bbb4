"""The Gram and style-loss ops of nst_ext against the pure-PyTorch reference and a plain
``torch.bmm`` Gram, on every VGG19 style-layer shape, per dtype and layout, in one run.

Each row is one op, layer, size, dtype and layout; each column one implementation, as the
median of `--repeats` timed runs after warm-up. On a GPU a run is the replay of a CUDA graph of
`--graph-calls` calls, each after a write of twice the L2 cache (so every call starts cold, as in
a step, where the network's other layers evict the features), timed by CUDA events, less the same
graph's flushes alone, per call: a single call between two events would time the host's launch
overhead for these short kernels. Where a graph cannot be captured the cell falls back to events
around one call (marked in the JSON). On the CPU a run is one call on a wall clock.
    compiled   nst_ext's op as a run uses it (the per-shape choice of "auto")
    own, blas  the two algorithms it chooses between, forced
    reference  nst_ext.ops.reference (the test oracle; widens half/bfloat16 to float32 first)
    torch.bmm  F Fᵀ / n written the obvious way, in the features' own dtype (Gram only)
Ops: ``gram`` (forward), ``style_loss`` (forward), ``style_loss+backward``, and the masked style
loss of spatial control with its backward, ``masked_style_loss+backward`` (a soft mask of random
weights; nst_ext.masked_style_loss against nst_ext.ops.reference.masked_style_loss).

    python benchmarks/ops_compare.py --device cuda --sizes 512,1024 --json ops.json --markdown ops.md
"""

import argparse
import json
import statistics
import sys
import time

import torch

import nst_ext
from nst_ext.ops import reference

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import STYLE_LAYERS, feature_shape  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
OPS = ("gram", "style_loss", "style_loss+backward", "masked_style_loss+backward")


def bmm_gram(features):
    flat = features.flatten(2)
    return flat @ flat.transpose(1, 2) / flat.shape[-1]


def implementations(op, weights=None):
    """name -> (function of features and target, gram algorithm or None); `weights` ``(H, W)``: the
    mask of the masked op."""
    if op == "gram":
        return {
            "compiled": (lambda x, t: nst_ext.gram_matrix(x), "auto"),
            "own": (lambda x, t: nst_ext.gram_matrix(x), "own"),
            "blas": (lambda x, t: nst_ext.gram_matrix(x), "blas"),
            "reference": (lambda x, t: reference.gram_matrix(x), None),
            "torch.bmm": (lambda x, t: bmm_gram(x), None),
        }
    loss = {
        "compiled": (nst_ext.style_loss, "auto"),
        "own": (nst_ext.style_loss, "own"),
        "blas": (nst_ext.style_loss, "blas"),
        "reference": (reference.style_loss, None),
    }
    if op.startswith("masked"):

        def masked(x, t):
            return nst_ext.masked_style_loss(x, weights, t)

        loss = {
            "compiled": (masked, "auto"),
            "own": (masked, "own"),
            "blas": (masked, "blas"),
            "reference": (lambda x, t: reference.masked_style_loss(x, weights, t), None),
        }
    if op == "style_loss":
        return loss

    def with_backward(function):
        def run(x, t):
            function(x, t).backward()
            x.grad = None

        return run

    return {name: (with_backward(function), algorithm) for name, (function, algorithm) in loss.items()}


def l2_flush_buffer():
    """A buffer twice the GPU's L2 cache; writing it evicts whatever the L2 held."""
    l2_bytes = getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "L2_cache_size", 0) or 64 << 20
    return torch.empty(2 * l2_bytes // 4, dtype=torch.int32, device="cuda")


def graph_median_seconds(run, repeats, calls, flush):
    """Median seconds per call of `run` over `repeats` replays of a CUDA graph of `calls` calls, each
    after an L2 flush, less the replays of a graph of the flushes alone."""
    side = torch.cuda.Stream()  # warm-up off the capture stream, as torch.cuda.graphs asks
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            run()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graphs = {"calls": torch.cuda.CUDAGraph(), "flushes": torch.cuda.CUDAGraph()}
    for name, graph in graphs.items():
        with torch.cuda.graph(graph):
            for _ in range(calls):
                flush.zero_()
                if name == "calls":
                    run()
    medians = {}
    for name, graph in graphs.items():
        graph.replay()  # warm replay
        samples = []
        for _ in range(repeats):
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            stop.record()
            stop.synchronize()
            samples.append(start.elapsed_time(stop) / 1e3)
        medians[name] = statistics.median(samples)
    return max(medians["calls"] - medians["flushes"], 0.0) / calls


def median_seconds(run, device, repeats, graph_calls=0, flush=None):
    """(seconds, timing): the median per call, and how it was timed ("graph", "events", "wall")."""
    if device == "cuda" and graph_calls > 0:
        try:
            return graph_median_seconds(run, repeats, graph_calls, flush), "graph"
        except RuntimeError as error:  # an op that cannot be captured: events around single calls
            print(f"ops_compare: no CUDA graph ({str(error).splitlines()[0]}); timing single calls", file=sys.stderr)
            torch.cuda.synchronize()
    for _ in range(2):  # warm-up: the per-shape choice, allocator, library handles
        run()
    samples = []
    for _ in range(repeats):
        if device == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            stop.record()
            stop.synchronize()
            samples.append(start.elapsed_time(stop) / 1e3)
        else:
            started = time.perf_counter()
            run()
            samples.append(time.perf_counter() - started)
    return statistics.median(samples), "events" if device == "cuda" else "wall"


def measure(device, sizes, dtypes, layouts, layers, repeats, deadline, graph_calls=0):
    rows = []
    flush = l2_flush_buffer() if device == "cuda" and graph_calls > 0 else None
    for size in sizes:
        for layer in layers:
            shape = feature_shape(layer, size, 1)
            for dtype_name in dtypes:
                for layout in layouts:
                    for op in OPS:
                        if time.monotonic() > deadline:
                            return rows, False
                        features = torch.randn(shape, device=device).relu_().to(DTYPES[dtype_name])
                        if layout == "channels_last":
                            features = features.contiguous(memory_format=torch.channels_last)
                        features.requires_grad_(op.endswith("backward"))
                        target = reference.gram_matrix(torch.randn(shape[1:], device=device).relu_())
                        row = {
                            "op": op,
                            "layer": layer,
                            "size": size,
                            "shape": list(shape),
                            "dtype": dtype_name,
                            "layout": layout,
                            "device": device,
                            "seconds": {},
                            "timing": {},
                        }
                        weights = torch.rand(shape[2:], device=device)
                        for name, (function, algorithm) in implementations(op, weights).items():
                            with nst_ext.gram_algorithm(algorithm or "auto"):
                                row["seconds"][name], row["timing"][name] = median_seconds(
                                    lambda: function(features, target), device, repeats, graph_calls, flush
                                )
                        rows.append(row)
    return rows, True


def markdown(rows, machine):
    names = ["compiled", "own", "blas", "reference", "torch.bmm"]
    timings = sorted({how for row in rows for how in row.get("timing", {}).values()})
    lines = [
        f"Machine: {machine}. Median of each cell's runs, in microseconds per call (timed: "
        f"{', '.join(timings) or '-'}); **speed-up** = the best of reference and torch.bmm divided by "
        "compiled; **own vs bmm** = torch.bmm divided by our own kernel (Gram rows).",
        "",
        "| op | layer | px | dtype | layout | " + " | ".join(names) + " | speed-up | own vs bmm |",
        "|---|---|---:|---|---|" + "---:|" * (len(names) + 2),
    ]
    for row in rows:
        seconds = row["seconds"]
        cells = [f"{seconds[n] * 1e6:.0f}" if n in seconds else "" for n in names]
        baseline = min(seconds[n] for n in ("reference", "torch.bmm") if n in seconds)
        own_vs_bmm = f"{seconds['torch.bmm'] / seconds['own']:.2f}x" if "torch.bmm" in seconds else ""
        lines.append(
            f"| {row['op']} | {row['layer']} | {row['size']} | {row['dtype']} | {row['layout']} | "
            + " | ".join(cells)
            + f" | {baseline / seconds['compiled']:.2f}x | {own_vs_bmm} |"
        )
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", default="512,1024")
    parser.add_argument("--dtypes", default=None, help="default: all three on CUDA, float32 on the CPU")
    parser.add_argument("--layouts", default="nchw,channels_last")
    parser.add_argument("--layers", default=",".join(STYLE_LAYERS))
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--graph-calls",
        type=int,
        default=20,
        help="calls per CUDA graph on a GPU, each after an L2 flush (0: events around single calls)",
    )
    parser.add_argument("--seconds", type=float, default=600, help="stop after this long (rows done are kept)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args()
    dtypes = (args.dtypes or ("float32,bfloat16,float16" if args.device == "cuda" else "float32")).split(",")
    machine = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    machine += f", torch {torch.__version__}"
    rows, complete = measure(
        args.device,
        [int(s) for s in args.sizes.split(",")],
        dtypes,
        args.layouts.split(","),
        args.layers.split(","),
        args.repeats,
        time.monotonic() + args.seconds,
        args.graph_calls,
    )
    report = {"machine": machine, "complete": complete, "rows": rows, "choices": nst_ext.gram_algorithm_choices()}
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=1)
    text = markdown(rows, machine) + ("" if complete else "\n(stopped at the time limit: rows missing)\n")
    if args.markdown:
        with open(args.markdown, "w") as out:
            out.write(text)
    print(text)


if __name__ == "__main__":
    main()
