"""Loss modules of the stylizer. Style work runs in the compiled kernels
(:func:`nst_ext.style_loss`, :func:`nst_ext.gram_matrix`); targets are
computed once, when a module is built, not at every step.

Each content and style loss is divided by the mean square of its own target,
so every layer starts near the same scale whatever its depth, the pooling or
the weights' input normalisation (raw VGG19 Gram losses span four orders of
magnitude from relu1_1 to relu4_1). Layer and loss weights are then relative.
"""

from typing import Optional

import torch
from torch import nn

from nst_ext._ops import gram_matrix, style_loss


def _relative_scale(target: torch.Tensor) -> float:
    return 1.0 / max(target.detach().double().square().mean().item(), 1e-12)


class ContentLoss(nn.Module):
    """Mean squared difference to the target features, relative to their mean square.

    target: ``(1, C, H, W)`` features of the content image; forward takes the
    output's features of the same shape and returns a 0-d tensor.
    """

    def __init__(self, target: torch.Tensor):
        super().__init__()
        self.register_buffer("target", target.detach().float())
        self.scale = _relative_scale(target)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return (features.float() - self.target).square().mean() * self.scale


def blended_gram(accumulated: Optional[torch.Tensor], features: torch.Tensor, weight: float) -> torch.Tensor:
    """``accumulated + weight · G(features)``: one style image's share of a blended target Gram.
    features ``(1, C, H, W)``, any float dtype; returns float32 ``(C, C)`` on their device
    (accumulated None: the first image)."""
    gram = weight * gram_matrix(features.detach().float())[0]
    return gram if accumulated is None else accumulated + gram


class StyleLoss(nn.Module):
    """Gatys' style loss against a target Gram matrix.

    target_gram: float32 ``(C, C)``, e.g. a blend of style images' Grams
    (:func:`blended_gram`). forward takes features ``(1, C, H, W)`` of any
    float dtype and returns the fused kernel's mean squared Gram difference,
    relative to the target's mean square, as a 0-d float32 tensor.
    """

    def __init__(self, target_gram: torch.Tensor):
        super().__init__()
        self.register_buffer("target_gram", target_gram.detach().float())
        self.scale = _relative_scale(target_gram)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return style_loss(features, self.target_gram) * self.scale


class TotalVariationLoss(nn.Module):
    """Mean squared difference of neighbouring pixels of an image ``(B, 3, H, W)``; smooths high-frequency noise.
    A picture one pixel wide (or high) has no horizontal (vertical) neighbours: that direction adds 0."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        total = image.new_zeros(())
        if image.shape[-1] > 1:
            total = total + (image[..., :, 1:] - image[..., :, :-1]).square().mean()
        if image.shape[-2] > 1:
            total = total + (image[..., 1:, :] - image[..., :-1, :]).square().mean()
        return total
