"""Pure-PyTorch reference of the nst_ext ops.

It is the fallback when the compiled extension is missing, and the oracle the
compiled kernels are tested and benchmarked against. Same contracts as
:func:`nst_ext.gram_matrix` and :func:`nst_ext.style_loss`.
"""

import torch

from nst_ext.ops.checks import accumulation_dtype, check_features, check_target_gram, check_weights, is_channels_last


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """Gram matrix ``F Fᵀ / (H·W)`` of features flattened to ``(C, H·W)``.

    features: ``(B, C, H, W)`` or ``(C, H, W)``, float16/bfloat16/float32/float64.
    Returns ``(B, C, C)`` or ``(C, C)``: float32 for float16/bfloat16/float32
    input, float64 for float64 input.
    """
    check_features(features)
    dtype = accumulation_dtype(features.dtype)
    if is_channels_last(features):
        # Channels-last features (what channels-last convolutions hand the losses): the same
        # product as Xᵀ X over the positions X (B, H·W, C), a view, so that the gradient autograd
        # returns is channels-last too (an NCHW one would make the network's backward strided).
        positions = features.permute(0, 2, 3, 1).flatten(1, 2).to(dtype)
        return positions.transpose(-1, -2) @ positions / positions.shape[-2]
    flat = features.flatten(-2).to(dtype)
    return flat @ flat.transpose(-1, -2) / flat.shape[-1]


def style_loss(features: torch.Tensor, target_gram: torch.Tensor) -> torch.Tensor:
    """Mean over all elements of ``(gram_matrix(features) - target_gram)²``.

    target_gram: ``(C, C)`` (broadcast over the batch), ``(1, C, C)`` or
    ``(B, C, C)``. Returns a 0-d tensor of the accumulation dtype.
    """
    check_features(features)
    check_target_gram(target_gram, features)
    gram = gram_matrix(features)
    if features.dim() == 3 and target_gram.dim() == 3:
        gram = gram.unsqueeze(0)
    return (gram - target_gram.to(gram.dtype)).square().mean()


def masked_gram_matrix(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The Gram matrix over a region, ``F diag(w) Fᵀ / Σw`` (Gatys et al. 2017, spatial control),
    with ``w`` the per-position weights ≥ 0; 0 where ``Σw = 0``. ``w ≡ 1`` gives
    :func:`gram_matrix`.

    features: as for :func:`gram_matrix`. weights: ``(H, W)``, ``(1, H, W)`` or ``(B, H, W)``,
    any float dtype, not differentiated. Returns the dtype and shape :func:`gram_matrix` does.
    """
    check_features(features)
    check_weights(weights, features)
    dtype = accumulation_dtype(features.dtype)
    batched = features if features.dim() == 4 else features.unsqueeze(0)
    w = weights.detach().to(dtype).reshape(-1, 1, batched.shape[-2] * batched.shape[-1])  # (1|B, 1, n)
    flat = batched.to(dtype).flatten(-2)  # (B, C, n)
    mass = w.sum(-1, keepdim=True)  # (1|B, 1, 1)
    inverse = torch.where(mass > 0, 1.0 / mass.clamp_min(torch.finfo(dtype).tiny), torch.zeros_like(mass))
    gram = (flat * w) @ flat.transpose(-1, -2) * inverse
    return gram if features.dim() == 4 else gram[0]


def masked_style_loss(features: torch.Tensor, weights: torch.Tensor, target_gram: torch.Tensor) -> torch.Tensor:
    """Mean over all elements of ``(masked_gram_matrix(features, weights) - target_gram)²``;
    target_gram as for :func:`style_loss`. Returns a 0-d tensor of the accumulation dtype."""
    check_features(features)
    check_weights(weights, features)
    check_target_gram(target_gram, features)
    gram = masked_gram_matrix(features, weights)
    if features.dim() == 3 and target_gram.dim() == 3:
        gram = gram.unsqueeze(0)
    return (gram - target_gram.to(gram.dtype)).square().mean()
