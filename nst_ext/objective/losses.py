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

from typing import Optional, Tuple

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


def _weighted_quantiles(values: torch.Tensor, weights: torch.Tensor, count: int) -> torch.Tensor:
    """The quantile function of the weighted samples `values` ``(K, N)`` (each row one distribution;
    `weights` ``(N,)`` ≥ 0, the same for every row) at the `count` mid-points ``(j + ½) / count``: the
    first sample whose cumulative weight reaches each, ``(K, count)``. A step function, so a mixture's
    quantiles are exact (a sample split into parts of any weights is the same sample)."""
    order = values.argsort(dim=1)
    ordered = values.gather(1, order)
    cumulative = weights[order].cumsum(1)
    cumulative = cumulative / cumulative[:, -1:]
    wanted = (torch.arange(count, dtype=cumulative.dtype, device=values.device) + 0.5) / count
    index = torch.searchsorted(cumulative, wanted.expand(values.shape[0], count).contiguous())
    return ordered.gather(1, index.clamp(max=values.shape[1] - 1))


def random_directions(channels: int, count: int, seed: int) -> torch.Tensor:
    """`count` random unit vectors in `channels` dimensions, ``(channels, count)`` float32 on the CPU,
    from `seed` (the same directions for the same seed)."""
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(channels, count, generator=generator, dtype=torch.float64)
    return (directions / directions.norm(dim=0, keepdim=True)).float()


class _DistributionLoss(nn.Module):
    """A style loss computed in float32 (float64 for float64 features) outside VGG's bfloat16 autocast,
    which would otherwise run its own products (projections, square roots) in bfloat16."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        with torch.autocast(features.device.type, enabled=False):
            return self._distance(features, torch.float64 if features.dtype == torch.float64 else torch.float32)

    def _distance(self, features: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        raise NotImplementedError


class SlicedWassersteinLoss(_DistributionLoss):
    """The sliced Wasserstein style loss (Heitz et al. 2021): the whole distribution of a layer's
    features matched to the style's along random directions, each a 1-D optimal transport solved by
    sorting. For features ``(B, C, H, W)`` of any float dtype: per picture, the mean squared difference
    between its sorted projections and the style's quantiles at the same ranks, relative to their
    mean square: ``(B,)`` float32.

    `styles`: each style image's features at the layer, ``(C, N_i)`` (any N_i); `blend`: their weights
    (a style's share of the target distribution); `directions` ``(C, K)`` unit vectors, fixed for the
    stage so that L-BFGS sees one deterministic objective; `cells`: H·W of the pictures scored (the
    target is made at those ranks once). Needs the whole picture in one pass (the sort), so no tiles.
    """

    # Buffers (they move with the module).
    directions: torch.Tensor
    target: torch.Tensor

    def __init__(self, styles, blend, directions: torch.Tensor, cells: int):
        super().__init__()
        device = styles[0].device
        directions = directions.to(device)
        projected = torch.cat([directions.double().t() @ style.double() for style in styles], dim=1)  # (K, ΣN)
        weights = torch.cat(
            [
                torch.full((style.shape[1],), float(share) / style.shape[1], device=device)
                for style, share in zip(styles, blend)
            ]
        )
        self.register_buffer("directions", directions.float())
        self.register_buffer("target", _weighted_quantiles(projected, weights.double(), cells).float())
        self.scale = float(1.0 / self.target.square().mean().clamp(min=1e-12))

    def _distance(self, features: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        flat = features.flatten(2).to(dtype)  # (B, C, n)
        if flat.shape[-1] != self.target.shape[-1]:
            raise ValueError(f"features of {flat.shape[-1]} cells for a target made at {self.target.shape[-1]}")
        projected = torch.einsum("ck,bcn->bkn", self.directions.to(dtype), flat)
        ordered = projected.sort(dim=-1).values
        return (ordered - self.target.to(dtype)).square().mean(dim=(-2, -1)) * self.scale


# Coupled Newton–Schulz iterations for a covariance's square root: enough for the eigenvalues that
# carry the trace (each iteration about squares the error of the larger ones); where the residual
# check fails, the trace comes from the eigenvalues in float64 instead.
NEWTON_SCHULZ_ITERATIONS = 18
SQRT_RESIDUAL_TOLERANCE = 1e-3


def newton_schulz_sqrt(
    matrix: torch.Tensor, iterations: int = NEWTON_SCHULZ_ITERATIONS
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The square root of the symmetric positive semi-definite `matrix` ``(..., C, C)`` (float32 or
    float64) by coupled Newton–Schulz iterations (matrix products only, differentiable), and its
    relative residual ‖X² − A‖_F / ‖A‖_F, ``(...)``."""
    norm = matrix.square().sum(dim=(-2, -1), keepdim=True).sqrt().clamp(min=1e-30)
    eye = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device).expand_as(matrix)
    y, z = matrix / norm, eye
    for _ in range(iterations):
        step = 0.5 * (3 * eye - z @ y)
        y, z = y @ step, step @ z
    root = y * norm.sqrt()
    residual = (root @ root - matrix).square().sum(dim=(-2, -1)).sqrt() / norm[..., 0, 0]
    return root, residual


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """The square root of a symmetric PSD float64 matrix by its eigenvalues (targets only: no gradient)."""
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.transpose(-2, -1)


