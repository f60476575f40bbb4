"""The fake kernels and autograd formulas of the compiled ops (csrc/ops.cpp declares their schemas),
registered from Python as pytorch/extension-cpp does, so that torch.compile traces through the ops
and autograd differentiates them, twice included. Imported by nst_ext.ops.dispatch once the library is
loaded; nothing else imports it.

Every backward op has the form ``Y = s · (X + Xᵀ) F D``: X the incoming Gram gradient (or the
residual), F the features, D = diag(w) for the masked ops (the identity otherwise) and s a factor
per picture (``1/n``, ``1/Σw``, times ``2 g / (B C²)`` with g the loss's gradient for the style
losses). So for an incoming U shaped like F: ``dF = s (X + Xᵀ) U D`` (the same op, U in F's place),
``dX = s (W + Wᵀ)`` with ``W = U D Fᵀ``, and for the style losses ``dg = Σ (X + Xᵀ) ⊙ W · s / g``.
"""

from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch

from nst_ext.ops.checks import accumulation_dtype, is_channels_last


@torch.library.register_fake("nst_ext::gram")
def _gram_fake(features: torch.Tensor) -> torch.Tensor:
    batch, channels = features.shape[0], features.shape[1]
    return features.new_empty((batch, channels, channels), dtype=accumulation_dtype(features.dtype))


def _gradient_like(features: torch.Tensor) -> torch.Tensor:
    # The kernels return channels-last gradients for channels-last features
    # (no copy of them), NCHW-contiguous ones otherwise (common.h).
    layout = torch.channels_last if is_channels_last(features) else torch.contiguous_format
    return torch.empty(features.shape, dtype=features.dtype, device=features.device, memory_format=layout)


