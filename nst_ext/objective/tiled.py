"""One stage's loss and gradient evaluated tile by tile (nst_ext.plan.tiles), exactly.

A Gram matrix is a sum over positions, so the picture's Gram is the sum of the tiles' shares of it
(each tile's own cells, their features exact thanks to the halo). An evaluation makes two passes:

1. without gradients, each tile's shares of every style layer's Gram and of the content terms:
   then the style terms of the whole picture, and the style term's gradient in each Gram, dL/dG;
2. with gradients, each tile again, scoring ⟨dL/dG, the tile's share of G⟩ (whose gradient in the
   tile's features is the whole picture's, since G is linear in each tile's share) plus its share of
   the content terms; the tile's input gradient, halo included, is added into the picture's.

Total variation and the temporal term are elementwise and are summed over strips of rows. Tiles
and strips are clamped one at a time, so nothing picture-sized is made but the gradient. The loss
and gradient are the untiled picture's, up to the order of float summation (tested in float64), for
one tile's activations at a time plus one more forward pass per step, less one tile's: the first pass
runs its largest tile last and with gradients, and the second pass only differentiates that graph.
"""

from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, cast

import torch

from nst_ext.plan import tiles as tiling
from nst_ext.plan.layers import LAYER_INDEX, LAYERS, layer_shape
from nst_ext.objective.losses import StyleLoss, gram_share
from nst_ext.objective.terms import with_total

if TYPE_CHECKING:
    from nst_ext.objective.stage import Objective

