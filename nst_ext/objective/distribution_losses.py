"""The distribution-matching style losses (``style_loss`` "sliced" and "w2"): each layer's features
taken as a distribution, matched to the style's whole along random directions (sliced Wasserstein,
1-D optimal transport by sorting) or as a Gaussian (the Wasserstein-2 distance of mean and
covariance, the covariance's square root by Newton–Schulz). As nst_ext.objective.losses' losses,
each returns one value per picture ``(B,)``, relative to the style's own scale; each needs the
whole picture in one pass (no tiles), and takes a style mask's region.
"""

from typing import List, Optional, Tuple

import torch
from torch import nn

from nst_ext.ops.dispatch import gram_matrix, masked_gram_matrix


def _sorted_with_cumulative(values: torch.Tensor, weights: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The weighted samples `values` ``(K, N)`` (each row one distribution; `weights` ``(N,)`` ≥ 0,
    the same for every row) in ascending order, and their cumulative weights as shares of the total:
    the quantile function's steps (:func:`_quantiles_at`)."""
    order = values.argsort(dim=1)
    cumulative = weights[order].cumsum(1)
    return values.gather(1, order), cumulative / cumulative[:, -1:]


def _quantiles_at(ordered: torch.Tensor, cumulative: torch.Tensor, shares: torch.Tensor) -> torch.Tensor:
    """The quantile function of :func:`_sorted_with_cumulative`'s ``(K, N)`` at `shares` ``(K, M)``
    in [0, 1]: the first sample whose cumulative weight reaches each, ``(K, M)``."""
    index = torch.searchsorted(cumulative, shares.contiguous())
    return ordered.gather(1, index.clamp(max=ordered.shape[1] - 1))


def _weighted_quantiles(values: torch.Tensor, weights: torch.Tensor, count: int) -> torch.Tensor:
    """The quantile function of the weighted samples `values` ``(K, N)`` (each row one distribution;
    `weights` ``(N,)`` ≥ 0, the same for every row) at the `count` mid-points ``(j + ½) / count``: the
    first sample whose cumulative weight reaches each, ``(K, count)``. A step function, so a mixture's
    quantiles are exact (a sample split into parts of any weights is the same sample)."""
    return _at_mid_ranks(*_sorted_with_cumulative(values, weights), count)


def _at_mid_ranks(ordered: torch.Tensor, cumulative: torch.Tensor, count: int) -> torch.Tensor:
    """:func:`_quantiles_at` the `count` mid-points ``(j + ½) / count``, ``(K, count)``."""
    wanted = (torch.arange(count, dtype=cumulative.dtype, device=ordered.device) + 0.5) / count
    return _quantiles_at(ordered, cumulative, wanted.expand(ordered.shape[0], count))


def _style_cell_shares(styles, blend, sources) -> List[torch.Tensor]:
    """Each style image's cells' shares of the blended style distribution, ``(N_i,)`` float64 on its
    device: a style's blend weight (of their total) spread evenly over its cells, or over its source
    region (`sources[i]`, weights ``(N_i,)`` ≥ 0, or None for all of it) in proportion to the weights."""
    total = sum(float(share) for share in blend)
    shares = []
    for style, share, source in zip(styles, blend, sources or [None] * len(styles)):
        if source is None:
            part = torch.full((style.shape[1],), 1.0 / style.shape[1], dtype=torch.float64, device=style.device)
        else:
            source = source.double().flatten().to(style.device)
            part = source / source.sum().clamp(min=torch.finfo(torch.float64).tiny)
        shares.append(part * (float(share) / total))
    return shares


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
    target is made at those ranks once); `sources`: for each style, None or weights ``(N_i,)`` ≥ 0 (a
    style-image mask at the layer, flattened), the part whose distribution counts.
    `weights` ``(H, W)`` ≥ 0 (a style mask at the layer): the picture's distribution is that of the
    region's cells, each counting by its weight: its sorted projections are compared with the
    style's quantiles at their weighted mid-ranks, the squares weighed alike, so that equal weights
    over a region give the unmasked loss of the region's cells alone; a region with no weight at
    this layer costs 0. Needs the whole picture in one pass (the sort), so no tiles.
    """

    # Buffers (they move with the module).
    directions: torch.Tensor
    target: torch.Tensor
    ordered: Optional[torch.Tensor]
    cumulative: Optional[torch.Tensor]
    weights: Optional[torch.Tensor]
    region_index: Optional[torch.Tensor]

    def __init__(self, styles, blend, directions: torch.Tensor, cells: int, sources=None, weights=None):
        super().__init__()
        device = styles[0].device
        directions = directions.to(device)
        projected = torch.cat([directions.double().t() @ style.double() for style in styles], dim=1)  # (K, ΣN)
        ordered, cumulative = _sorted_with_cumulative(projected, torch.cat(_style_cell_shares(styles, blend, sources)))
        self.register_buffer("directions", directions.float())
        self.register_buffer("target", _at_mid_ranks(ordered, cumulative, cells).float())
        self.scale = float(1.0 / self.target.square().mean().clamp(min=1e-12))
        region = None if weights is None else weights.detach().double().flatten().to(device)
        index = None if region is None else torch.nonzero(region > 0).flatten()
        # A masked loss reads the style's quantile function at its region's mid-ranks every step.
        self.register_buffer("ordered", None if region is None else ordered.float())
        self.register_buffer("cumulative", None if region is None else cumulative)  # float64: exact ranks
        self.register_buffer("weights", None if region is None else region[index])
        self.register_buffer("region_index", index)
        self.mass = None if region is None else float(region.sum())

    def _distance(self, features: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        flat = features.flatten(2).to(dtype)  # (B, C, n)
        if self.weights is None:
            if flat.shape[-1] != self.target.shape[-1]:
                raise ValueError(f"features of {flat.shape[-1]} cells for a target made at {self.target.shape[-1]}")
            projected = torch.einsum("ck,bcn->bkn", self.directions.to(dtype), flat)
            ordered = projected.sort(dim=-1).values
            return (ordered - self.target.to(dtype)).square().mean(dim=(-2, -1)) * self.scale
        if not self.mass:  # the region has no weight at this layer
            return torch.zeros(flat.shape[0], dtype=dtype, device=flat.device)
        assert self.ordered is not None and self.cumulative is not None and self.region_index is not None
        flat = flat.index_select(-1, self.region_index.to(flat.device))  # (B, C, m): the region's cells
        projected = torch.einsum("ck,bcn->bkn", self.directions.to(dtype), flat)
        ordered, order = projected.sort(dim=-1)
        weights = self.weights.to(flat.device)[order]  # (B, K, m), float64
        mid_ranks = (weights.cumsum(-1) - 0.5 * weights) / self.mass
        batch, directions, cells = mid_ranks.shape
        shares = mid_ranks.transpose(0, 1).reshape(directions, batch * cells)
        target = _quantiles_at(self.ordered, self.cumulative, shares).reshape(directions, batch, cells).transpose(0, 1)
        squares = (ordered - target.to(dtype)).square() * weights.to(dtype)
        return squares.sum(dim=(-2, -1)) / (self.mass * directions) * self.scale


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
        mean = torch.zeros(styles[0].shape[0], dtype=torch.float64, device=styles[0].device)
        second = torch.zeros(mean.shape * 2, dtype=torch.float64, device=mean.device)
        for style, share_of_cells in zip(styles, _style_cell_shares(styles, blend, sources)):
            features = style.double()
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
