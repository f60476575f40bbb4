"""What this install has and whether it computes the right thing here: ``nst-ext info`` (the
backends, the build, the device, the weights) and ``nst-ext info --self-test`` (every compiled op
against the pure-PyTorch reference, on every visible device, in each dtype the ops claim, a table
and exit status 1 on any failure), also as ``python -m nst_ext.info [--self-test]``, as
``python -m xformers.info`` is for xformers.

The self-test's oracle is the reference computed in float64 from the same inputs (rounded to the
dtype under test first); each forward runs under both of the compiled forward's algorithms ("own"
and "blas", nst_ext.set_gram_algorithm), and each backward through autograd, so a kernel that is
wrong on this CPU, GPU or driver shows, whichever the per-shape choice would take.
"""

import dataclasses
import sys
from typing import Callable, Dict, List, Optional

import torch

from nst_ext.ops.checks import accumulation_dtype

# The dtypes the ops claim (README, nst_ext.gram_matrix), and how far each may lie from the float64
# oracle, relative to the largest value of the oracle's result. 16-bit inputs are rounded before
# both see them and the forward accumulates them in float32; the backward multiplies in the 16-bit
# dtype by design (csrc/common.h, multiply_symmetric_as_laid: the residual rounded, float32
# accumulation), which costs up to about C rounding errors of 2**-11 (float16) or 2**-8 (bfloat16)
# relative to the largest gradient: 4e-3 is seen at C = 70. A wrong kernel is off by far more.
TOLERANCES = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 2e-2}
# Small odd shapes (B, C, H, W): one channel, odd channels and positions, a batch, more channels than
# a tile, and positions not a multiple of the vector width.
SHAPES = ((1, 1, 1, 1), (2, 5, 7, 3), (1, 33, 9, 11), (3, 70, 5, 13))
# Layouts the ops take as they lie: contiguous, channels-last (what convolutions hand the losses),
# and a strided view.
LAYOUTS = ("contiguous", "channels_last", "strided")
ALGORITHMS = ("own", "blas")


@dataclasses.dataclass
class Check:
    """One op on one device and dtype: its largest error relative to the oracle's largest value,
    over every shape, layout and algorithm, and what failed."""

    op: str
    device: str
    dtype: str
    error: float = 0.0
    failure: str = ""

    @property
    def passed(self) -> bool:
        return not self.failure


def _laid_out(tensor: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last":
        return tensor.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # every other position of a tensor twice as wide
        wide = torch.zeros(*tensor.shape[:-1], tensor.shape[-1] * 2, dtype=tensor.dtype, device=tensor.device)
        wide[..., ::2] = tensor
        return wide[..., ::2]
    return tensor.contiguous()


def _cases(device: torch.device, dtype: torch.dtype, generator: torch.Generator):
    """(features, weights, target) per shape and layout: fresh random inputs, features in [-1, 1]
    rounded to `dtype`, a (H, W) mask of weights in [0, 1] with one zero, a (B, C, C) target."""
    for batch, channels, height, width in SHAPES:
        features = torch.rand(batch, channels, height, width, generator=generator, dtype=torch.float64) * 2 - 1
        weights = torch.rand(height, width, generator=generator, dtype=torch.float64)
        weights.view(-1)[0] = 0.0
        target = torch.rand(batch, channels, channels, generator=generator, dtype=torch.float64) * 0.1
        for layout in LAYOUTS:
            yield (_laid_out(features.to(dtype).to(device), layout), weights.to(device), target.to(device))


def _ops_under_test(nst_ext) -> Dict[str, Callable]:
    """Each op as a function of (features, weights, target, ops module) returning the tensors to
    compare: the forward's result, or the features' gradient of a fixed random functional of it."""

    def gram(f, w, t, ops):
        return ops.gram_matrix(f)

    def style_loss(f, w, t, ops):
        return ops.style_loss(f, t.to(accumulation_dtype(f.dtype)))

    def masked_gram(f, w, t, ops):
        return ops.masked_gram_matrix(f, w.to(accumulation_dtype(f.dtype)))

    def masked_style_loss(f, w, t, ops):
        return ops.masked_style_loss(f, w.to(accumulation_dtype(f.dtype)), t.to(accumulation_dtype(f.dtype)))

    def backward_of(forward):
        def gradient(f, w, t, ops):
            leaf = (f.double() if isinstance(ops, _Float64Reference) else f).detach().requires_grad_(True)
            out = forward(leaf, w, t, ops)
            probe = torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).view_as(out)
            (grad,) = torch.autograd.grad((out * probe).sum(), leaf)
            return grad

        return gradient

    return {
        "gram": gram,
        "style_loss": style_loss,
        "masked_gram": masked_gram,
        "masked_style_loss": masked_style_loss,
        "gram backward": backward_of(gram),
        "style_loss backward": backward_of(style_loss),
        "masked_gram backward": backward_of(masked_gram),
        "masked_style_loss backward": backward_of(masked_style_loss),
    }


