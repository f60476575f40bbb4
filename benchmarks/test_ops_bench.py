"""Compiled Gram / style-loss kernels against the pure-PyTorch reference.

Each benchmark group holds one op, one VGG19 layer shape, one image size, batch,
dtype and device, measured for both implementations in the same run:
    pytest benchmarks/test_ops_bench.py --benchmark-only [--sizes 512 --batches 1]
"""

import pytest
import torch

import nst_ext
from nst_ext.ops import reference

from _common import STYLE_LAYERS, feature_shape

IMPLEMENTATIONS = {
    "compiled": (nst_ext.gram_matrix, nst_ext.style_loss),
    "reference": (reference.gram_matrix, reference.style_loss),
}
DEVICE_DTYPES = [("cpu", torch.float32)]
if torch.cuda.is_available():
    DEVICE_DTYPES += [("cuda", torch.float32), ("cuda", torch.bfloat16), ("cuda", torch.float16)]


def pytest_generate_tests(metafunc):
    if "size" in metafunc.fixturenames:
        sizes = [int(s) for s in metafunc.config.getoption("--sizes").split(",")]
        batches = [int(b) for b in metafunc.config.getoption("--batches").split(",")]
        metafunc.parametrize("size", sizes)
        metafunc.parametrize("batch", batches)


def synchronize(device):
    if device == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("implementation", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES, ids=lambda v: str(v).replace("torch.", ""))
@pytest.mark.parametrize("layer", STYLE_LAYERS)
@pytest.mark.parametrize("op", ["gram", "gram+backward", "style_loss", "style_loss+backward"])
def test_op(benchmark, op, layer, size, batch, device, dtype, implementation):
    if nst_ext.backend_info()[device] == "reference" and implementation == "compiled":
        pytest.skip(f"no compiled kernels for {device}")
    shape = feature_shape(layer, size, batch)
    benchmark.group = f"{op} {layer} {size}px b{batch} {str(dtype).replace('torch.', '')} {device}"
    benchmark.extra_info.update(op=op, layer=layer, size=size, batch=batch, shape=list(shape))
    gram_matrix, style_loss = IMPLEMENTATIONS[implementation]
    features = torch.randn(shape, device=device).relu_().to(dtype)
    target = reference.gram_matrix(torch.randn(shape[1:], device=device).relu_())
    backward = op.endswith("+backward")
    if backward:
        features.requires_grad_(True)

    def run():
        if op.startswith("gram"):
            out = gram_matrix(features)
            if backward:
                out.sum().backward()
        else:
            out = style_loss(features, target)
            if backward:
                out.backward()
        if backward:
            features.grad = None
        synchronize(device)

    run()  # warm-up: allocator, kernel selection, cuBLAS handles
    benchmark(run)
