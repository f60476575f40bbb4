"""Pure-PyTorch reference of the nst_ext ops.

It is the fallback when the compiled extension is missing, and the oracle the
compiled kernels are tested and benchmarked against. Same contracts as
:func:`nst_ext.gram_matrix` and :func:`nst_ext.style_loss`.
"""

import torch

from nst_ext._checks import accumulation_dtype, check_features, check_target_gram, is_channels_last


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
