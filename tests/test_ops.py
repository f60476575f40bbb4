"""The compiled Gram and style-loss ops against the pure-PyTorch reference."""

import json
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

import nst_ext
from nst_ext.ops import dispatch, reference

# (B, C, H, W): C = 1 and 3, H*W = 1, H*W prime (97, 127), C across the 64-channel
# block boundary, and shapes long enough in H*W for the kernels to split that axis.
SHAPES = [
    (1, 1, 1, 1),
    (1, 1, 5, 7),
    (3, 3, 1, 1),
    (2, 3, 1, 97),
    (1, 5, 127, 1),
    (2, 65, 3, 5),
    (1, 130, 7, 11),
    (3, 64, 61, 67),
    (1, 200, 37, 41),
]
CLAIMED_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
# Relative tolerance of each dtype against a float64 reference computed on the same values.
RTOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 1e-4, torch.bfloat16: 1e-4}


def features_like_vgg(shape, device, dtype=torch.float64):
    """Non-negative activations with a spread like VGG's relu outputs."""
    return (
        (torch.randn(shape, dtype=torch.float64) * 3)
        .relu_()
        .add_(torch.rand(shape, dtype=torch.float64))
        .to(device, dtype)
    )


def assert_close(actual, expected, seed, rtol=1e-10, atol=None):
    scale = expected.abs().max().item() if expected.numel() else 1.0
    torch.testing.assert_close(
        actual,
        expected,
        rtol=rtol,
        atol=(atol if atol is not None else rtol * max(scale, 1e-12)),
        msg=lambda m: f"{m}\n(torch seed {seed})",
    )


@pytest.mark.parametrize("shape", SHAPES)
def test_gram_matches_reference_float64(compiled, seed, shape):
    x = features_like_vgg(shape, compiled)
    assert_close(nst_ext.gram_matrix(x), reference.gram_matrix(x), seed)


@pytest.mark.parametrize("shape", [(1, 4, 5), (7, 9, 11), (64, 13, 13)])
def test_gram_of_3d_features_is_2d(compiled, seed, shape):
    x = features_like_vgg(shape, compiled)
    out = nst_ext.gram_matrix(x)
    assert out.shape == (shape[0], shape[0])
    assert_close(out, reference.gram_matrix(x.unsqueeze(0))[0], seed)
    target = torch.rand(shape[0], shape[0], dtype=x.dtype, device=compiled)
    assert_close(nst_ext.style_loss(x, target), reference.style_loss(x.unsqueeze(0), target), seed)


@pytest.mark.parametrize(
    "make_view",
    [
        lambda x: x.transpose(2, 3),
        lambda x: x[:, ::2, 1:, ::3],
        lambda x: x.contiguous(memory_format=torch.channels_last),
        lambda x: x.expand(3, -1, -1, -1),
        lambda x: torch.cat([x, x + 1]).permute(1, 0, 2, 3),
    ],
    ids=["transposed", "sliced", "channels_last", "expanded", "permuted"],
)
def test_non_contiguous_inputs(compiled, seed, make_view):
    base = features_like_vgg((1, 70, 19, 23), compiled)
    view = make_view(base)
    assert not view.is_contiguous()
    target = reference.gram_matrix(features_like_vgg(view.shape, compiled))
    assert_close(nst_ext.gram_matrix(view), reference.gram_matrix(view), seed)
    assert_close(nst_ext.style_loss(view, target[0]), reference.style_loss(view, target[0]), seed)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", CLAIMED_DTYPES)
# (3, 48, 7, 9): on a CPU with AVX512-BF16, bfloat16 channels-last features with a multiple of 16
# channels take the pair kernel (gram_cpu.cpp): 48 = a 32-channel tile and a 16-channel one, an
# odd number of positions (the last pair half empty), a batch.
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 64, 40, 40), (2, 130, 9, 13), (3, 48, 7, 9)])
def test_every_claimed_dtype(compiled, seed, dtype, shape, layout):
    x = features_like_vgg(shape, compiled, dtype)
    if layout == "channels_last":  # what cuDNN's channels-last convolutions hand the losses
        x = x.contiguous(memory_format=torch.channels_last)
        assert not x.is_contiguous()
    exact = x.double()  # the same values, in float64
    gram = nst_ext.gram_matrix(x)
    assert gram.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert_close(gram.double(), reference.gram_matrix(exact), seed, rtol=RTOL[dtype])

    target = reference.gram_matrix(features_like_vgg(shape, compiled)).to(gram.dtype)
    x.requires_grad_(True)
    loss = nst_ext.style_loss(x, target)
    assert loss.dtype == gram.dtype and loss.dim() == 0
    (grad,) = torch.autograd.grad(loss, x)
    assert grad.dtype == dtype and grad.shape == x.shape
    # The gradient keeps the channels-last layout: the kernels never copied the features to NCHW.
    assert grad.is_contiguous(
        memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format
    )

    exact.requires_grad_(True)
    expected_loss = reference.style_loss(exact, target.double())
    (expected_grad,) = torch.autograd.grad(expected_loss, exact)
    if layout == "channels_last":  # the reference's own channels-last path: the NCHW product, a CL gradient
        assert expected_grad.is_contiguous(memory_format=torch.channels_last)
        assert_close(reference.gram_matrix(exact), reference.gram_matrix(exact.detach().contiguous()), seed)
    assert_close(loss.double(), expected_loss, seed, rtol=RTOL[dtype] * 10)
    # A reduced-precision gradient is rounded once to its dtype.
    grad_rtol = {torch.float16: 2e-3, torch.bfloat16: 1e-2}.get(dtype, RTOL[dtype] * 10)
    assert_close(grad.double(), expected_grad, seed, rtol=grad_rtol)


