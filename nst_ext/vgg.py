"""VGG19 feature extractor: the conv stack of ``torchvision.models.vgg19().features`` cut after
the deepest layer a run needs, with frozen weights. Layer names come from the one registry,
:mod:`nst_ext.layers`.
"""

from typing import Dict, Iterable

import torch
from torch import nn

from nst_ext.layers import CONV_INDICES, LAYER_INDEX, LAYERS, check_layer_names
from nst_ext.weights import VGGWeights

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
        if not wanted:  # e.g. no content layers: texture synthesis
            return {}
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