def _trace_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """tr √A of symmetric PSD ``(B, C, C)``: Newton–Schulz in float32, or for float64 matrices (the
    reference's precision) and where Newton–Schulz's residual is above SQRT_RESIDUAL_TOLERANCE, the
    eigenvalues' square roots in float64 (their gradient is well defined for repeated eigenvalues too). The check reads the residual on the host,
    so not while a CUDA graph is captured (the capture keeps Newton–Schulz)."""
    if matrix.dtype != torch.float64:
        root, residual = newton_schulz_sqrt(matrix)
        capturing = matrix.is_cuda and torch.cuda.is_current_stream_capturing()
        if capturing or not bool((residual > SQRT_RESIDUAL_TOLERANCE).any()):
            return root.diagonal(dim1=-2, dim2=-1).sum(-1)
    symmetric = 0.5 * (matrix + matrix.transpose(-2, -1))
    values = torch.linalg.eigvalsh(symmetric.double()).clamp(min=1e-12)
    return values.sqrt().sum(-1).to(matrix.dtype)


class GaussianW2Loss(_DistributionLoss):
    """The Wasserstein-2 distance between Gaussians as a style loss (as crowsonkb's style-transfer-
    pytorch uses it): each layer's features summarised by their mean μ and covariance Σ (the Gram of
    the centred features, from the compiled Gram op), matched to the style's,
    ``‖μ − μₛ‖² + tr Σ + tr Σₛ − 2 tr (Σₛ^½ Σ Σₛ^½)^½``, relative to the style's mean square
    ``tr E[ffᵀ]``. For features ``(B, C, H, W)`` of any float dtype it returns ``(B,)`` float32 (float64
    for float64 features).

    `styles`: each style image's features at the layer, ``(C, N_i)``; `blend`: their weights; `sources`:
    for each, None or weights ``(N_i,)`` ≥ 0 (a style-image mask at the layer, flattened), the part
    whose moments count. The target is the mixture's mean and covariance (its moments, blended).
    `weights` ``(H, W)`` ≥ 0 (a style mask at the layer): the picture's moments are taken over the
    region they weight (the masked Gram op), and a region with no weight at this layer costs 0. Needs
    the whole picture in one pass (no tiles).
    """

    # Buffers (they move with the module).
    mean: torch.Tensor
    root: torch.Tensor
    weights: Optional[torch.Tensor]
    region_index: Optional[torch.Tensor]

    def __init__(self, styles, blend, sources=None, weights: Optional[torch.Tensor] = None):
        super().__init__()
        total = sum(float(share) for share in blend)
        mean = torch.zeros(styles[0].shape[0], dtype=torch.float64, device=styles[0].device)
        second = torch.zeros(mean.shape * 2, dtype=torch.float64, device=mean.device)
        for style, share, source in zip(styles, blend, sources or [None] * len(styles)):
            features = style.double()
            if source is None:
                share_of_cells = torch.full((features.shape[1],), 1.0 / features.shape[1], dtype=torch.float64)
            else:
                source = source.double().flatten()
                share_of_cells = source / source.sum().clamp(min=torch.finfo(torch.float64).tiny)
            share_of_cells = share_of_cells.to(features.device) * (float(share) / total)
            mean = mean + features @ share_of_cells
            second = second + (features * share_of_cells) @ features.t()
        covariance = second - torch.outer(mean, mean)
        covariance = 0.5 * (covariance + covariance.t())
        # In float64 (C × C, small): float64 features are scored to their precision.
        self.register_buffer("mean", mean)
        self.register_buffer("root", _psd_sqrt(covariance))
        self.trace = float(covariance.diagonal().sum().clamp(min=0))
        self.scale = float(1.0 / max(float(second.diagonal().sum()), 1e-12))
        region = None if weights is None else weights.detach().float().to(mean.device)
        self.register_buffer("weights", region)
        # Fixed with the region: read once here, not on the host at every evaluation.
        self.mass = None if region is None else float(region.sum())
        self.region_cells = None if region is None else int((region > 0).sum())
        # The region's cells by index, for the N × N form (a boolean mask would read its count on
        # the host at every evaluation).
        cells = None if region is None else torch.nonzero(region.flatten() > 0).flatten()
        self.register_buffer("region_index", cells)

    def _distance(self, features: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        flat = features.flatten(2).to(dtype)  # (B, C, N)
        if self.weights is None:
            share = torch.full(flat.shape[-1:], 1.0 / flat.shape[-1], dtype=dtype, device=flat.device)
            second = gram_matrix(features).to(dtype)
            cells = flat.shape[-1]
        else:
            if not self.mass:  # the region has no weight at this layer
                return torch.zeros(flat.shape[0], dtype=dtype, device=flat.device)
            share = self.weights.to(device=flat.device, dtype=dtype).flatten() / self.mass
            second = masked_gram_matrix(features, self.weights.to(features.device)).to(dtype)
            cells = int(self.region_cells or 0)
        mean = flat @ share  # (B, C)
        covariance = second - mean[:, :, None] * mean[:, None, :]
        root = self.root.to(dtype)
        if cells < flat.shape[1]:
            # Fewer cells than channels (a deep layer of a small stage, a small region): Σ has rank
            # < N, and the nonzero eigenvalues of Σₛ^½ Σ Σₛ^½ = Y Yᵀ (Y = Σₛ^½ (F − μ) diag(share)^½,
            # the region's cells) are those of the N × N Yᵀ Y, which has no zero ones to slow the
            # iterations.
            if self.region_index is not None:
                index = self.region_index.to(flat.device)
                flat, share = flat.index_select(-1, index), share.index_select(0, index)
            centred = root @ ((flat - mean[:, :, None]) * share.sqrt())
            product = centred.transpose(-2, -1) @ centred
        else:
            product = root @ covariance @ root
        product = 0.5 * (product + product.transpose(-2, -1))
        distance = (
            (mean - self.mean.to(dtype)).square().sum(-1)
            + covariance.diagonal(dim1=-2, dim2=-1).sum(-1)
            + self.trace
            - 2 * _trace_sqrt(product)
        )
        return distance.clamp(min=0) * self.scale