class _Float64Reference:
    """The reference ops, run in float64 on the inputs as the op under test saw them."""

    def __init__(self, reference):
        self.reference = reference

    def __getattr__(self, name):
        function = getattr(self.reference, name)
        return lambda *tensors: function(*(tensor.double() for tensor in tensors))


def self_test(devices: Optional[List[str]] = None, seed: int = 0) -> List[Check]:
    """Every compiled op against the float64 reference on each of `devices` (default: the CPU and
    every visible GPU) in each claimed dtype; one :class:`Check` per op, device and dtype. A device
    without compiled kernels is checked too (it then runs the reference, and says so)."""
    import nst_ext
    from nst_ext.ops import dispatch, reference

    devices = devices or ["cpu"] + [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    oracle = _Float64Reference(reference)
    generator = torch.Generator().manual_seed(seed)
    checks = []
    for device in map(torch.device, devices):
        for dtype, tolerance in TOLERANCES.items():
            for name, op in _ops_under_test(nst_ext).items():
                check = Check(name, str(device), str(dtype).replace("torch.", ""))
                checks.append(check)
                for features, weights, target in _cases(device, dtype, generator):
                    expected = op(features, weights, target, oracle)
                    for algorithm in ALGORITHMS:
                        with dispatch.gram_algorithm(algorithm):
                            _compare(
                                check,
                                lambda: op(features, weights, target, nst_ext),
                                expected,
                                tolerance,
                                f"{algorithm}, shape {tuple(features.shape)}",
                            )
    return checks


def _compare(
    check: Check, run: Callable[[], torch.Tensor], expected: torch.Tensor, tolerance: float, case: str
) -> None:
    """Runs the op under test (`run`) and records in `check` its error relative to the largest value
    of `expected`, and the first failure: it raised, gave another shape, NaN, or an error over
    `tolerance`. `case` names the algorithm and shape in the failure."""
    try:
        got = run()
    except Exception as error:  # a kernel that raises is a failure to report
        check.failure = check.failure or f"{case}: raised {type(error).__name__}: {error}"[:160]
        return
    if got.shape != expected.shape:
        check.failure = check.failure or f"{case}: shape {tuple(got.shape)}, not {tuple(expected.shape)}"
        return
    if not got.numel():
        return
    scale = float(expected.abs().max())
    relative = (got.double() - expected).abs().max().item() / max(scale, 1e-30)
    if relative != relative or relative > tolerance:  # NaN too
        check.failure = check.failure or f"{case}: {relative:.2e} > {tolerance:.0e}"
    check.error = relative if relative != relative else max(check.error, relative)


def table(checks: List[Check], backends: dict) -> str:
    """The checks as a table for a terminal: op, device (and its backend), dtype, error, result."""
    rows = [("op", "device", "dtype", "max error", "result")]
    for check in checks:
        backend = backends.get(torch.device(check.device).type, "reference")
        rows.append(
            (
                check.op,
                f"{check.device} ({backend})",
                check.dtype,
                f"{check.error:.1e}",
                "ok" if check.passed else f"FAILED: {check.failure}",
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths)) + "  " + row[4] for row in rows
    )


def report() -> str:
    """``nst-ext info``: the version, the backends and what they were built for, the device, the weights."""
    import nst_ext
    from nst_ext.model.weights import resolve_weights

    info = nst_ext.backend_info()
    lines = [
        f"nst_ext {nst_ext.__version__}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads",
        f"CPU tensors:  {info['cpu']}",
        f"CUDA tensors: {info['cuda']}" + ("" if info["cuda_available"] else " (no GPU visible)"),
    ]
    built = info["built_for"]
    if built:
        lines.append(
            f"kernels built for torch {built.get('torch')}"
            + (
                f", CUDA {built['cuda']} ({built.get('cuda_archs') or 'default architectures'})"
                if built.get("cuda")
                else ", without CUDA kernels"
            )
        )
    if info["load_error"]:
        lines.append(f"extension load error: {info['load_error']}")
    device = "cuda (" + torch.cuda.get_device_name() + ")" if torch.cuda.is_available() else "cpu"
    lines.append(f"default device: {device}")
    weights = resolve_weights()
    lines.append(f"VGG19 weights: {weights.source}, {weights.normalization} input normalisation")
    return "\n".join(lines)


def run(with_self_test: bool) -> int:
    """Prints the report, then with `with_self_test` the self-test's table; 1 where a check failed."""
    import nst_ext

    print(report(), flush=True)
    if not with_self_test:
        return 0
    checks = self_test()
    info = nst_ext.backend_info()
    print()
    print(table(checks, {"cpu": info["cpu"], "cuda": info["cuda"]}))
    failed = [check for check in checks if not check.passed]
    print(
        f"\nself-test: {len(checks) - len(failed)} of {len(checks)} checks passed"
        + (f"; {len(failed)} FAILED" if failed else "")
    )
    return 1 if failed else 0


def main(argv: Optional[List[str]] = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m nst_ext.info", description=__doc__.split("\n\n")[0])
    parser.add_argument("--self-test", action="store_true", help="check every compiled op against the reference")
    return run(parser.parse_args(argv).self_test)


if __name__ == "__main__":
    sys.exit(main())
