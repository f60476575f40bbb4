"""VGG19 feature extractor: the conv stack of ``torchvision.models.vgg19().features`` cut after
the deepest layer a run needs, with frozen weights. Layer names come from the one registry,
:mod:`nst_ext.plan.layers`.
"""

from typing import Collection, Dict, Iterable, List, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional

from nst_ext.plan.layers import CONV_INDICES, LAYER_INDEX, LAYERS, check_layer_names
from nst_ext.model.weights import VGGWeights


def _bias(conv: nn.Conv2d) -> torch.Tensor:
    """A VGG convolution's bias (every one has one)."""
    if conv.bias is None:
        raise ValueError("a VGG19 convolution without a bias")
    return conv.bias


class VGG19Features(nn.Module):
    """VGG19's convolutional stack up to ``last_layer``, frozen.

    forward(image, layers): image ``(B, 3, H, W)`` RGB in [0, 1], any float
    dtype; returns ``{name: features (B, C, H', W')}`` for the requested layers.
    The weights' own input normalisation (Caffe BGR mean subtraction, or
    torchvision's ImageNet mean/std) is applied inside.
    """

    # Buffers (they move with the module): the weights' input normalisation, (1, 3, 1, 1).
    input_mean: torch.Tensor
    input_std: torch.Tensor

    def __init__(self, weights: VGGWeights, last_layer: str = "relu5_1", pooling: str = "avg"):
        super().__init__()
        check_layer_names([last_layer])
        if pooling not in ("avg", "max"):
            raise ValueError(f"pooling must be 'avg' or 'max', got {pooling!r}")
        self.weights_source = weights.source
        self.normalization = weights.normalization
        modules: List[nn.Module] = []
        in_channels = 3
        for index, layer in enumerate(LAYERS[: LAYER_INDEX[last_layer] + 1]):
            if layer.kind == "conv":
                conv = nn.Conv2d(in_channels, layer.channels, kernel_size=3, padding=1)
                weight, bias = weights.convs[CONV_INDICES.index(index)]
                with torch.no_grad():
                    conv.weight.copy_(weight)
                    _bias(conv).copy_(bias)
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
        self.layer_devices: List[torch.device] = []  # empty: every layer where the module is (.to); see place()
        # Per convolution: (what identifies the float32 weight it was cast from, bfloat16 weight, bias).
        self._bfloat16_params: Dict[int, Tuple[tuple, torch.Tensor, torch.Tensor]] = {}

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """The image ``(B, 3, H, W)`` in [0, 1] as VGG's input: channels-last (cuDNN and oneDNN
        follow the input's layout, and the stylizer's weights are channels-last; every feature,
        target and gradient then shares one layout, so no pass of the backward is strided),
        in the weights' channel order, normalised."""
        image = image.contiguous(memory_format=torch.channels_last)
        if self.input_channel_order == "BGR":
            image = image.flip(1)
        return (image - self.input_mean.to(image.dtype)) / self.input_std.to(image.dtype)

    def place(self, layer_devices: Sequence[torch.device]) -> "VGG19Features":
        """Puts layer i on ``layer_devices[i]`` (one per layer; the input normalisation goes with
        layer 0): VGG split over several devices for pictures that fit on none alone."""
        if len(layer_devices) != len(self.layers):
            raise ValueError(f"{len(layer_devices)} devices given for {len(self.layers)} layers")
        self.layer_devices = [torch.device(device) for device in layer_devices]
        for layer, device in zip(self.layers, self.layer_devices):
            layer.to(device)
        self.input_mean = self.input_mean.to(self.layer_devices[0])
        self.input_std = self.input_std.to(self.layer_devices[0])
        return self

    def _convolve(self, index: int, conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        """Convolution `index` on `x`. Under bfloat16 autocast it reads bfloat16 copies of its
        weight and bias made once, not per call: autocast would cast the float32 ones at every
        forward (13M parameters up to conv5_1, about 1% of a 512 px step on the CPU), and it caches
        no cast of a weight without requires_grad. Autocast rounds them the same way, so the
        result is the same; a weight changed since its copy was made (in place, or moved by
        ``.to``, which swaps its storage) is copied again."""
        device_type = x.device.type
        if not (
            torch.is_autocast_enabled(device_type)
            and torch.get_autocast_dtype(device_type) == torch.bfloat16
            and conv.weight.dtype == torch.float32
        ):
            return conv(x)
        bias = _bias(conv)
        source = (conv.weight.data_ptr(), conv.weight._version, bias.data_ptr(), bias._version)
        cached = self._bfloat16_params.get(index)
        if cached is None or cached[0] != source:
            with torch.no_grad():
                cached = (
                    source,
                    conv.weight.to(torch.bfloat16, memory_format=torch.preserve_format),
                    bias.to(torch.bfloat16),
                )
            self._bfloat16_params[index] = cached
        return functional.conv2d(x, cached[1], cached[2], conv.stride, conv.padding)

    def run_layers(
        self, x: torch.Tensor, start: int, stop: int, wanted: Collection[str]
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Layers ``start … stop - 1`` on `x` (the output of layer ``start - 1``, or the
        normalised image); returns the last output and those of the `wanted` layers. Each
        layer runs on its device (``place``). A ReLU overwrites its input when no one else reads
        it (a convolution's output made here and not wanted), which saves a tensor of the
        layer's size in flight and changes no value."""
        outputs = {}
        for index in range(start, stop):
            layer = self.layers[index]
            if self.layer_devices and x.device != self.layer_devices[index]:
                x = x.to(self.layer_devices[index])
            if isinstance(layer, nn.ReLU) and index > start and self.names[index - 1] not in wanted:
                x = torch.relu_(x)
            elif isinstance(layer, nn.Conv2d):
                x = self._convolve(index, layer, x)
            else:
                x = layer(x)
            if self.names[index] in wanted:
                outputs[self.names[index]] = x
        return x, outputs

    def forward(self, image: torch.Tensor, layers: Iterable[str]) -> Dict[str, torch.Tensor]:
        wanted = set(layers)
        check_layer_names(wanted)
        if not wanted:  # e.g. no content layers: texture synthesis
            return {}
        last = max(LAYER_INDEX[name] for name in wanted)
        if last >= len(self.layers):
            raise ValueError(f"layer {LAYERS[last].name} is deeper than this extractor's last layer {self.names[-1]}")
        return self.run_layers(self.normalize(image), 0, last + 1, wanted)[1]