def test_half_precision_gram_does_not_overflow(compiled, seed):
    x = torch.full((1, 8, 32, 32), 300.0, device=compiled, dtype=torch.float16)
    gram = nst_ext.gram_matrix(x)
    assert gram.dtype == torch.float32
    assert torch.isfinite(gram).all() and torch.allclose(gram, torch.full_like(gram, 90000.0))


@pytest.mark.parametrize("target_shape", ["CC", "1CC", "BCC"])
@pytest.mark.parametrize("shape", [(1, 3, 5, 7), (3, 65, 9, 10), (2, 64, 120, 130)])
def test_style_loss_and_gradients_match_reference(compiled, seed, shape, target_shape):
    B, C = shape[0], shape[1]
    target_dims = {"CC": (C, C), "1CC": (1, C, C), "BCC": (B, C, C)}[target_shape]
    x = features_like_vgg(shape, compiled).requires_grad_(True)
    target = (
        reference.gram_matrix(features_like_vgg((target_dims[0] if len(target_dims) == 3 else 1, C, 6, 5), compiled))
        .reshape(target_dims)
        .clone()
        .requires_grad_(True)
    )

    loss = nst_ext.style_loss(x, target)
    grads = torch.autograd.grad(loss, (x, target))
    expected_loss = reference.style_loss(x, target)
    expected_grads = torch.autograd.grad(expected_loss, (x, target))
    assert_close(loss, expected_loss, seed)
    assert_close(grads[0], expected_grads[0], seed)
    assert_close(grads[1], expected_grads[1], seed)


def test_gram_gradient_matches_reference(compiled, seed):
    x = features_like_vgg((2, 70, 11, 13), compiled).requires_grad_(True)
    weights = torch.randn(2, 70, 70, dtype=torch.float64, device=compiled)  # not symmetric
    (grad,) = torch.autograd.grad((nst_ext.gram_matrix(x) * weights).sum(), x)
    (expected,) = torch.autograd.grad((reference.gram_matrix(x) * weights).sum(), x)
    assert_close(grad, expected, seed)


def test_gradcheck(compiled, seed):
    x = torch.rand(2, 3, 4, 5, dtype=torch.float64, device=compiled, requires_grad=True)
    target = torch.rand(3, 3, dtype=torch.float64, device=compiled, requires_grad=True)
    batched_target = torch.rand(2, 3, 3, dtype=torch.float64, device=compiled, requires_grad=True)
    assert torch.autograd.gradcheck(nst_ext.gram_matrix, (x,))
    assert torch.autograd.gradcheck(nst_ext.style_loss, (x, target))
    assert torch.autograd.gradcheck(nst_ext.style_loss, (x, batched_target))
    assert torch.autograd.gradcheck(nst_ext.gram_matrix, (x[0],))


@pytest.mark.filterwarnings("error")  # no backward may fall back to autograd's deprecated "not implemented"
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_second_derivatives(compiled, seed, layout):
    """gradgradcheck of every op, the backward ops' own autograd (nst_ext.ops.registrations) included:
    through the Gram, the loss (with the target differentiated), the residual output, and the masked
    ops with per-picture and broadcast weights, one picture's region empty."""
    x = torch.rand(2, 3, 4, 5, dtype=torch.float64, device=compiled)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    target = torch.rand(3, 3, dtype=torch.float64, device=compiled, requires_grad=True)
    per_picture = soft_mask((2, 4, 5), compiled)
    per_picture[1] = 0
    broadcast = soft_mask((1, 4, 5), compiled)
    residual_weights = torch.randn(2, 3, 3, dtype=torch.float64, device=compiled)

    def loss_and_weighted_residual(features, target_gram):
        loss, residual = torch.ops.nst_ext.style_loss(features, target_gram)
        return loss + (residual * residual_weights).sum()

    assert torch.autograd.gradgradcheck(nst_ext.gram_matrix, (x,))
    assert torch.autograd.gradgradcheck(nst_ext.style_loss, (x, target))
    assert torch.autograd.gradgradcheck(loss_and_weighted_residual, (x, target))
    for weights in (per_picture, broadcast):
        assert torch.autograd.gradgradcheck(lambda f: nst_ext.masked_gram_matrix(f, weights), (x,))
        assert torch.autograd.gradgradcheck(lambda f, t: nst_ext.masked_style_loss(f, weights, t), (x, target))


def test_gradient_through_residual_alone(compiled, seed):
    """When only the residual is used, the loss's product is skipped and the gradient still matches."""
    x = features_like_vgg((2, 9, 5, 6), compiled).requires_grad_(True)
    target = torch.rand(9, 9, dtype=torch.float64, device=compiled)
    weights = torch.randn(2, 9, 9, dtype=torch.float64, device=compiled)
    _, residual = torch.ops.nst_ext.style_loss(x, target)
    (grad,) = torch.autograd.grad((residual * weights).sum(), x)
    (expected,) = torch.autograd.grad(((reference.gram_matrix(x) - target) * weights).sum(), x)
    assert_close(grad, expected, seed)


