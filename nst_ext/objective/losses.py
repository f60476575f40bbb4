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

from nst_ext.ops.dispatch import gram_matrix, masked_gram_matrix, masked_style_loss, style_loss


# Elements per chunk when a target's mean square is summed in float64: a print-sized content target
# is gigabytes, and a float64 copy of it whole would double that.
_SQUARES_CHUNK = 2**24


def _relative_scale(target: torch.Tensor) -> torch.Tensor:
    """1 / the mean square of each picture's target, ``(B,)`` float32 (from ``(B, ...)``), summed in
    float64 a chunk at a time."""
    flat = target.detach().reshape(target.shape[0], -1)
    sums = sum(chunk.double().square().sum(1) for chunk in flat.split(max(1, _SQUARES_CHUNK // len(flat)), dim=1))
    mean_square = sums / flat.shape[1]
    return (1.0 / mean_square.clamp(min=1e-12)).float()


def _at_least_float32(features: torch.Tensor) -> torch.Tensor:
    """Half-precision features as float32; float32 and float64 as they are."""
    return features.to(torch.promote_types(features.dtype, torch.float32))


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

    target: ``(B, C, H, W)`` features of the content images, kept in `dtype` (float32, or
    bfloat16 for half the memory: the loss of the rounded target); forward takes the output's
    features of the same shape and returns ``(B,)`` float32, the difference taken in float32.
    `weights` (a content mask at the layer's resolution, ``(H, W)`` ≥ 0): the mean is taken over
    the region they weight (0 where they are all 0).
    """

    # Buffers (they move with the module).
    target: torch.Tensor
    scale: torch.Tensor
    weights: Optional[torch.Tensor]

    def __init__(
        self, target: torch.Tensor, weights: Optional[torch.Tensor] = None, dtype: torch.dtype = torch.float32
    ):
        super().__init__()
        target = target.detach().to(dtype)
        self.register_buffer("target", target)
        self.register_buffer("scale", _relative_scale(target))
        self.register_buffer("weights", None)
        if weights is not None:
            weights = weights.detach().float().to(target.device)
            mass = float(weights.sum())
            # Sum of w·d² over the region ÷ (C · Σw): the mean over the region, as the unmasked mean is.
            self.weights = weights * (weights.numel() / mass if mass > 0 else 0.0)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        squares = (_at_least_float32(features) - self.target).square()
        if self.weights is not None:
            squares = squares * self.weights
        return per_picture_mean(squares) * self.scale

    def part(self, features: torch.Tensor, rows: slice, columns: slice) -> torch.Tensor:
        """This loss's share from the cells ``[rows, columns]`` of the layer (a tile's own cells,
        nst_ext.plan.tiles): `features` ``(B, C, h, w)`` are those cells; the shares of cells that cover
        the layer add up to :meth:`forward` of the whole, ``(B,)`` float32."""
        squares = (_at_least_float32(features) - self.target[..., rows, columns]).square()
        if self.weights is not None:
            squares = squares * self.weights[rows, columns]
        return squares.sum(dim=(1, 2, 3)) / self.target[0].numel() * self.scale


def blended_gram(features: torch.Tensor, weight: float, region: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``weight · G(features)``: one style image's share of a blended target Gram. features
    ``(1, C, H, W)``, any float dtype; returns float32 ``(C, C)`` on their device. `region`:
    weights ``(H, W)`` of the part of the style image that is the source (a style-image mask):
    the Gram is taken over it."""
    features = features.detach()
    if region is None:
        gram = gram_matrix(features)[0]
    else:
        gram = masked_gram_matrix(features, region.to(features.device))[0]
    return weight * gram.float()


def gram_share(
    features: torch.Tensor, cells: int, weights: Optional[torch.Tensor] = None, mass: Optional[float] = None
) -> Optional[torch.Tensor]:
    """The share of a layer's Gram from some of its cells: `features` ``(B, C, h, w)`` are those
    cells of a layer that has `cells` in all. With `weights` ``(h, w)`` (a region's, at those
    cells) and `mass` (the region's total weight over the layer), of the masked Gram; None where
    the region has no weight among them. ``(B, C, C)`` in the accumulation dtype."""
    if weights is None:
        return gram_matrix(features) * (features.shape[-2] * features.shape[-1] / cells)
    if mass is None:
        raise ValueError("gram_share needs the region's mass with its weights")
    part = float(weights.sum())
    if part == 0:
        return None
    return masked_gram_matrix(features, weights.to(features.device)) * (part / mass)


class StyleLoss(nn.Module):
    """Gatys' style loss against a target Gram matrix, per picture.

    target_gram: float32 ``(C, C)``, e.g. a blend of style images' Grams
    (:func:`blended_gram`), shared by the pictures of a batch. forward takes
    features ``(B, C, H, W)`` of any float dtype and returns the fused kernel's
    mean squared Gram difference of each picture, relative to the target's
    mean square: ``(B,)`` float32. `weights` (a style mask at the layer's resolution, ``(H, W)``
    ≥ 0): each picture's Gram is taken over the region they weight (the masked kernels).
    """

    # Buffers (they move with the module).
    target_gram: torch.Tensor
    weights: Optional[torch.Tensor]

    def __init__(self, target_gram: torch.Tensor, weights: Optional[torch.Tensor] = None):
        super().__init__()
        self.register_buffer("target_gram", target_gram.detach().float())
        self.scale = float(_relative_scale(target_gram[None]))
        region = None if weights is None else weights.detach().float().to(target_gram.device)
        self.register_buffer("weights", region)
        self.mass: Optional[float] = None if region is None else float(region.sum())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.weights is not None:
            return (
                torch.stack(
                    [masked_style_loss(picture, self.weights, self.target_gram) for picture in features.split(1)]
                )
                * self.scale
            )
        # One fused call per picture: the op's batch mean would mix the pictures' losses, and each
        # picture's loss is scaled by its own normaliser later (a channels-last slice of one
        # picture is still dense). split, not indexing: split's backward concatenates the
        # pictures' gradients in their layout, where indexing's writes them into a fresh
        # NCHW tensor; a channels-last gradient among NCHW ones then makes every later
        # gradient sum and ReLU backward a strided pass (a sixth of a 512 px step on the CPU).
        return torch.stack([style_loss(picture, self.target_gram) for picture in features.split(1)]) * self.scale

    def part_gram(self, features: torch.Tensor, rows: slice, columns: slice, cells: int) -> Optional[torch.Tensor]:
        """The share of the Gram (masked: over the region) from the layer's cells ``[rows,
        columns]`` (a tile's own; `features` ``(B, C, h, w)`` are those cells, `cells` how many the
        whole layer has): ``(B, C, C)`` in the accumulation dtype, or None where the region has no
        weight among them. The shares of cells that cover the layer add up to its Gram."""
        return gram_share(features, cells, None if self.weights is None else self.weights[rows, columns], self.mass)

    def from_gram(self, gram: torch.Tensor) -> torch.Tensor:
        """The loss of features whose Gram (masked: over the region) is `gram` ``(B, C, C)``:
        ``(B,)``, what :meth:`forward` gives for them (differentiable in `gram`)."""
        return (gram - self.target_gram.to(gram.dtype)).square().mean(dim=(-2, -1)) * self.scale


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

    def part(self, strip: torch.Tensor, rows: int, height: int) -> torch.Tensor:
        """This loss's share from `rows` rows of a picture `height` rows high: `strip` ``(B, 3, r, W)``
        holds those rows and, when there is one, the row after them (their vertical neighbour). The
        shares of strips that cover the picture add up to :meth:`forward` of it, ``(B,)``."""
        channels, width = strip.shape[1], strip.shape[-1]
        total = strip.new_zeros(strip.shape[0])
        if width > 1:
            own = strip[..., :rows, :]
            total = total + (own[..., 1:] - own[..., :-1]).square().sum(dim=(1, 2, 3)) / (
                channels * height * (width - 1)
            )
        if height > 1:
            total = total + (strip[..., 1:, :] - strip[..., :-1, :]).square().sum(dim=(1, 2, 3)) / (
                channels * (height - 1) * width
            )
        return total


class TemporalLoss:
    """The temporal term of a video frame (Ruder, Dosovitskiy & Brox 2016), unweighted: the mean over
    pixels of mask · (image − previous)², ``(B,)``. `previous` ``(1, 3, H, W)``: the previous stylized
    frame warped to this one; `mask` ``(1, 1, H, W)`` in [0, 1]: 1 where it is trusted."""

    def __init__(self, previous: torch.Tensor, mask: torch.Tensor):
        self.previous, self.mask = previous, mask

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return per_picture_mean(self.mask * (image - self.previous).square())

    def part(self, own: torch.Tensor, top: int) -> torch.Tensor:
        """This term's share from the rows of `own` ``(B, 3, r, W)``, the picture's from row `top` on.
        The shares of strips that cover the picture add up to the whole's, ``(B,)``."""
        channels, height, width = self.previous.shape[1:]
        rows = slice(top, top + own.shape[-2])
        change = (own - self.previous[..., rows, :]).square() * self.mask[..., rows, :]
        return change.sum(dim=(1, 2, 3)) / (channels * height * width)
