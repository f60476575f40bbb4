"""The style side of a stage's objective: the style targets made from the style images
(:func:`style_targets`: blended Grams, one Gram per masked style, or whole feature distributions
for the sliced loss) and the style terms that read them (:func:`style_groups`), grouped as
normalize_style scales them."""

import zlib
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Union

import torch

from nst_ext.objective import tiled
from nst_ext.objective.distribution_losses import GaussianW2Loss, SlicedWassersteinLoss, random_directions
from nst_ext.objective.losses import StyleLoss, blended_gram
from nst_ext.objective.masks import StageMasks, layer_masks
from nst_ext.plan.layers import layer_shape

if TYPE_CHECKING:
    from nst_ext.objective.stage import Objective
    from nst_ext.plan.options import StyleOptions

# A style term: its layer, its weight (a number, or a (B,) tensor once normalised) and its loss.
StyleTerm = Tuple[str, Union[float, torch.Tensor], Union[StyleLoss, SlicedWassersteinLoss, GaussianW2Loss]]


def style_targets(objective: "Objective", stage_styles, blend, style_layers, masks: StageMasks) -> Dict[str, Any]:
    """The style layers' targets: the blend of the style images' Grams, ``(C, C)`` per layer;
    with style masks, one Gram per style image, ``(S, C, C)``; with the distribution losses (sliced,
    w2), each image's ``(features (C, N), its source region's weights (N,) or None)``, a list per
    layer. Each Gram is over the image's source region when it has one. The images go through VGG one at a time (in tiles, when the
    stage is tiled: a style image at a print size is as large as the picture)."""
    network, vgg = objective.network, objective.network.vgg
    # The distribution losses (sliced, w2) take each image's features; Gram its blended Gram.
    sliced = objective.options.style_loss != "gram"
    per_style: Dict[str, List[Any]] = {name: [] for name in style_layers}
    for index, (style, weight) in enumerate(zip(stage_styles, blend)):
        source = masks.source(index)
        regions = layer_masks(source, style_layers, masks.dilation) if source is not None else {}
        share = 1.0 if masks.style is not None else weight
        image = style.unsqueeze(0).to(network.device)
        if objective.tile_edge and not sliced:  # those losses are never tiled (nst_ext.plan.run)
            for name, gram in tiled.image_grams(objective, image, style_layers, regions).items():
                per_style[name].append(share * gram)
            continue
        with network.autocast():
            features = vgg(image, style_layers)
        for name in style_layers:
            if not sliced:
                per_style[name].append(blended_gram(features[name], share, regions.get(name)))
                continue
            flat = features[name][0].detach().flatten(1).float()
            region = regions.get(name)
            per_style[name].append((flat, None if region is None else region.flatten()))
        del features
    if sliced:
        return dict(per_style)
    if masks.style is not None:
        return {name: torch.stack(grams) for name, grams in per_style.items()}
    return {name: sum(grams[1:], grams[0]) for name, grams in per_style.items()}


def style_groups(
    options: "StyleOptions",
    grams,
    blend,
    style_layers,
    style_weights,
    masks: Optional[StageMasks],
    shape: Tuple[int, int],
) -> List[List[StyleTerm]]:
    """The style terms ``(name, weight, loss)`` in the groups normalize_style scales together:
    one group of a term per style layer, or with style masks a group per style image (that
    style's term over its region at each layer, weighted by the layer's weight times the style's
    blend weight). With the sliced loss, `grams` holds each style image's features per layer,
    matched at the ranks of a picture of `shape` (H, W); with w2, summarised by their moments."""
    if options.style_loss == "w2":
        return _w2_groups(grams, blend, style_layers, style_weights, masks)
    if options.style_loss == "sliced":
        return _sliced_groups(grams, blend, style_layers, style_weights, masks, shape)
    if masks is not None and masks.style is not None:
        return _groups_per_region(
            masks, blend, style_layers, style_weights, lambda name, index, region: StyleLoss(grams[name][index], region)
        )
    blended: List[StyleTerm] = [
        (name, weight, StyleLoss(grams[name])) for name, weight in zip(style_layers, style_weights)
    ]
    return [blended]


def _w2_groups(grams, blend, style_layers, style_weights, masks: Optional[StageMasks]) -> List[List[StyleTerm]]:
    """style_groups for w2: `grams` holds each style image's (features, source weights) per layer.
    One group of the blend's moments, or with style masks a group per style image over its region
    (as Gram's)."""
    if masks is None or masks.style is None:
        return [
            [
                (name, weight, GaussianW2Loss([f for f, _ in grams[name]], blend, [r for _, r in grams[name]]))
                for name, weight in zip(style_layers, style_weights)
            ]
        ]

    def over_region(name: str, index: int, region: torch.Tensor) -> GaussianW2Loss:
        features, source = grams[name][index]
        return GaussianW2Loss([features], [1.0], [source], region)

    return _groups_per_region(masks, blend, style_layers, style_weights, over_region)


def _sliced_groups(
    grams, blend, style_layers, style_weights, masks: Optional[StageMasks], shape
) -> List[List[StyleTerm]]:
    """style_groups for sliced: `grams` holds each style image's (features, source weights) per
    layer, matched at the ranks of a picture of `shape`; with style masks, a group per style image
    over its region (as Gram's)."""

    def directions(name: str) -> torch.Tensor:
        # Fixed for the stage (one deterministic objective for L-BFGS), other at each stage size.
        channels = layer_shape(name, *shape)[0]
        return random_directions(channels, channels, zlib.crc32(f"{name} {shape}".encode()))

    def cells(name: str) -> int:
        _, rows, columns = layer_shape(name, *shape)
        return rows * columns

    def loss(name: str, images, shares, region=None) -> SlicedWassersteinLoss:
        features, sources = [f for f, _ in images], [r for _, r in images]
        return SlicedWassersteinLoss(features, shares, directions(name), cells(name), sources, region)

    if masks is None or masks.style is None:
        return [[(name, weight, loss(name, grams[name], blend)) for name, weight in zip(style_layers, style_weights)]]
    return _groups_per_region(
        masks,
        blend,
        style_layers,
        style_weights,
        lambda name, index, region: loss(name, [grams[name][index]], [1.0], region),
    )


def _groups_per_region(masks: StageMasks, blend, style_layers, style_weights, loss_over) -> List[List[StyleTerm]]:
    """With style masks: a group per style image, its term at each layer `loss_over(layer name,
    style index, the mask at that layer)`, weighted by the layer's weight times the style's blend
    weight."""
    groups: List[List[StyleTerm]] = []
    for index, (mask, share) in enumerate(zip(masks.style or (), blend)):
        regions = layer_masks(mask, style_layers, masks.dilation)
        groups.append(
            [
                (name, weight * share, loss_over(name, index, regions[name]))
                for name, weight in zip(style_layers, style_weights)
            ]
        )
    return groups
