"""VGG19 on the run's devices (:class:`Network`): the devices and mixed precision resolved from the
options, the weights, the network built channels-last, its layers spread over several devices, the
segments that spread makes, and the bfloat16 autocast for each device. The network owns where it
runs; the objective and the stylizer only ask it."""

from typing import List, Optional, Tuple

import torch

from nst_ext.plan.layers import LAYER_INDEX, LAYERS
from nst_ext.plan.budget import free_memory_bytes
from nst_ext.plan.effects import allowed_process_effects
from nst_ext.plan.activations import saved_bytes_per_layer, split_layers
from nst_ext.plan.options import OptionError, StyleOptions, resolve_device, uses_mixed_precision
from nst_ext.model.vgg import VGG19Features
from nst_ext.model.weights import resolve_weights


class Network:
    """VGG19 up to the deepest layer `options` use, on ``options.devices`` (or ``options.device``):
    ``device`` is the first, which holds the picture and the optimiser; with several devices each
    further one begins at a layer of ``device_starts`` (the user's ``device_split``, or in
    proportion to each device's free memory). Weights are float32; with mixed precision the
    convolutions run in bfloat16 under :meth:`autocast`."""

    def __init__(self, options: StyleOptions):
        self.devices = [resolve_device(name) for name in (options.devices or [options.device])]
        self.device = self.devices[0]
        self.mixed_precision = uses_mixed_precision(options.mixed_precision, self.device)
        self._mixed_precision_on = {
            device: uses_mixed_precision(options.mixed_precision, device) for device in self.devices
        }
        self.weights = resolve_weights(options.weights, options.weights_normalization)
        layers = list(options.content_layers) + list(options.style_layers)
        deepest = max(layers, key=LAYER_INDEX.__getitem__)
        self.vgg = VGG19Features(self.weights, deepest, options.pooling).to(self.device)
        if any(device.type == "cuda" for device in self.devices) and allowed_process_effects().cudnn_autotune:
            torch.backends.cudnn.benchmark = True  # process-wide: only where allowed (nst_ext.plan.effects)
        # Channels-last on every device: cuDNN's tensor-core convolutions and oneDNN's native NHWC
        # ones (on the CPU no layout conversion around each convolution: BENCHMARKS.md, "Large pictures").
        self.vgg = self.vgg.to(memory_format=torch.channels_last)
        self.device_starts: List[int] = []  # VGG layer indices where each further device begins
        if len(self.devices) > 1:
            if options.device_split:
                self.device_starts = [LAYER_INDEX[name] for name in options.device_split]
            else:
                size = options.output_size
                saved = saved_bytes_per_layer(size, size, deepest, layers, 2)
                self.device_starts = split_layers(saved, [free_memory_bytes(d) for d in self.devices])
            if self.device_starts and self.device_starts[-1] > LAYER_INDEX[deepest]:
                raise OptionError(
                    f"device split at {LAYERS[self.device_starts[-1]].name} is past the deepest layer "
                    f"used, {deepest}; split at shallower layers"
                )
            cuts = [0, *self.device_starts, len(self.vgg.layers)]
            self.vgg.place([self.devices[d] for d in range(len(self.devices)) for _ in range(cuts[d], cuts[d + 1])])

    def device_segments(self, layer_count: int) -> Tuple[Tuple[int, int], ...]:
        """Layers ``0 … layer_count - 1`` cut where each device's layers begin."""
        cuts = sorted({0, *(start for start in self.device_starts if start < layer_count), layer_count})
        return tuple(zip(cuts[:-1], cuts[1:]))

    def autocast(self, device: Optional[torch.device] = None) -> torch.autocast:
        """bfloat16 autocast for VGG's layers on `device` (default: the first device), where mixed
        precision is on for it."""
        device = device or self.device
        # No cast cache: a CUDA graph must not capture casts cached outside it (and they are cheap).
        return torch.autocast(
            device_type=device.type,
            dtype=torch.bfloat16,
            enabled=self._mixed_precision_on.get(device, self.mixed_precision),
            cache_enabled=False,
        )
