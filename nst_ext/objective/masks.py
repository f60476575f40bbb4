"""Spatial control (Gatys et al. 2017, "Controlling Perceptual Factors in Neural Style Transfer",
§spatial control): masks that say where each style applies, where the content term applies, and
which part of each style image is its source.

A mask is float32 ``(H, W)`` in [0, 1] on the CPU (white 1: applies here; soft edges allowed). A
layer sees it at its own resolution: the mask is average-pooled as VGG pools (2×2, stride 2, each
pooling before the layer), so a feature's weight is the share of its cell inside the region; with
``dilation`` d the region then grows by d cells at every layer (a d-cell max filter), so that
features whose receptive field reaches into the region count near its edge, as the paper's
reference code (leongatys/NeuralImageSynthesis) lets guidance channels spread.
"""

from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Sequence

import torch
import torch.nn.functional as F

from nst_ext.errors import ImageError
from nst_ext.io.images import ImageSource, load_image, resize
from nst_ext.plan.layers import LAYER_INDEX, LAYERS

# How far a mask's aspect ratio may stray from its picture's before it is refused rather than
# stretched: one pixel of rounding on either side of a 100-pixel mask.
ASPECT_TOLERANCE = 0.02


def load_mask(source: ImageSource, name: str, max_pixels: int) -> torch.Tensor:
    """A mask as float32 ``(H, W)`` in [0, 1]: an image file, a PIL image or a tensor ``(H, W)``,
    ``(1, H, W)`` or ``(3, H, W)``; colour images count by their luminance. Raises ImageError."""
    if isinstance(source, torch.Tensor) and source.dim() == 2:
        source = source.unsqueeze(0)
    image = load_image(source, name, max_pixels)
    weights = torch.tensor([0.299, 0.587, 0.114])
    return torch.einsum("c,chw->hw", weights, image).clamp(0, 1).contiguous()


def check_aspect(mask: torch.Tensor, picture_shape, mask_name: str, picture_name: str) -> None:
    """Refuses (ImageError) a mask whose aspect ratio is not its picture's: resizing it would move
    the region's edges."""
    mask_height, mask_width = mask.shape[-2:]
    height, width = picture_shape
    if abs(mask_width / mask_height - width / height) > ASPECT_TOLERANCE * (width / height):
        raise ImageError(
            f"{mask_name} is {mask_width}x{mask_height} pixels but {picture_name} is {width}x{height}: "
            "a mask must have its picture's shape (any size, the same aspect ratio)"
        )


def at_size(mask: torch.Tensor, shape) -> torch.Tensor:
    """The mask resized to ``shape`` (H, W), values kept in [0, 1]."""
    if tuple(mask.shape[-2:]) == tuple(shape):
        return mask
    return resize(mask[None].expand(3, -1, -1), tuple(shape))[0].clamp(0, 1)


def layer_masks(mask: torch.Tensor, layers: Iterable[str], dilation: int = 0) -> Dict[str, torch.Tensor]:
    """The mask ``(H, W)`` (at the picture's size) as each named layer sees it: ``{name: (h, w)}``,
    float32 on the mask's device, pooled as VGG pools, then grown by `dilation` cells."""
    result = {}
    for name in layers:
        pools = LAYERS[LAYER_INDEX[name]].pools_before
        cells = mask[None, None].float()
        for _ in range(pools):
            cells = F.avg_pool2d(cells, kernel_size=2, stride=2)
        if dilation > 0:
            # Past the layer's longer side every cell already sees the whole map: the same result,
            # and a filter size the pooling can hold however large the option.
            reach = min(dilation, max(cells.shape[-2:]))
            cells = F.max_pool2d(cells, kernel_size=2 * reach + 1, stride=1, padding=reach)
        result[name] = cells[0, 0].contiguous()
    return result


@dataclass(frozen=True)
class StageMasks:
    """Spatial control at one stage's size, as :class:`nst_ext.objective.Objective` takes it.

    `style`: one mask ``(H, W)`` per style image at the picture's size, where that style applies
    (None: every style everywhere, blended). `content`: ``(H, W)``, where the content term
    applies (None: everywhere). `sources`: one mask per style image at that image's stage size,
    the part of it whose statistics are the target (None, or None for an image: all of it).
    `dilation`: cells each layer's mask grows by (:func:`layer_masks`).
    """

    style: Optional[Sequence[torch.Tensor]] = None
    content: Optional[torch.Tensor] = None
    sources: Optional[Sequence[Optional[torch.Tensor]]] = None
    dilation: int = 0

    def source(self, index: int) -> Optional[torch.Tensor]:
        return None if self.sources is None else self.sources[index]
