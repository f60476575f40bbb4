"""Loss modules of the stylizer. Style work runs in the compiled kernels
(:func:`nst_ext.style_loss`, :func:`nst_ext.gram_matrix`); targets are
computed once, when a module is built, not at every step.

Every loss returns one value per picture of the batch, shape ``(B,)``: the
pictures of a batch are optimised together but each against its own targets,
so summing the values gives every picture its own gradient.

Each content and style loss is divided by the mean square of its own target,
so every layer starts near the same scale whatever its depth, the pooling or
the weights' input normalisation (raw VGG19 Gram losses span four orders of
magnitude from relu1_1 to relu4_1). Layer and loss weights are then relative.
"""

from typing import Optional

import torch
from torch import nn

from nst_ext._ops import gram_matrix, masked_gram_matrix, masked_style_loss, style_loss


def _relative_scale(target: torch.Tensor) -> torch.Tensor:
    """1 / the mean square of each picture's target, ``(B,)`` float32 (from ``(B, ...)``)."""
    mean_square = target.detach().double().square().flatten(1).mean(1)
    return (1.0 / mean_square.clamp(min=1e-12)).float()


def per_picture_mean(values: torch.Tensor) -> torch.Tensor:
    """The mean of ``(B, ...)`` values over all but the first dimension: ``(B,)``. A sum over the
    dimensions, then divided: a sum's gradient is a broadcast view, so the gradient takes the
    values' own layout (a mean's, or a flattened view's, comes back NCHW, and NCHW gradients in
    a channels-last network make every later pass of the backward strided)."""
    if values.dim() == 1:  # nothing to average; sum(dim=()) would sum over every dimension
        return values
    return values.sum(dim=tuple(range(1, values.dim()))) / (values[0].numel())


class ContentLoss(nn.Module):
    """Mean squared difference to the target features, relative to their mean square, per picture.

    target: ``(B, C, H, W)`` features of the content images; forward takes the
    output's features of the same shape and returns ``(B,)`` float32. `weights` (a content
    mask at the layer's resolution, ``(H, W)`` ≥ 0): the mean is taken over the region they
    weight (0 where they are all 0).
    """

    def __init__(self, target: torch.Tensor, weights: Optional[torch.Tensor] = None):
        super().__init__()
        self.register_buffer("target", target.detach().float())
        self.register_buffer("scale", _relative_scale(target))
        self.register_buffer("weights", None)
        if weights is not None:
            weights = weights.detach().float().to(target.device)
            mass = float(weights.sum())
            # Sum of w·d² over the region ÷ (C · Σw): the mean over the region, as the unmasked mean is.
            self.weights = weights * (weights.numel() / mass if mass > 0 else 0.0)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        squares = (features.float() - self.target).square()
        if self.weights is not None:
            squares = squares * self.weights
        return per_picture_mean(squares) * self.scale


def blended_gram(features: torch.Tensor, weight: float, region: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``weight · G(features)``: one style image's share of a blended target Gram. features
    ``(1, C, H, W)``, any float dtype; returns float32 ``(C, C)`` on their device. `region`:
    weights ``(H, W)`` of the part of the style image that is the source (a style-image mask):
    the Gram is taken over it."""
    features = features.detach().float()
    if region is None:
        gram = gram_matrix(features)[0]
    else:
        gram = masked_gram_matrix(features, region.to(features.device))[0]
    return weight * gram


class StyleLoss(nn.Module):
    """Gatys' style loss against a target Gram matrix, per picture.

    target_gram: float32 ``(C, C)``, e.g. a blend of style images' Grams
    (:func:`blended_gram`), shared by the pictures of a batch. forward takes
    features ``(B, C, H, W)`` of any float dtype and returns the fused kernel's
    mean squared Gram difference of each picture, relative to the target's
    mean square: ``(B,)`` float32. `weights` (a style mask at the layer's resolution, ``(H, W)``
    ≥ 0): each picture's Gram is taken over the region they weight (the masked kernels).
    """

    def __init__(self, target_gram: torch.Tensor, weights: Optional[torch.Tensor] = None):
        super().__init__()
        self.register_buffer("target_gram", target_gram.detach().float())
        self.scale = float(_relative_scale(target_gram[None]))
        self.register_buffer("weights", None if weights is None else weights.detach().float().to(target_gram.device))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.weights is not None:
            return torch.stack([masked_style_loss(picture, self.weights, self.target_gram)
                                for picture in features.split(1)]) * self.scale
        # One fused call per picture: the op's batch mean would mix the pictures' losses, and each
        # picture's loss is scaled by its own normaliser later (a channels-last slice of one
        # picture is still dense). split, not indexing: split's backward concatenates the
        # pictures' gradients in their layout, where indexing's writes them into a fresh
        # NCHW tensor; a channels-last gradient among NCHW ones then makes every later
        # gradient sum and ReLU backward a strided pass (a sixth of a 512 px step on the CPU).
        return torch.stack([style_loss(picture, self.target_gram) for picture in features.split(1)]) * self.scale


class TotalVariationLoss(nn.Module):
    """Mean squared difference of neighbouring pixels of each image of ``(B, 3, H, W)``: ``(B,)``;
    smooths high-frequency noise. A picture one pixel wide (or high) has no horizontal (vertical)
    neighbours: that direction adds 0."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        total = image.new_zeros(image.shape[0])
        if image.shape[-1] > 1:
            total = total + per_picture_mean((image[..., :, 1:] - image[..., :, :-1]).square())
        if image.shape[-2] > 1:
            total = total + per_picture_mean((image[..., 1:, :] - image[..., :-1, :]).square())
        return total