def test_gradcheck_through_residual_output(compiled, seed):
    """The op's second output (the residual G - A) is differentiable too."""
    x = torch.rand(2, 3, 4, 5, dtype=torch.float64, device=compiled, requires_grad=True)
    target = torch.rand(1, 3, 3, dtype=torch.float64, device=compiled, requires_grad=True)
    weights = torch.randn(2, 3, 3, dtype=torch.float64, device=compiled)

    def loss_and_weighted_residual(features, target_gram):
        loss, residual = torch.ops.nst_ext.style_loss(features, target_gram)
        return loss + (residual * weights).sum()

    assert torch.autograd.gradcheck(loss_and_weighted_residual, (x, target))


OPCHECK_SAMPLES = [((2, 3, 5, 7), torch.float64), ((1, 65, 9, 8), torch.float32), ((1, 4, 6, 6), torch.float16)]


@pytest.mark.parametrize("shape,dtype", OPCHECK_SAMPLES)
def test_opcheck_every_op(compiled, seed, shape, dtype):
    B, C = shape[0], shape[1]
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    x = features_like_vgg(shape, compiled, dtype)
    grad_gram = torch.randn(B, C, C, device=compiled, dtype=acc)
    residual = torch.randn(B, C, C, device=compiled, dtype=acc)
    grad_loss = torch.rand((), device=compiled, dtype=acc)
    ops = torch.ops.nst_ext
    torch.library.opcheck(ops.gram.default, (x.clone().requires_grad_(dtype != torch.float16),))
    torch.library.opcheck(ops.gram_backward.default, (grad_gram, x))
    for target in (torch.rand(C, C, device=compiled, dtype=acc), torch.rand(B, C, C, device=compiled, dtype=acc)):
        torch.library.opcheck(ops.style_loss.default, (x.clone().requires_grad_(dtype != torch.float16), target))
    torch.library.opcheck(ops.style_loss_backward.default, (grad_loss, x, residual))


def test_torch_compile_fullgraph(compiled, seed):
    x = features_like_vgg((1, 16, 12, 10), compiled, torch.float32)
    target = reference.gram_matrix(features_like_vgg((1, 16, 8, 8), compiled, torch.float32))

    weights = torch.rand(12, 10, device=compiled)

    def objective(features):
        return (
            nst_ext.style_loss(features, target)
            + nst_ext.gram_matrix(features).mean()
            + nst_ext.masked_style_loss(features, weights, target)
            + nst_ext.masked_gram_matrix(features, weights).mean()
        )

    compiled_objective = torch.compile(objective, fullgraph=True)
    eager_x = x.clone().requires_grad_(True)
    compiled_x = x.clone().requires_grad_(True)
    eager = objective(eager_x)
    eager.backward()
    result = compiled_objective(compiled_x)
    result.backward()
    assert_close(result, eager, seed, rtol=1e-5)
    assert_close(compiled_x.grad, eager_x.grad, seed, rtol=1e-5)


def test_deterministic(compiled, seed):
    x = features_like_vgg((2, 64, 150, 150), compiled, torch.float32)
    target = reference.gram_matrix(features_like_vgg((1, 64, 20, 20), compiled, torch.float32))[0]
    assert torch.equal(nst_ext.gram_matrix(x), nst_ext.gram_matrix(x))
    assert torch.equal(nst_ext.style_loss(x, target), nst_ext.style_loss(x, target))


def test_nan_in_nan_out(device, seed):
    x = features_like_vgg((1, 4, 6, 6), device)
    x[0, 2, 3, 1] = float("nan")
    gram = nst_ext.gram_matrix(x)
    assert torch.isnan(gram[0, 2]).all() and torch.isnan(gram[0, :, 2]).all()
    assert torch.isfinite(gram[0, :2, :2]).all()
    assert torch.isnan(nst_ext.style_loss(x, torch.zeros(4, 4, dtype=x.dtype, device=device)))


def test_forced_reference_path(device, seed):
    x = features_like_vgg((2, 5, 6, 7), device).requires_grad_(True)
    target = torch.rand(5, 5, dtype=torch.float64, device=device)
    with nst_ext.reference_backend():
        assert nst_ext.backend_info()[device] == "reference"
        assert nst_ext.backend_info()["forced_reference"] is True
        loss = nst_ext.style_loss(x, target)
        assert loss.grad_fn is not None and "nst_ext" not in type(loss.grad_fn).__name__
        gram = nst_ext.gram_matrix(x)
    assert torch.equal(gram, reference.gram_matrix(x))
    assert torch.equal(loss, reference.style_loss(x, target))


def run_python(code, **env):
    import os

    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env={**os.environ, **env}
    )