# A score sees one segment's features of one tile and the (B,) zero of their device, and returns
# that segment's (content, style) values, (B,) each.
Score = Callable[[Dict[str, torch.Tensor], torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]


def tiles_for(objective: "Objective", shape: Sequence[int]) -> List[tiling.Tile]:
    """The tiles of a picture of `shape` (H, W) under the objective's tile edge; [] when it is
    untiled or the picture is one tile."""
    height, width = shape
    edge = objective.tile_edge
    if not edge or (height <= edge and width <= edge):
        return []
    return tiling.split(height, width, edge, objective.layers)


def _pools(name: str) -> int:
    return LAYERS[LAYER_INDEX[name]].pools_before


def _owned(
    features: Dict[str, torch.Tensor], tile: tiling.Tile, terms: Sequence[Tuple[str, Any, Any]]
) -> Iterator[Tuple[int, Any, Any, torch.Tensor, slice, slice]]:
    """For each ``(name, weight, loss)`` of `terms` whose layer is among `features` and has cells
    the tile owns (a tile narrower than a deep layer's cell may own none there): its index in
    `terms`, weight and loss, the tile's own cells of the features, and their (rows, columns) in
    the picture's map."""
    for index, (name, weight, term) in enumerate(terms):
        if name not in features:
            continue
        rows_here, columns_here, rows, columns = tile.own_cells(_pools(name))
        own = features[name][..., rows_here, columns_here]
        if own.shape[-2] and own.shape[-1]:
            yield index, weight, term, own, rows, columns


def _cells(name: str, height: int, width: int) -> int:
    """How many cells layer `name` has for a `height` x `width` picture."""
    _, rows, columns = layer_shape(name, height, width)
    return rows * columns


def run(
    objective: "Objective",
    images: torch.Tensor,
    tiles: Sequence[tiling.Tile],
    score_for: Callable[[tiling.Tile], Score],
    gradients: Optional[Sequence[torch.Tensor]] = None,
    clamp: bool = False,
) -> None:
    """Each tile of `images` ``(B, 3, H, W)`` (`clamp`: clamped to [0, 1], as the loss scores them)
    through the objective's VGG segments, its features given to ``score_for(tile)``. With
    `gradients` (one ``(1, 3, H, W)`` per picture), the sum of the scores is differentiated and each
    tile's input gradient, halo included, added into them; else no graph is made."""
    for tile in tiles:
        if gradients is None:
            with torch.no_grad():
                _through_network(objective, images, tile, score_for(tile), clamp)
            continue
        crop, content, style = _through_network(objective, images, tile, score_for(tile), clamp, graph=True)
        (content + style).sum().backward()
        _add_gradient(gradients, tile, _filled_grad(crop))
        del crop, content, style


def _through_network(
    objective: "Objective", images: torch.Tensor, tile: tiling.Tile, score: Score, clamp: bool, graph: bool = False
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The `tile` of `images` ``(B, 3, H, W)``, halo included (clamped to [0, 1] with `clamp`),
    through the objective's VGG segments with `score`: the tile's input ``(B, 3, h, w)`` (a leaf
    that requires grad with `graph`) and the sums of its (content, style), ``(B,)`` each."""
    top, bottom, left, right = tile.read
    crop = images[..., top:bottom, left:right].detach().requires_grad_(graph)
    content, style = objective.through_network(crop.clamp(0, 1) if clamp else crop, score)
    return crop, content, style


def _filled_grad(leaf: torch.Tensor) -> torch.Tensor:
    """`leaf`'s gradient, which the backward pass just run has filled."""
    if leaf.grad is None:
        raise RuntimeError("a tile's backward pass did not reach its input")
    return leaf.grad


def _add_gradient(gradients: Sequence[torch.Tensor], tile: tiling.Tile, tile_gradient: torch.Tensor) -> None:
    """A tile's input gradient ``(B, 3, h, w)``, halo included, added into the pictures'."""
    top, bottom, left, right = tile.read
    for index, gradient in enumerate(gradients):
        gradient[..., top:bottom, left:right] += tile_gradient[index : index + 1]


def content_pass(
    objective: "Objective",
    images: torch.Tensor,
    names: Sequence[str],
    style_terms=(),
    dtype: torch.dtype = torch.float32,
) -> Tuple[Dict[str, torch.Tensor], List[torch.Tensor]]:
    """One pass without gradients over the tiles of `images` ``(B, 3, H, W)``: their features at the
    named layers, ``(B, C, H', W')`` of `dtype` on the first device, put together from the tiles' own
    cells (the content targets); and the Gram each of `style_terms` scores, ``(B, C, C)`` each (the
    style normalisation's), from the same pass."""
    height, width = images.shape[-2:]
    device = objective.network.device
    assembled = {
        name: torch.empty((images.shape[0], *layer_shape(name, height, width)), device=device, dtype=dtype)
        for name in names
    }
    layers = [(name, None, name) for name in names]

    def keep(tile: tiling.Tile) -> Score:
        def score(features: Dict[str, torch.Tensor], zero: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
            for _, _, name, own, rows, columns in _owned(features, tile, layers):
                assembled[name][..., rows, columns] = own.to(device, dtype)
            return zero, zero

        return score

    grams_of = _first_pass(objective, images, style_terms, also=keep)[0]
    return assembled, grams_of


def objective_tiles(objective: "Objective", images: torch.Tensor) -> List[tiling.Tile]:
    """The objective's tiles when `images` have the stage's shape, else those of their own shape."""
    tiles = objective.tiles
    if tiles and (tiles[0].height, tiles[0].width) == tuple(images.shape[-2:]):
        return tiles
    return tiles_for(objective, images.shape[-2:]) or tiling.split(
        images.shape[-2], images.shape[-1], tiling.tile_edge(max(images.shape[-2:]), objective.layers), objective.layers
    )


def _first_pass(
    objective: "Objective",
    images: torch.Tensor,
    style_terms,
    content_terms=(),
    clamp: bool = False,
    also: Optional[Callable[[tiling.Tile], Score]] = None,
    kept: Optional[tiling.Tile] = None,
) -> Tuple[List[torch.Tensor], torch.Tensor, Optional[torch.Tensor]]:
    """One pass without gradients over the tiles of `images` ``(B, 3, H, W)`` (`clamp`: each tile
    clamped to [0, 1]): the Gram each of `style_terms` scores (``(B, C, C)`` each) and the weighted
    sum of `content_terms`, ``(B,)``; ``also(tile)``'s score is given each tile's features too.
    `kept`: one of the tiles, run last and with gradients, so that the Grams and the content sum
    carry its graph (and only its), for the second pass to differentiate; its input leaf
    ``(B, 3, h, w)`` is returned last (else None)."""
    height, width = images.shape[-2:]
    totals: List[Optional[torch.Tensor]] = [None] * len(style_terms)
    content = torch.zeros(images.shape[0], device=images.device)
    cells = [_cells(name, height, width) for name, _, _ in style_terms]

    def score_for(tile: tiling.Tile) -> Score:
        extra = also(tile) if also is not None else None

        def score(features: Dict[str, torch.Tensor], zero: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
            nonlocal content
            if extra is not None:
                extra(features, zero)
            for _, weight, term, own, rows, columns in _owned(features, tile, content_terms):
                content = content + (weight * term.part(own, rows, columns)).to(images.device)
            for index, _, term, own, rows, columns in _owned(features, tile, style_terms):
                share = term.part_gram(own, rows, columns, cells[index])
                if share is not None:
                    totals[index] = share if totals[index] is None else totals[index] + share
            return zero, zero

        return score

    tiles = objective_tiles(objective, images)
    run(objective, images, [tile for tile in tiles if tile is not kept], score_for, clamp=clamp)
    kept_crop = None
    if kept is not None:
        with torch.enable_grad():
            kept_crop = _through_network(objective, images, kept, score_for(kept), clamp, graph=True)[0]
    result = []
    for (name, _, term), total in zip(style_terms, totals):
        if total is None:  # a region with no weight anywhere: its Gram is 0
            channels = layer_shape(name, height, width)[0]
            total = torch.zeros((images.shape[0], channels, channels), device=term.target_gram.device)
        result.append(total)
    return result, content, kept_crop


def image_grams(
    objective: "Objective", image: torch.Tensor, names: Sequence[str], regions: Dict[str, torch.Tensor]
) -> Dict[str, torch.Tensor]:
    """A style image's Grams ``(C, C)`` float32 at the named layers, made tile by tile; at a layer
    with a region (its source, ``(H', W')`` weights), over the region. `image` ``(1, 3, H, W)``."""
    height, width = image.shape[-2:]
    totals: Dict[str, torch.Tensor] = {}
    masses = {name: float(region.sum()) for name, region in regions.items()}

    def score_for(tile: tiling.Tile) -> Score:
        def score(features: Dict[str, torch.Tensor], zero: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
            for _, _, name, own, rows, columns in _owned(features, tile, [(name, None, name) for name in names]):
                region = regions.get(name)
                share = gram_share(
                    own.detach(),
                    _cells(name, height, width),
                    None if region is None else region[rows, columns],
                    masses.get(name),
                )
                if share is not None:
                    totals[name] = share + totals[name] if name in totals else share
            return zero, zero

        return score

    run(objective, image, objective_tiles(objective, image), score_for)
    device = objective.network.device
    return {
        name: totals[name][0].float()
        if name in totals
        else torch.zeros((layer_shape(name, height, width)[0],) * 2, device=device)
        for name in names
    }


def _style_of(objective: "Objective", gram_totals: Sequence[torch.Tensor], device) -> torch.Tensor:
    """The weighted style term of pictures whose Grams (per style term) are `gram_totals`, ``(B,)``."""
    style = sum(
        (weight * cast(StyleLoss, term).from_gram(gram)).to(device)  # tiles are Gram terms' (StyleOptions.validate)
        for (_, weight, term), gram in zip(objective.style_terms, gram_totals)
    )
    return objective.options.style_weight * cast(torch.Tensor, style)  # a stage has at least one style term


# Rows of the picture per strip when the elementwise terms are summed strip by strip.
STRIP_ROWS = 256


def _local_terms(
    objective: "Objective", images: torch.Tensor, gradients: Optional[Sequence[torch.Tensor]] = None
) -> Dict[str, torch.Tensor]:
    """Total variation and the temporal term of `images` ``(B, 3, H, W)`` (clamped when the loss is),
    weighted, ``(B,)`` each: what :meth:`Objective.local_terms` gives, summed over strips of rows
    (each with the next row, its vertical neighbour), so that nothing picture-sized is made. With
    `gradients` (one ``(1, 3, H, W)`` per picture), their gradient is added into them."""
    options = objective.options
    batch, height = images.shape[0], images.shape[-2]
    tv = torch.zeros(batch, dtype=torch.float64, device=images.device)
    temporal = torch.zeros_like(tv)
    for top in range(0, height, STRIP_ROWS):
        bottom = min(height, top + STRIP_ROWS)
        strip = images[..., top : min(height, bottom + 1), :].detach().requires_grad_(gradients is not None)
        with torch.set_grad_enabled(gradients is not None):
            seen = strip.clamp(0, 1) if options.clamp_in_loss else strip
            own = seen[..., : bottom - top, :]
            strip_tv = options.tv_weight * objective.tv_loss.part(seen, bottom - top, height)
            strip_temporal = torch.zeros_like(strip_tv)
            if objective.temporal is not None:
                temporal_loss, weight = objective.temporal
                strip_temporal = weight * temporal_loss.part(own, top)
        if gradients is not None:
            (strip_tv + strip_temporal).sum().backward()
            for index, gradient in enumerate(gradients):
                gradient[..., top : top + strip.shape[-2], :] += _filled_grad(strip)[index : index + 1]
        tv += strip_tv.detach().double()
        temporal += strip_temporal.detach().double()
    return {"tv": tv.float(), "temporal": temporal.float()}


def values(objective: "Objective", images: torch.Tensor) -> Dict[str, torch.Tensor]:
    """The terms at `images` ``(B, 3, H, W)`` without gradients: ``(B,)`` float32 each, by name."""
    with torch.no_grad():
        gram_totals, content, _ = _first_pass(
            objective, images, objective.style_terms, objective.content_terms, objective.options.clamp_in_loss
        )
        return with_total(
            {
                "content": objective.options.content_weight * content,
                "style": _style_of(objective, gram_totals, images.device),
                **_local_terms(objective, images),
            }
        )


def _kept_tile(objective: "Objective") -> Optional[tiling.Tile]:
    """The tile whose graph the first pass keeps for the second, so that one tile is not run through
    VGG twice (BENCHMARKS.md, "Any size, in tiles"): the one that reads the most pixels. The second
    pass holds one tile's graph at a time anyway, so this costs no memory; none under checkpointing,
    whose segments would be recomputed from inside a score, and none for a single tile."""
    if objective.checkpointing or len(objective.tiles) < 2:
        return None
    return max(objective.tiles, key=lambda tile: (tile.read[1] - tile.read[0]) * (tile.read[3] - tile.read[2]))


def evaluate(objective: "Objective", leaves: Sequence[torch.Tensor]) -> Dict[str, torch.Tensor]:
    """One tiled evaluation at the pictures `leaves` (each ``(1, 3, H, W)``, requires_grad): fills
    each leaf's ``grad`` and returns the terms, ``(B,)`` float32 each, by name. Nothing
    picture-sized is made but the gradients (the tiles and strips are clamped one at a time)."""
    options = objective.options
    images = leaves[0].detach() if len(leaves) == 1 else torch.cat([leaf.detach() for leaf in leaves])
    kept = _kept_tile(objective)
    gram_totals, content, kept_crop = _first_pass(
        objective, images, objective.style_terms, objective.content_terms, options.clamp_in_loss, kept=kept
    )
    # The style term of the whole picture, differentiated in each Gram.
    gram_leaves = [total.detach().requires_grad_(True) for total in gram_totals]
    with torch.enable_grad():
        style = _style_of(objective, gram_leaves, images.device)
        slopes = torch.autograd.grad(style.sum(), gram_leaves, allow_unused=True)
    cells = [_cells(name, *images.shape[-2:]) for name, _, _ in objective.style_terms]

    def style_share(index: int, share: torch.Tensor) -> torch.Tensor:
        """⟨dL/dG, a tile's share of G⟩ for style term `index`, ``(B,)`` float32: its gradient in
        the tile's features is the whole picture's style gradient there."""
        if slopes[index] is None:
            return torch.zeros(share.shape[0], device=share.device)
        return (slopes[index].to(share.dtype) * share).sum(dim=(-2, -1)).float()

    def score_for(tile: tiling.Tile) -> Score:
        def score(features: Dict[str, torch.Tensor], zero: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
            content_share = zero
            style_shares = zero
            for _, weight, term, own, rows, columns in _owned(features, tile, objective.content_terms):
                content_share = content_share + options.content_weight * weight * term.part(own, rows, columns)
            for index, _, term, own, rows, columns in _owned(features, tile, objective.style_terms):
                share = term.part_gram(own, rows, columns, cells[index])
                if share is not None:
                    style_shares = style_shares + style_share(index, share)
            return content_share, style_shares

        return score

    gradients = [torch.zeros_like(leaf) for leaf in leaves]
    for leaf, gradient in zip(leaves, gradients):
        leaf.grad = gradient
    if kept is not None:  # first, so that only one tile's graph is held at a time
        # The Grams and the content sum carry the kept tile's graph alone: its shares of the
        # picture's style term (linear in each Gram) and content term.
        kept_terms = options.content_weight * content + sum(
            (style_share(index, total).to(content.device) for index, total in enumerate(gram_totals)),
            torch.zeros_like(content),
        )
        if kept_terms.requires_grad and kept_crop is not None:
            kept_terms.sum().backward()
            _add_gradient(gradients, kept, _filled_grad(kept_crop))
        del kept_crop, kept_terms
    run(
        objective,
        images,
        [tile for tile in objective.tiles if tile is not kept],
        score_for,
        gradients,
        options.clamp_in_loss,
    )
    local = _local_terms(objective, images, gradients)
    return with_total({"content": options.content_weight * content.detach(), "style": style.detach(), **local})


class Tiles:
    """The :class:`~nst_ext.objective.terms.Evaluation` of `objective` tile by tile (its ``tiles``):
    the values carry no graph; :meth:`evaluate` fills the gradient in two passes."""

    graphable = False  # a pass per tile, each with its own graph, and host-side sums between them

    def __init__(self, objective: "Objective"):
        self.objective = objective

    def content_pass(
        self, contents: torch.Tensor, content_layers: Sequence[str], style_terms: Sequence, dtype: torch.dtype
    ) -> Tuple[Dict[str, torch.Tensor], List[torch.Tensor]]:
        """The content targets put together from the tiles in `dtype`; each style term's value from
        its Gram, made in the same pass."""
        features, grams = content_pass(self.objective, contents, content_layers, style_terms, dtype)
        return features, [term.from_gram(gram) for (_, _, term), gram in zip(style_terms, grams)]

    def values(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        if torch.is_grad_enabled() and images.requires_grad:
            raise RuntimeError("a tiled objective's values carry no graph; its evaluator() fills the gradient")
        return values(self.objective, images)

    def evaluate(self, leaves: Sequence[torch.Tensor]) -> Dict[str, torch.Tensor]:
        return evaluate(self.objective, leaves)
