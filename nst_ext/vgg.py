"""VGG19 feature extractor: the one registry of layer names, and the conv stack
of ``torchvision.models.vgg19().features`` cut after the deepest layer a run
needs, with frozen weights.

Layer names are the ones users know from the papers: ``conv1_1``,
``relu1_1``, ``pool1`` … ``relu5_4``, ``pool5``; their order and indices are
those of torchvision's ``features`` (convolutions at 0, 2, 5, 7, 10, …, 34).
"""

from dataclasses import dataclass
from typing import Dict, Iterable, Tuple

import torch
from torch import nn

from nst_ext.weights import VGGWeights

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


class UnknownLayerError(ValueError):
    pass


def check_layer_names(names: Iterable[str], what: str = "layer") -> None:
    for name in names:
        if name not in LAYER_INDEX:
            close = [n for n in LAYER_INDEX if n.startswith(name.rstrip("0123456789_")[:4])][:6]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UnknownLayerError(
                f"unknown {what} {name!r}{hint}; `nst-ext layers` lists the VGG19 layer names"
            )


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


class VGG19Features(nn.Module):
    """VGG19's convolutional stack up to ``last_layer``, frozen.

    forward(image, layers): image ``(B, 3, H, W)`` RGB in [0, 1], any float
    dtype; returns ``{name: features (B, C, H', W')}`` for the requested layers.
    The weights' own input normalisation (Caffe BGR mean subtraction, or
    torchvision's ImageNet mean/std) is applied inside.
    """

    def __init__(self, weights: VGGWeights, last_layer: str = "relu5_1", pooling: str = "avg"):
        super().__init__()
        check_layer_names([last_layer])
        if pooling not in ("avg", "max"):
            raise ValueError(f"pooling must be 'avg' or 'max', got {pooling!r}")
        self.weights_source = weights.source
        self.normalization = weights.normalization
        modules = []
        in_channels = 3
        for index, layer in enumerate(LAYERS[: LAYER_INDEX[last_layer] + 1]):
            if layer.kind == "conv":
                conv = nn.Conv2d(in_channels, layer.channels, kernel_size=3, padding=1)
                weight, bias = weights.convs[CONV_INDICES.index(index)]
                with torch.no_grad():
                    conv.weight.copy_(weight)
                    conv.bias.copy_(bias)
                modules.append(conv)
                in_channels = layer.channels
            elif layer.kind == "relu":
                modules.append(nn.ReLU(inplace=False))
            else:
                pool = nn.AvgPool2d if pooling == "avg" else nn.MaxPool2d
                modules.append(pool(kernel_size=2, stride=2))
        self.layers = nn.ModuleList(modules)
        self.names = tuple(layer.name for layer in LAYERS[: len(modules)])
        self.requires_grad_(False)
        self.eval()
        mean, std = weights.input_mean_std()
        self.register_buffer("input_mean", mean.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_std", std.view(1, 3, 1, 1), persistent=False)
        self.input_channel_order = weights.channel_order

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        if self.input_channel_order == "BGR":
            image = image.flip(1)
        return (image - self.input_mean.to(image.dtype)) / self.input_std.to(image.dtype)

    def forward(self, image: torch.Tensor, layers: Iterable[str]) -> Dict[str, torch.Tensor]:
        wanted = set(layers)
        check_layer_names(wanted)
        last = max(LAYER_INDEX[name] for name in wanted)
        if last >= len(self.layers):
            raise ValueError(f"layer {LAYERS[last].name} is deeper than this extractor's last layer {self.names[-1]}")
        outputs = {}
        x = self.normalize(image)
        for index in range(last + 1):
            x = self.layers[index](x)
            if self.names[index] in wanted:
                outputs[self.names[index]] = x
        return outputs