def test_environment_variable_forces_reference():
    result = run_python("import nst_ext; print(nst_ext.backend_info()['cpu'])", NST_EXT_FORCE_REFERENCE="1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "reference"


def test_compiled_cpu_backend_is_built():
    """The README's install builds the C++ kernels; this fails if it silently did not."""
    info = nst_ext.backend_info()
    assert info["load_error"] is None, info["load_error"]
    assert info["cpu"] == "compiled C++"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_compiled_cuda_backend_is_built():
    """On a GPU machine every CUDA test would skip if the build had left the CUDA kernels out; this
    fails instead (rebuild with NST_EXT_FORCE_CUDA=1 to see why they were left out)."""
    info = nst_ext.backend_info()
    assert info["load_error"] is None, info["load_error"]
    assert info["cuda"] == "compiled CUDA"


def test_automatic_algorithm_choice_is_recorded_and_kept(device, seed):
    """In "auto" mode the first call of a shape times our kernel against the BLAS path and keeps
    the faster: the choice is recorded for exactly that shape, dtype and layout, later calls give
    bit-identical results, and they equal the chosen algorithm forced."""
    if nst_ext.backend_info()[device] == "reference":
        pytest.skip(f"no compiled kernels for {device}")
    shape = (1, 24, 19, 17)
    x = features_like_vgg(shape, device, torch.float32).contiguous(memory_format=torch.channels_last)
    target = reference.gram_matrix(features_like_vgg(shape, device, torch.float32))[0]
    nst_ext.clear_gram_algorithm_choices()
    with nst_ext.gram_algorithm("auto"):
        gram, loss = nst_ext.gram_matrix(x), nst_ext.style_loss(x, target)
        choices = [c for c in nst_ext.gram_algorithm_choices() if c["channels"] == 24]
        assert [(c["device"], c["op"], c["dtype"], c["batch"], c["spatial"], c["layout"]) for c in choices] == [
            (device, "gram", "Float", 1, 19 * 17, "channels_last"),
            (device, "style_loss", "Float", 1, 19 * 17, "channels_last"),
        ]
        assert torch.equal(nst_ext.gram_matrix(x), gram) and torch.equal(nst_ext.style_loss(x, target), loss)
    chosen = {c["op"]: c["algorithm"] for c in choices}
    with nst_ext.gram_algorithm(chosen["gram"]):
        assert torch.equal(nst_ext.gram_matrix(x), gram)
    with nst_ext.gram_algorithm(chosen["style_loss"]):
        assert torch.equal(nst_ext.style_loss(x, target), loss)
    assert_close(gram.double(), reference.gram_matrix(x.double()).to(gram.dtype).double(), seed, rtol=1e-5)


def test_features_too_large_to_widen_take_blas_without_timing(seed):
    """On the CPU, half features past the widening slab would need a whole float32 copy for our
    kernel, so both candidates are the BLAS product: the shape is not timed and no choice is
    recorded; the results still equal the reference."""
    if nst_ext.backend_info()["cpu"] == "reference":
        pytest.skip("no compiled kernels for cpu")
    shape = (1, 64, 512, 520)  # 17.0M elements: past 64 MiB once widened to float32
    x = features_like_vgg(shape, "cpu", torch.float16)
    target = reference.gram_matrix(2 * features_like_vgg(shape[:2] + (9, 9), "cpu", torch.float32))[0]  # G - T ~ G
    nst_ext.clear_gram_algorithm_choices()
    with nst_ext.gram_algorithm("auto"):
        gram, loss = nst_ext.gram_matrix(x), nst_ext.style_loss(x, target)
    assert [c for c in nst_ext.gram_algorithm_choices() if c["channels"] == 64] == []
    exact = reference.gram_matrix(x.double())
    assert_close(gram.double(), exact, seed, rtol=1e-3)
    assert_close(loss.double(), reference.style_loss(x.double(), target.double()), seed, rtol=1e-3)


def test_restored_algorithm_choices_are_taken_without_timing(device):
    """The choices a run recorded (nst_ext.io.provenance) come back as they were, the other way round
    from what "auto" chose too; a row that does not parse is refused whole."""
    if nst_ext.backend_info()[device] == "reference":
        pytest.skip(f"no compiled kernels for {device}")
    from nst_ext.ops.dispatch import restore_gram_algorithm_choices

    x = features_like_vgg((1, 21, 13, 11), device, torch.float32)
    nst_ext.clear_gram_algorithm_choices()
    nst_ext.gram_matrix(x)
    (made,) = nst_ext.gram_algorithm_choices()
    flipped = dict(made, algorithm="own" if made["algorithm"] == "blas" else "blas")
    nst_ext.clear_gram_algorithm_choices()
    restore_gram_algorithm_choices([flipped])
    assert nst_ext.gram_algorithm_choices() == [flipped]
    with nst_ext.gram_algorithm(flipped["algorithm"]):
        forced = nst_ext.gram_matrix(x)
    assert torch.equal(nst_ext.gram_matrix(x), forced)
    with pytest.raises(ValueError, match="unknown dtype"):
        restore_gram_algorithm_choices([dict(flipped, dtype="Int"), made])
    assert nst_ext.gram_algorithm_choices() == [flipped]
    nst_ext.clear_gram_algorithm_choices()


def test_gram_algorithm_controls():
    assert nst_ext.get_gram_algorithm() == "auto"
    with nst_ext.gram_algorithm("own"):
        assert nst_ext.backend_info()["gram_algorithm"] == "own"
    assert nst_ext.get_gram_algorithm() == "auto"
    with pytest.raises(ValueError, match="gram algorithm must be one of auto, own, blas, got 'fast'"):
        nst_ext.set_gram_algorithm("fast")
    result = run_python("import nst_ext; print(nst_ext.get_gram_algorithm())", NST_EXT_GRAM_ALGORITHM="blas")
    assert result.returncode == 0 and result.stdout.strip() == "blas", result.stderr


def test_missing_extension_falls_back_with_one_warning():
    code = """
import sys, warnings
sys.modules['nst_ext._C'] = None  # makes `from nst_ext import _C` fail like a missing build
import torch, nst_ext
info = nst_ext.backend_info()
assert info['cpu'] == 'reference' and 'nst_ext._C' in info['load_error'], info
x = torch.rand(1, 3, 4, 4, dtype=torch.float64)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    first = nst_ext.gram_matrix(x)
    nst_ext.style_loss(x, first[0])
messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
assert len(messages) == 1 and 'reference' in messages[0] and 'nst_ext._C' in messages[0], messages
assert torch.equal(first, nst_ext.ops.reference.gram_matrix(x))
print('ok')
"""
    result = run_python(code)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


GOOD = torch.rand(2, 3, 4, 5)
BAD_CALLS = [
    (
        "gram_matrix",
        (torch.rand(3, 4),),
        ValueError,
        r"features must have shape \(B, C, H, W\) or \(C, H, W\), got a 2-D",
    ),
    ("gram_matrix", (torch.rand(1, 2, 3, 4, 5),), ValueError, r"got a 5-D"),
    (
        "gram_matrix",
        (torch.ones(1, 3, 4, 4, dtype=torch.int64),),
        TypeError,
        r"features must be float16, bfloat16, float32 or float64, got torch.int64",
    ),
    ("gram_matrix", (torch.ones(1, 3, 4, 4, dtype=torch.bool),), TypeError, r"got torch.bool"),
    ("gram_matrix", (torch.ones(1, 3, 4, 4, dtype=torch.complex64),), TypeError, r"got torch.complex64"),
    ("gram_matrix", ([[1.0]],), TypeError, r"features must be a torch.Tensor, got list"),
    ("gram_matrix", (torch.rand(0, 3, 4, 4),), ValueError, r"features must not be empty"),
    ("gram_matrix", (torch.rand(1, 3, 0, 4),), ValueError, r"features must not be empty"),
    (
        "style_loss",
        (GOOD, torch.rand(4, 4)),
        ValueError,
        r"target_gram must have shape \(3, 3\) or \(1, 3, 3\) or \(2, 3, 3\).*got \(4, 4\)",
    ),
    ("style_loss", (GOOD, torch.rand(3, 3, 3)), ValueError, r"got \(3, 3, 3\)"),
    ("style_loss", (GOOD, torch.rand(3)), ValueError, r"target_gram must have shape"),
    ("style_loss", (GOOD, torch.ones(3, 3, dtype=torch.int32)), TypeError, r"target_gram must be float16"),
    ("style_loss", (GOOD, "gram"), TypeError, r"target_gram must be a torch.Tensor, got str"),
    ("style_loss", (torch.ones(2, 3, 4, 5, dtype=torch.uint8), torch.rand(3, 3)), TypeError, r"features must be"),
]


@pytest.mark.parametrize("backend", ["compiled", "reference"])
@pytest.mark.parametrize("name,args,error,message", BAD_CALLS, ids=[f"{c[0]}-{i}" for i, c in enumerate(BAD_CALLS)])
def test_bad_input_gets_a_clear_error(backend, name, args, error, message):
    for function in (getattr(nst_ext, name), getattr(reference, name)):
        with nst_ext.reference_backend(backend == "reference"):
            with pytest.raises(error, match=message):
                function(*args)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_tensors_on_different_devices():
    with pytest.raises(ValueError, match=r"target_gram is on cpu but features are on cuda"):
        nst_ext.style_loss(GOOD.cuda(), torch.rand(3, 3))


def test_tensors_on_different_devices_message_without_gpu():
    meta_target = torch.rand(3, 3, device="meta")
    with pytest.raises(ValueError, match=r"target_gram is on meta but features are on cpu"):
        nst_ext.style_loss(GOOD, meta_target)


def test_direct_op_calls_are_checked_in_cpp(compiled):
    """Bad direct calls of the compiled ops (scripts/direct_calls.py: the cases), each in a process of
    its own with the fault handler on: a crash fails this test with its native traceback instead
    of killing the test run (as it did on an H200)."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "direct_calls.py"
    result = subprocess.run(
        [sys.executable, str(script), "--device", compiled, "--algorithm", nst_ext.get_gram_algorithm()],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 14 and all(line.startswith("ok") for line in lines), result.stdout


def test_a_crashing_direct_call_is_reported_with_its_traceback(tmp_path):
    """scripts/direct_calls.py with a case that crashes the process (a read of address 0) before
    a good one: the crash is named with its signal and Python's traceback, the good case still runs,
    and the control extension (--control) is built and says the crash is not the build's."""
    import re
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    if nst_ext.backend_info()["load_error"]:
        pytest.skip("no compiled kernels")
    script = Path(__file__).resolve().parents[1] / "scripts" / "direct_calls.py"
    text = script.read_text()
    crashing = 'CASES = [\n    ("a crash", "__import__(\'ctypes\').string_at(0)", "never"),\n'
    text = re.sub(
        r"CASES = \[\n(.*?)\n\]\n",
        lambda found: crashing + found.group(1).split('\n    ("style_loss')[0] + "\n]\n",
        text,
        count=1,
        flags=re.S,
    )
    (tmp_path / "direct_calls.py").write_text(text)
    shutil.copytree(script.parent / "control_op", tmp_path / "control_op")
    result = subprocess.run(
        [sys.executable, str(tmp_path / "direct_calls.py"), "--control"], capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 1
    assert "FAIL cpu a crash: crashed (signal 11)" in result.stdout and "in string_at" in result.stdout
    assert "ok   cpu gram, 3-D features (inference mode): ok" in result.stdout
    # The control extension, built as nst_ext is, raises its error: the crash is the case's own.
    assert "control cpu: raised its error, plainly and in inference mode" in result.stdout, result.stdout


@pytest.mark.parametrize(
    "shape", [(1, 64, 300, 301), (2, 512, 97, 103), (1, 64, 512, 520)]
)  # the last: past 64 MiB widened, our kernel gives way to the slabs
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_large_reduced_features_in_slabs_match_reference(compiled, seed, shape, layout, dtype):
    """Half and bfloat16 features larger than a widening slab (common.h: 16 MiB of float32) are
    widened and multiplied a slab at a time on the CPU: several slabs, both layouts, the Gram,
    the style loss and its gradient against the float64 reference on the same values. On
    CUDA the same shapes check both forward algorithms over long H·W sums."""
    x = features_like_vgg(shape, compiled, dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    exact = x.double().detach().requires_grad_(True)
    # Half the Gram of other features, so that G - T is of the order of G. A target near G
    # (|G - T| is ~1% of |G| at these sizes) makes the loss magnify the Gram's float32
    # rounding a hundredfold, and the check would test the order of summation, not the op:
    # cuBLAS sums the H·W products in another order than the CPU's slabs, and on an H200 its
    # loss was off by up to 1.1e-3 relative with such a target while its Gram passed below.
    target = reference.gram_matrix(features_like_vgg(shape, compiled).double()) / 2
    exact_gram = reference.gram_matrix(exact).detach()
    gram_rtol = 1e-4
    assert_close(nst_ext.gram_matrix(x), exact_gram.float(), seed, rtol=gram_rtol)
    x.requires_grad_(True)
    loss = nst_ext.style_loss(x, target.float())
    expected = reference.style_loss(exact, target)
    # The loss to the precision the Gram check allows, carried through mean((G - T)^2):
    # |d loss| <= 2 mean(|G - T| |dG|), |dG| <= gram_rtol (|G| + max |G|) as assert_close allows.
    gram_error = gram_rtol * (exact_gram.abs() + exact_gram.abs().max())
    loss_atol = 2 * ((exact_gram - target).abs() * gram_error).mean().item()
    assert_close(loss, expected.float(), seed, rtol=0, atol=loss_atol)
    # Scaled as mixed-precision training scales its loss: unscaled, these gradients (~1e-8) are
    # below float16's smallest normal number.
    (loss * 2**20).backward()
    (expected * 2**20).backward()
    assert_close(x.grad.double(), exact.grad, seed, rtol=1e-2)
    assert x.grad.dtype == dtype and x.grad.is_contiguous(
        memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format
    )


# -- the masked (weighted) ops of spatial control ------------------------------------------------


def soft_mask(shape, device, dtype=torch.float64):
    """Weights in [0, 1] with exact zeros and ones (a region, its edge soft)."""
    return (torch.rand(shape, dtype=torch.float64) * 1.6 - 0.3).clamp(0, 1).to(device, dtype)


@pytest.mark.parametrize("weights_batch", ["HW", "1HW", "BHW"])
@pytest.mark.parametrize("shape", [(1, 1, 5, 7), (2, 3, 1, 97), (2, 65, 3, 5), (3, 64, 61, 67), (1, 130, 7, 11)])
def test_masked_ops_match_reference_float64(compiled, seed, shape, weights_batch):
    B, C, H, W = shape
    weights = soft_mask({"HW": (H, W), "1HW": (1, H, W), "BHW": (B, H, W)}[weights_batch], compiled)
    x = features_like_vgg(shape, compiled).requires_grad_(True)
    target = reference.gram_matrix(features_like_vgg((1, C, 6, 5), compiled)).clone().requires_grad_(True)
    assert_close(nst_ext.masked_gram_matrix(x, weights), reference.masked_gram_matrix(x, weights), seed)
    loss = nst_ext.masked_style_loss(x, weights, target)
    expected = reference.masked_style_loss(x, weights, target)
    assert_close(loss, expected, seed)
    for got, want in zip(torch.autograd.grad(loss, (x, target)), torch.autograd.grad(expected, (x, target))):
        assert_close(got, want, seed)
    grad_gram = torch.randn(B, C, C, device=compiled, dtype=torch.float64)
    (got,) = torch.autograd.grad(nst_ext.masked_gram_matrix(x, weights), x, grad_gram)
    (want,) = torch.autograd.grad(reference.masked_gram_matrix(x, weights), x, grad_gram)
    assert_close(got, want, seed)


def test_masked_gram_is_the_gram_of_the_region(compiled, seed):
    """An oracle apart from the reference: with a 0/1 mask, the Gram of the positions inside,
    gathered; with w ≡ 1 the unmasked Gram; with w ≡ 0 zero and no gradient."""
    x = features_like_vgg((2, 9, 13, 17), compiled).requires_grad_(True)
    inside = torch.rand(13, 17, device=compiled) < 0.3
    region = x.flatten(2)[:, :, inside.flatten()]
    expected = region @ region.transpose(1, 2) / inside.sum()
    assert_close(nst_ext.masked_gram_matrix(x, inside.double()), expected, seed)
    assert_close(
        nst_ext.masked_gram_matrix(x, torch.ones(13, 17, device=compiled, dtype=torch.float64)),
        nst_ext.gram_matrix(x),
        seed,
    )
    # Weights are relative: a mask scaled by any positive factor gives the same Gram.
    weights = soft_mask((13, 17), compiled)
    assert_close(nst_ext.masked_gram_matrix(x, 7.5 * weights), nst_ext.masked_gram_matrix(x, weights), seed)
    nothing = torch.zeros(1, 13, 17, device=compiled, dtype=torch.float64)
    assert torch.equal(
        nst_ext.masked_gram_matrix(x, nothing), torch.zeros(2, 9, 9, device=compiled, dtype=torch.float64)
    )
    target = torch.rand(9, 9, device=compiled, dtype=torch.float64)
    (grad,) = torch.autograd.grad(nst_ext.masked_style_loss(x, nothing, target), x)
    assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "sliced"])
@pytest.mark.parametrize("dtype", CLAIMED_DTYPES)
def test_masked_ops_every_claimed_dtype_and_layout(compiled, seed, dtype, layout):
    x = features_like_vgg((2, 48, 11, 13), compiled, dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "sliced":
        x = features_like_vgg((2, 96, 11, 26), compiled, dtype)[:, ::2, :, 1::2]
    assert x.is_contiguous() == (layout == "nchw")
    weights = soft_mask((2, 11, 13), compiled, torch.float32)
    exact = x.double().requires_grad_(True)
    target = reference.gram_matrix(features_like_vgg((1, 48, 7, 7), compiled))[0]
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    gram = nst_ext.masked_gram_matrix(x, weights)
    assert gram.dtype == acc
    assert_close(gram.double(), reference.masked_gram_matrix(exact, weights), seed, rtol=RTOL[dtype])
    x.requires_grad_(True)
    loss = nst_ext.masked_style_loss(x, weights, target.to(acc))
    (grad,) = torch.autograd.grad(loss, x)
    assert loss.dtype == acc and grad.dtype == dtype and grad.shape == x.shape
    if layout == "channels_last":
        assert grad.is_contiguous(memory_format=torch.channels_last)
    expected = reference.masked_style_loss(exact, weights, target)
    (expected_grad,) = torch.autograd.grad(expected, exact)
    assert_close(loss.double(), expected, seed, rtol=RTOL[dtype] * 10)
    grad_rtol = {torch.float16: 2e-3, torch.bfloat16: 1e-2}.get(dtype, RTOL[dtype] * 10)
    assert_close(grad.double(), expected_grad, seed, rtol=grad_rtol)


def test_masked_gradcheck(compiled, seed):
    x = features_like_vgg((2, 4, 5, 6), compiled).requires_grad_(True)
    weights = soft_mask((2, 5, 6), compiled)
    target = torch.rand(4, 4, device=compiled, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f, t: nst_ext.masked_style_loss(f, weights, t), (x, target))
    assert torch.autograd.gradgradcheck(lambda f: nst_ext.masked_gram_matrix(f, weights), (x,))


@pytest.mark.parametrize("shape,dtype", OPCHECK_SAMPLES)
def test_opcheck_every_masked_op(compiled, seed, shape, dtype):
    B, C, H, W = shape
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    x = features_like_vgg(shape, compiled, dtype)
    ops = torch.ops.nst_ext
    for weights in (soft_mask((1, H, W), compiled, acc), soft_mask((B, H, W), compiled, acc)):
        torch.library.opcheck(ops.masked_gram.default, (x.clone().requires_grad_(dtype != torch.float16), weights))
        torch.library.opcheck(
            ops.masked_gram_backward.default, (torch.randn(B, C, C, device=compiled, dtype=acc), x, weights)
        )
        torch.library.opcheck(
            ops.masked_style_loss.default,
            (x.clone().requires_grad_(dtype != torch.float16), weights, torch.rand(C, C, device=compiled, dtype=acc)),
        )
        torch.library.opcheck(
            ops.masked_style_loss_backward.default,
            (torch.rand((), device=compiled, dtype=acc), x, weights, torch.randn(B, C, C, device=compiled, dtype=acc)),
        )


MASKED_BAD_CALLS = [
    (
        "masked_gram_matrix",
        (GOOD, torch.rand(4, 4)),
        ValueError,
        r"weights must have shape \(4, 5\) or \(1, 4, 5\) or \(2, 4, 5\)",
    ),
    ("masked_gram_matrix", (GOOD, torch.rand(3, 4, 5)), ValueError, r"got \(3, 4, 5\)"),
    ("masked_gram_matrix", (GOOD, torch.ones(4, 5, dtype=torch.bool)), TypeError, r"weights must be float16"),
    (
        "masked_gram_matrix",
        (GOOD, torch.rand(4, 5, device="meta")),
        ValueError,
        r"weights are on meta but features are on cpu",
    ),
    ("masked_style_loss", (GOOD, torch.rand(4, 5), torch.rand(4, 4)), ValueError, r"target_gram must have shape"),
]


@pytest.mark.parametrize("backend", ["compiled", "reference"])
@pytest.mark.parametrize(
    "name,args,error,message", MASKED_BAD_CALLS, ids=[f"{c[0]}-{i}" for i, c in enumerate(MASKED_BAD_CALLS)]
)
def test_masked_bad_input_gets_a_clear_error(backend, name, args, error, message):
    for function in (getattr(nst_ext, name), getattr(reference, name)):
        with nst_ext.reference_backend(backend == "reference"):
            with pytest.raises(error, match=message):
                function(*args)


@pytest.mark.parametrize(
    "built, running, cuda, refused",
    [
        ({"torch": "2.14.1", "cuda": None}, "2.14.0", None, False),  # another patch release: the same ABI
        ({"torch": "2.14.1+cu130", "cuda": "13.0"}, "2.14.1+cu130", "13.0", False),
        ({"torch": "2.14.1+cpu", "cuda": None}, "2.14.1+cu130", "13.0", False),  # C++ kernels only: any 2.14
        ({"torch": "2.14.1", "cuda": None}, "2.15.0", None, True),
        ({"torch": "2.14.1", "cuda": None}, "2.4.0", None, True),
        ({"torch": "2.14.1+cu130", "cuda": "13.0"}, "2.14.1+cpu", None, True),  # CUDA kernels, a CPU-only torch
        ({"torch": "2.14.1+cu130", "cuda": "13.0"}, "2.14.1+cu126", "12.6", True),
        (None, "2.99.0", None, False),  # a build from before the record: loading it tells
    ],
)
def test_a_library_built_for_another_torch_is_not_loaded(built, running, cuda, refused):
    from nst_ext.ops.dispatch import build_mismatch

    why = build_mismatch(built, running, cuda)
    assert (why is not None) == refused, why
    if refused:
        assert f"built for torch {built['torch']}" in why and f"this is torch {running}" in why
        assert "pip install --no-build-isolation ." in why


@pytest.mark.skipif(dispatch.BUILD_INFO is None, reason="the build recorded nothing to compare")
def test_an_import_under_another_torch_names_both_versions_and_runs_on_the_reference():
    """Where the installed torch is not the build's (here another version is pretended before the
    import), the library is not loaded (that was an undefined-symbol crash): one line names both
    versions, and the ops run on the reference."""
    code = textwrap.dedent("""
        import warnings, torch
        torch.__version__ = "2.99.0"
        import nst_ext
        info = nst_ext.backend_info()
        print(info["load_error"])
        print(info["cpu"], hasattr(torch.ops.nst_ext, "gram"))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            nst_ext.gram_matrix(torch.rand(1, 3, 4, 4))
        print(len(caught), caught[0].category.__name__)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    error, backend, warned = result.stdout.strip().splitlines()
    assert f"built for torch {dispatch.BUILD_INFO['torch']}" in error and "this is torch 2.99.0" in error
    assert backend == "reference False" and warned == "1 BackendWarning"


@pytest.mark.parametrize("fault", ["wrong", "nan", "raise"])
@pytest.mark.parametrize("op", ["gram", "style_loss"])
def test_a_wrong_candidate_is_never_chosen(device, seed, fault, op, tmp_path, monkeypatch):
    """Verify before choosing: our kernel's result is checked against the BLAS product's on the
    first call of a shape (here made wrong, NaN or raising by the extension's test-only switch); it
    is refused with one warning naming kernel, shape and device, the BLAS product serves the shape,
    and the choice is kept as failed in the cache and in a picture's record. Without the fault our
    correct kernel passes the check and is chosen where it is the faster (BLAS timed as the slower)."""
    from nst_ext.io import algorithm_cache, provenance
    from nst_ext.errors import BackendWarning
    from nst_ext.plan.options import StyleOptions

    if nst_ext.backend_info()[device] == "reference":
        pytest.skip(f"no compiled kernels for {device}")
    features = torch.rand(2, 13, 9, 7, device=device)
    target = torch.rand(13, 13, device=device)
    run = (lambda: nst_ext.gram_matrix(features)) if op == "gram" else (lambda: nst_ext.style_loss(features, target))
    expected = reference.gram_matrix(features) if op == "gram" else reference.style_loss(features, target)
    previous = dispatch.gram_algorithm_choices()
    dispatch.clear_gram_algorithm_choices()
    torch.ops.nst_ext._set_candidate_fault(fault)
    try:
        with nst_ext.gram_algorithm("auto"):
            with pytest.warns(
                BackendWarning,
                match=rf"our Gram kernel is not used for {op} of Float features \(B=2, "
                rf"C=13, H\*W=63, NCHW\) on {device}",
            ):
                got = run()
            torch.testing.assert_close(got, expected)
            chosen = [choice for choice in dispatch.gram_algorithm_choices() if choice["channels"] == 13]
            assert [choice["algorithm"] for choice in chosen] == ["blas (own failed)"]
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # the choice is made once: no second warning
                torch.testing.assert_close(run(), expected)
        monkeypatch.setenv("NST_EXT_CACHE_DIR", str(tmp_path))
        monkeypatch.setattr(algorithm_cache, "_in_file", 0)
        algorithm_cache.save()
        cached = json.loads(algorithm_cache.cache_path().read_text())["choices"]
        assert [choice["algorithm"] for choice in cached if choice["channels"] == 13] == ["blas (own failed)"]
        record = json.loads(provenance.make_record(StyleOptions(), features[0], [features[0]], 0, "pastiche", device))
        assert [choice["algorithm"] for choice in record["gram_algorithm_choices"]] == ["blas (own failed)"]
        dispatch.clear_gram_algorithm_choices()  # as a later process: the cache's failed choice is restored as it was
        assert algorithm_cache.load() >= 1
        assert [c["algorithm"] for c in dispatch.gram_algorithm_choices() if c["channels"] == 13] == [
            "blas (own failed)"
        ]
    finally:
        torch.ops.nst_ext._set_candidate_fault("")
        dispatch.clear_gram_algorithm_choices()
        dispatch.restore_gram_algorithm_choices(previous)
    dispatch.clear_gram_algorithm_choices()
    torch.ops.nst_ext._set_candidate_fault("blas-slower")  # a correct kernel that is the faster is chosen
    try:
        with nst_ext.gram_algorithm("auto"), warnings.catch_warnings():
            warnings.simplefilter("error")
            torch.testing.assert_close(run(), expected)
        assert [c["algorithm"] for c in dispatch.gram_algorithm_choices() if c["channels"] == 13] == ["own"]
    finally:
        torch.ops.nst_ext._set_candidate_fault("")
        dispatch.clear_gram_algorithm_choices()
        dispatch.restore_gram_algorithm_choices(previous)


def test_the_candidate_fault_switch_takes_only_its_values():
    if dispatch.LOAD_ERROR is not None:
        pytest.skip("no compiled kernels")
    with pytest.raises(ValueError, match="a candidate fault is"):
        torch.ops.nst_ext._set_candidate_fault("sometimes")
