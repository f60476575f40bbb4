"""Where one stylization step spends its time: torch.profiler over a few
L-BFGS steps of the default objective, operator self-times grouped by kind.

    python benchmarks/profile_step.py [--size 512] [--device cpu] [--steps 3] [--mixed-precision]
"""

import argparse
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

import nst_ext

from _common import lbfgs_step

# Operator name -> kind; the first matching prefix wins, the rest is "other".
KINDS = [
    ("convolution (VGG forward)", ("aten::mkldnn_convolution", "aten::cudnn_convolution", "aten::_convolution")),
    ("convolution (VGG backward)", ("aten::convolution_backward", "aten::cudnn_convolution_backward")),
    # torch.library books a custom op's forward kernel as self time of its autograd wrapper.
    ("Gram / style loss forward (nst_ext kernels)", ("nst_ext::", "GeneratedBackwardFor_nst_ext")),
    ("style-loss backward GEMM (inside nst_ext)", ("aten::bmm",)),
    # The BLAS forward Gram of reduced-precision features on the CPU: float32 slabs summed.
    ("Gram forward, BLAS path (inside nst_ext)", ("aten::baddbmm",)),
    ("pooling", ("aten::avg_pool2d", "aten::max_pool2d")),
    ("ReLU", ("aten::relu", "aten::clamp_min", "aten::threshold_backward")),
    (
        "data movement (copies, casts, layout)",
        (
            "aten::copy_",
            "aten::to",
            "aten::_to_copy",
            "aten::clone",
            "aten::contiguous",
            "aten::empty",
            "aten::zero_",
            "aten::fill_",
        ),
    ),
    (
        "L-BFGS update (dot, add, mul …)",
        (
            "aten::dot",
            "aten::add",
            "aten::mul",
            "aten::div",
            "aten::neg",
            "aten::sub",
            "aten::lerp",
            "aten::addcmul",
            "aten::abs",
            "aten::sum",
            "aten::max",
            "aten::cat",
            "aten::view",
        ),
    ),
]


def kind_of(name: str) -> str:
    for kind, prefixes in KINDS:
        if name.startswith(prefixes):
            return kind
    return "other (content/TV losses, autograd bookkeeping)"


def main():
    nst_ext.allow_process_effects()  # measured as the nst-ext command runs (nst_ext.plan.effects)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--mixed-precision", action="store_true")
    args = parser.parse_args()
    stylizer = nst_ext.Stylizer(size=args.size, device=args.device, mixed_precision=args.mixed_precision)
    step = lbfgs_step(stylizer)
    for _ in range(2):  # warm-up, and an L-BFGS history to update
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if stylizer.device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        for _ in range(args.steps):
            step()
    device_time = stylizer.device.type == "cuda"
    totals = defaultdict(float)
    for event in profiler.key_averages():
        seconds = (event.self_device_time_total if device_time else event.self_cpu_time_total) / 1e6
        totals[kind_of(event.key)] += seconds
    overall = sum(totals.values())
    precision = "bfloat16 convolutions" if args.mixed_precision else "float32"
    print(
        f"{args.size} px, {stylizer.device}, {precision}, {torch.get_num_threads()} threads: "
        f"{overall / args.steps * 1e3:.0f} ms of operator {'GPU' if device_time else 'CPU'} time per step"
    )
    print("| kind | ms per step | share |")
    print("|---|---:|---:|")
    for kind, seconds in sorted(totals.items(), key=lambda item: -item[1]):
        print(f"| {kind} | {seconds / args.steps * 1e3:.1f} | {seconds / overall:.1%} |")


if __name__ == "__main__":
    main()
