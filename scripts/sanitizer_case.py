"""A small run of every CUDA code path of nst_ext, for compute-sanitizer (memcheck, racecheck):
both forward algorithms (our tiles unsplit and split along H·W, fused and not; cuBLAS with its
epilogue), every dtype, NCHW and channels-last features, broadcast and batched targets, and
both backward ops. Exits 0 when every result matches the reference.

    compute-sanitizer --tool memcheck --error-exitcode 1 python3 scripts/sanitizer_case.py
"""

import torch

import nst_ext
from nst_ext.ops import reference

assert nst_ext.backend_info()["cuda"] == "compiled CUDA", nst_ext.backend_info()
# (B, C, H, W): C across the 64-channel tile edge; short and long H·W (the latter split).
SHAPES = [(2, 70, 5, 7), (1, 64, 64, 80)]
for algorithm in ("own", "blas"):
    with nst_ext.gram_algorithm(algorithm):
        for shape in SHAPES:
            for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
                for channels_last in (False, True):
                    x = torch.rand(shape, device="cuda").to(dtype)
                    if channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    x.requires_grad_(True)
                    accumulate = torch.float64 if dtype == torch.float64 else torch.float32
                    for target in (
                        torch.rand(shape[1], shape[1], device="cuda", dtype=accumulate),
                        torch.rand(shape[0], shape[1], shape[1], device="cuda", dtype=accumulate),
                    ):
                        loss = nst_ext.style_loss(x, target)
                        (grad,) = torch.autograd.grad(loss, x)
                        expected = reference.style_loss(x.detach().double(), target.double())
                        assert torch.allclose(loss.double(), expected, rtol=1e-3), (
                            algorithm,
                            shape,
                            dtype,
                            loss,
                            expected,
                        )
                        assert torch.isfinite(grad).all()
                    gram = nst_ext.gram_matrix(x)
                    (grad,) = torch.autograd.grad(gram.sum(), x)
                    expected = reference.gram_matrix(x.detach().double())
                    assert torch.allclose(gram.double(), expected, rtol=1e-3, atol=1e-5), (algorithm, shape, dtype)
torch.cuda.synchronize()
print("sanitizer case: every CUDA path ran and matched the reference")
