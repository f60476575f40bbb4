"""The one registry of VGG19's layer names, torch-free (the CLI lists and checks them before
torch is imported): ``conv1_1``, ``relu1_1``, ``pool1`` … ``relu5_4``, ``pool5``, in the order
and at the indices of ``torchvision.models.vgg19().features`` (convolutions at 0, 2, 5, 7, 10, …);
and the picture geometry that follows from them: the smallest picture a layer needs, and a
picture's shape at a given long side.
"""

from dataclasses import dataclass
from typing import Dict, Iterable, Tuple

from nst_ext.errors import UnknownLayerError

# (output channels, convolutions) of VGG19's five blocks.
_BLOCKS = ((64, 2), (128, 2), (256, 4), (512, 4), (512, 4))


@dataclass(frozen=True)
class Layer:
    name: str
    kind: str  # "conv", "relu" or "pool"
    channels: int  # output channels
    pools_before: int  # poolings between the input and this layer's output


def _build_registry() -> Tuple[Layer, ...]:
    layers = []
    for block, (channels, convs) in enumerate(_BLOCKS, start=1):
        for conv in range(1, convs + 1):
            layers.append(Layer(f"conv{block}_{conv}", "conv", channels, block - 1))
            layers.append(Layer(f"relu{block}_{conv}", "relu", channels, block - 1))
        layers.append(Layer(f"pool{block}", "pool", channels, block))
    return tuple(layers)


LAYERS: Tuple[Layer, ...] = _build_registry()
LAYER_INDEX: Dict[str, int] = {layer.name: index for index, layer in enumerate(LAYERS)}
CONV_INDICES: Tuple[int, ...] = tuple(i for i, layer in enumerate(LAYERS) if layer.kind == "conv")


def check_layer_names(names: Iterable[str], what: str = "layer") -> None:
    for name in names:
        if name not in LAYER_INDEX:
            close = [n for n in LAYER_INDEX if n.startswith(name.rstrip("0123456789_")[:4])][:6]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UnknownLayerError(f"unknown {what} {name!r}{hint}; `nst-ext layers` lists the VGG19 layer names")


def layer_shape(name: str, height: int, width: int) -> Tuple[int, int, int]:
    """(C, H, W) of layer `name`'s output for an input of height x width pixels."""
    check_layer_names([name])
    layer = LAYERS[LAYER_INDEX[name]]
    for _ in range(layer.pools_before):
        height, width = height // 2, width // 2
    return layer.channels, height, width


def min_image_side(names: Iterable[str]) -> int:
    """Smallest image side for which every named layer still has at least 1x1 output."""
    return 2 ** max((LAYERS[LAYER_INDEX[name]].pools_before for name in names), default=0)


def long_side_shape(height: int, width: int, long_side: int) -> Tuple[int, int]:
    """(H', W') of a height x width picture scaled so that max(H', W') == long_side, aspect kept."""
    scale = long_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def layer_elements(index: int, height: int, width: int) -> int:
    """Values in the output of VGG19 layer `index` (LAYERS) for one ``height`` x ``width`` picture."""
    layer = LAYERS[index]
    for _ in range(layer.pools_before):
        height, width = height // 2, width // 2
    return layer.channels * height * width