@torch.library.register_fake("nst_ext::gram_backward")
def _gram_backward_fake(grad_gram: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    return _gradient_like(features)


@torch.library.register_fake("nst_ext::style_loss")
def _style_loss_fake(features: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    batch, channels = features.shape[0], features.shape[1]
    dtype = accumulation_dtype(features.dtype)
    return features.new_empty((), dtype=dtype), features.new_empty((batch, channels, channels), dtype=dtype)


@torch.library.register_fake("nst_ext::style_loss_backward")
def _style_loss_backward_fake(grad_loss: torch.Tensor, features: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    return _gradient_like(features)


def _gram_setup_context(ctx: Any, inputs: Tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
    (features,) = inputs
    ctx.save_for_backward(features)


def _gram_backward(ctx: Any, grad_gram: torch.Tensor) -> torch.Tensor:
    (features,) = ctx.saved_tensors
    return torch.ops.nst_ext.gram_backward(grad_gram, features)


torch.library.register_autograd("nst_ext::gram", _gram_backward, setup_context=_gram_setup_context)


def _target_gradient(
    residual: torch.Tensor,
    grad_loss: Optional[torch.Tensor],
    grad_residual: Optional[torch.Tensor],
    target_shape: Sequence[int],
) -> torch.Tensor:
    """L = mean((G - A)^2)  =>  dL/dA = -2 (G - A) / numel, summed where A was broadcast."""
    grad_target = residual.new_zeros(residual.shape)
    if grad_loss is not None:
        grad_target = grad_target - residual * (2.0 / residual.numel()) * grad_loss
    if grad_residual is not None:
        grad_target = grad_target - grad_residual
    if len(target_shape) == 2:
        return grad_target.sum(0)
    if target_shape[0] == 1:
        return grad_target.sum(0, keepdim=True)
    return grad_target


def _style_loss_setup_context(
    ctx: Any, inputs: Tuple[torch.Tensor, ...], output: Tuple[torch.Tensor, torch.Tensor]
) -> None:
    features, target = inputs
    _, residual = output
    ctx.save_for_backward(features, residual)
    ctx.target_shape = target.shape
    # An unused residual gets None, not a zero tensor that would cost a
    # whole extra matrix product in the backward.
    ctx.set_materialize_grads(False)


def _style_loss_backward(
    ctx: Any, grad_loss: Optional[torch.Tensor], grad_residual: Optional[torch.Tensor]
) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    features, residual = ctx.saved_tensors
    grad_features = grad_target = None
    if ctx.needs_input_grad[0]:
        # Each product runs only for an output that has a gradient.
        if grad_loss is not None:
            grad_features = torch.ops.nst_ext.style_loss_backward(grad_loss, features, residual)
        if grad_residual is not None:
            from_residual = torch.ops.nst_ext.gram_backward(grad_residual, features)
            grad_features = from_residual if grad_features is None else grad_features + from_residual
    if ctx.needs_input_grad[1]:
        grad_target = _target_gradient(residual, grad_loss, grad_residual, ctx.target_shape)
    return grad_features, grad_target


torch.library.register_autograd("nst_ext::style_loss", _style_loss_backward, setup_context=_style_loss_setup_context)


# The masked ops (csrc/masked.h): the weights are an input the user draws, never differentiated.
@torch.library.register_fake("nst_ext::masked_gram")
def _masked_gram_fake(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return _gram_fake(features)


@torch.library.register_fake("nst_ext::masked_gram_backward")
def _masked_gram_backward_fake(grad_gram: torch.Tensor, features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return _gradient_like(features)


@torch.library.register_fake("nst_ext::masked_style_loss")
def _masked_style_loss_fake(
    features: torch.Tensor, weights: torch.Tensor, target: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    return _style_loss_fake(features, target)


@torch.library.register_fake("nst_ext::masked_style_loss_backward")
def _masked_style_loss_backward_fake(
    grad_loss: torch.Tensor, features: torch.Tensor, weights: torch.Tensor, residual: torch.Tensor
) -> torch.Tensor:
    return _gradient_like(features)


def _masked_gram_setup_context(ctx: Any, inputs: Tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
    features, weights = inputs
    ctx.save_for_backward(features, weights)


def _masked_gram_backward(ctx: Any, grad_gram: torch.Tensor) -> Tuple[Optional[torch.Tensor], None]:
    features, weights = ctx.saved_tensors
    grad_features = None
    if ctx.needs_input_grad[0]:
        grad_features = torch.ops.nst_ext.masked_gram_backward(grad_gram, features, weights)
    return grad_features, None


torch.library.register_autograd("nst_ext::masked_gram", _masked_gram_backward, setup_context=_masked_gram_setup_context)


def _masked_style_loss_setup_context(
    ctx: Any, inputs: Tuple[torch.Tensor, ...], output: Tuple[torch.Tensor, torch.Tensor]
) -> None:
    features, weights, target = inputs
    _, residual = output
    ctx.save_for_backward(features, weights, residual)
    ctx.target_shape = target.shape
    ctx.set_materialize_grads(False)


def _masked_style_loss_backward(
    ctx: Any, grad_loss: Optional[torch.Tensor], grad_residual: Optional[torch.Tensor]
) -> Tuple[Optional[torch.Tensor], None, Optional[torch.Tensor]]:
    features, weights, residual = ctx.saved_tensors
    grad_features = grad_target = None
    if ctx.needs_input_grad[0]:
        if grad_loss is not None:
            grad_features = torch.ops.nst_ext.masked_style_loss_backward(grad_loss, features, weights, residual)
        if grad_residual is not None:
            from_residual = torch.ops.nst_ext.masked_gram_backward(grad_residual, features, weights)
            grad_features = from_residual if grad_features is None else grad_features + from_residual
    if ctx.needs_input_grad[2]:
        grad_target = _target_gradient(residual, grad_loss, grad_residual, ctx.target_shape)
    return grad_features, None, grad_target


torch.library.register_autograd(
    "nst_ext::masked_style_loss", _masked_style_loss_backward, setup_context=_masked_style_loss_setup_context
)


# ---- the backward ops' own derivatives (double backward) ---------------------------------------
def _per_picture_factor(
    features: torch.Tensor, weights: Optional[torch.Tensor], dtype: torch.dtype, loss_factor: bool
) -> Union[float, torch.Tensor]:
    """s / g of the module docstring: ``1/n`` or ``1/Σw`` per picture (0 for an empty region) as
    ``(1|B, 1, 1)`` or a number, times ``2 / (B C²)`` for the style losses."""
    batch, channels = features.shape[0], features.shape[1]
    factor = 2.0 / (batch * channels * channels) if loss_factor else 1.0
    if weights is None:
        return factor / (features.shape[-2] * features.shape[-1])
    mass = weights.to(dtype).sum((-2, -1)).reshape(-1, 1, 1)
    return factor * torch.where(mass > 0, 1.0 / mass.clamp_min(torch.finfo(dtype).tiny), torch.zeros_like(mass))


def _weighted_outer(
    grad_output: torch.Tensor, features: torch.Tensor, weights: Optional[torch.Tensor], dtype: torch.dtype
) -> torch.Tensor:
    """``W = U D Fᵀ`` per picture, ``(B, C, C)`` in dtype."""
    incoming = grad_output.flatten(2).to(dtype)
    if weights is not None:
        incoming = incoming * weights.to(dtype).reshape(weights.shape[0], 1, -1)
    return incoming @ features.flatten(2).to(dtype).transpose(1, 2)


# Each backward op's arguments in its schema's order: X is "matrix" (the Gram gradient or the residual).
_BACKWARD_ARGUMENTS = {
    "gram_backward": ("matrix", "features"),
    "style_loss_backward": ("grad_loss", "features", "matrix"),
    "masked_gram_backward": ("matrix", "features", "weights"),
    "masked_style_loss_backward": ("grad_loss", "features", "weights", "matrix"),
}


def _register_second_order(op_name: str, names: Tuple[str, ...]) -> None:
    op = getattr(torch.ops.nst_ext, op_name)

    def setup_context(ctx: Any, inputs: Tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        ctx.save_for_backward(*inputs)

    def backward(ctx: Any, grad_output: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        inputs = ctx.saved_tensors
        given = dict(zip(names, inputs))
        needs = dict(zip(names, ctx.needs_input_grad))
        matrix, features, weights, grad_loss = (
            given["matrix"],
            given["features"],
            given.get("weights"),
            given.get("grad_loss"),
        )
        dtype = matrix.dtype
        factor = _per_picture_factor(features, weights, dtype, loss_factor=grad_loss is not None)
        grads: Dict[str, torch.Tensor] = {}  # weights are never differentiated
        if needs["features"]:
            grads["features"] = op(*(grad_output if name == "features" else given[name] for name in names))
        if needs["matrix"] or needs.get("grad_loss"):
            outer = _weighted_outer(grad_output, features, weights, dtype)
            if needs["matrix"]:
                scale = factor if grad_loss is None else factor * grad_loss.reshape(()).to(dtype)
                grads["matrix"] = scale * (outer + outer.transpose(1, 2))
            if needs.get("grad_loss") and grad_loss is not None:  # needed only where it was given
                symmetric = matrix + matrix.transpose(1, 2)
                grads["grad_loss"] = (factor * symmetric * outer).sum().reshape(grad_loss.shape).to(grad_loss.dtype)
        return tuple(grads.get(name) for name in names)

    torch.library.register_autograd(f"nst_ext::{op_name}", backward, setup_context=setup_context)


for _name, _arguments in _BACKWARD_ARGUMENTS.items():
    _register_second_order(_name, _arguments)
