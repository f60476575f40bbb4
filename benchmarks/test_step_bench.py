"""One stylization step end to end (VGG19 forward and backward plus every loss, and the
L-BFGS update), for nst_ext with its compiled kernels, nst_ext with the pure-PyTorch
reference, and the peer package pastiche, at equal settings: the same image size, the
content layer relu4_2, the style layers relu1_1 … relu5_1, average pooling and L-BFGS
with one function evaluation per step. All three are measured in the same run.

    pytest benchmarks/test_step_bench.py --benchmark-only
"""

import pytest
import torch

import nst_ext
from nst_ext.plan.options import cpu_has_native_bfloat16

from _common import CONTENT, STYLE, STYLE_LAYERS, lbfgs_step

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def nst_ext_step(size, device, mixed_precision=False):
    return lbfgs_step(
        nst_ext.Stylizer(
            size=size,
            device=device,
            pooling="avg",
            mixed_precision=mixed_precision,
            style_layers=list(STYLE_LAYERS),
            content_layers=["relu4_2"],
        )
    )


def pastiche_step(size, device):
    from pastiche.pastiche import PasticheArtist

    artist = PasticheArtist(
        CONTENT,
        [STYLE],
        pooling="avg",
        optimizer="lbfgs",
        device=device,
        size=size,
        content_layers=["block4_relu2"],
        style_layers=[f"block{i}_relu1" for i in range(1, 6)],
    )

    def step():
        artist.draw()
        if device == "cuda":
            torch.cuda.synchronize()

    return step


def pytest_generate_tests(metafunc):
    if "step_size" in metafunc.fixturenames:
        metafunc.parametrize("step_size", [int(s) for s in metafunc.config.getoption("--step-sizes").split(",")])


@pytest.mark.parametrize("implementation", ["compiled", "compiled-bf16", "reference", "pastiche"])
@pytest.mark.parametrize("device", DEVICES)
def test_stylization_step(benchmark, step_size, device, implementation):
    """compiled-bf16 is nst_ext's mixed precision (bfloat16 convolutions; the default on GPUs):
    not equal settings, reported beside the float32 comparison."""
    size = step_size
    benchmark.group = f"stylization step {size}px {device}"
    benchmark.extra_info.update(size=size, device=device)
    if implementation == "compiled-bf16" and device == "cpu" and not cpu_has_native_bfloat16():
        pytest.skip("this CPU has no native bfloat16")
    if implementation == "pastiche":
        step = pastiche_step(size, device)
    else:
        with nst_ext.reference_backend(implementation == "reference"):
            step = nst_ext_step(size, device, mixed_precision=implementation == "compiled-bf16")
    with nst_ext.reference_backend(implementation == "reference"):
        step()  # warm-up: allocator, oneDNN/cuDNN algorithm choice
        benchmark.pedantic(step, rounds=5 if size <= 256 else 3, iterations=1, warmup_rounds=1)
