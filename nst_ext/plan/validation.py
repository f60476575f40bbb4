"""The checks of :meth:`StyleOptions.validate`: every option's range and kind, one group of
options per function, each raising OptionError in one line that names the option."""

import math
import os
from typing import TYPE_CHECKING, Sequence

from nst_ext.errors import OptionError
from nst_ext.plan.budget import parse_size
from nst_ext.plan.layers import LAYER_INDEX, check_layer_names

if TYPE_CHECKING:
    from nst_ext.plan.options import StyleOptions

# Colour control (nst_ext.objective.color): the spaces of luminance-only transfer, the ways to recolour the style.
COLOR_SPACES = ("yuv", "lab")
COLOR_TRANSFERS = ("pca", "cholesky", "histogram")
# The style losses (nst_ext.objective.losses, .distribution_losses): Gatys' Gram matrices; the sliced Wasserstein distance
# between whole feature distributions (Heitz et al. 2021); the Wasserstein-2 distance between the
# features' Gaussians (mean and covariance). The two distribution losses need each picture in one pass
# (no tiles); with style masks each matches its region's distribution (moments, or projections) to its style's.
STYLE_LOSSES = ("gram", "sliced", "w2")
# What a stage's optimiser moves (nst_ext.parametrization): the pixels, or the picture's Laplacian pyramid.
PARAMETRIZATIONS = ("pixels", "pyramid")

# The seeds torch's generators take: a 64-bit value, signed or unsigned.
SEED_RANGE = (-(2**63), 2**64 - 1)


def validate(options: "StyleOptions") -> None:
    """Raises OptionError for the first option out of its range or of the wrong kind."""
    for check in (_check_kinds, _check_schedule, _check_weights, _check_choices, _check_memory, _check_devices):
        check(options)


def positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OptionError(f"{name} must be a positive whole number, got {value!r}")


def non_negative(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise OptionError(f"{name} must be a non-negative number, got {value!r}")


def _check_kinds(options: "StyleOptions") -> None:
    """The list and seed options have the types they name."""
    for name in ("content_layers", "style_layers"):
        value = getattr(options, name)
        if not isinstance(value, (list, tuple)) or not all(isinstance(layer, str) for layer in value):
            raise OptionError(
                f"{name} must be a list of VGG19 layer names (or a comma-separated string), got {value!r}"
            )
    if options.seed is not None and (
        isinstance(options.seed, bool)
        or not isinstance(options.seed, int)
        or not SEED_RANGE[0] <= options.seed <= SEED_RANGE[1]
    ):
        raise OptionError(
            f"seed must be None or a whole number from {SEED_RANGE[0]} to {SEED_RANGE[1]} "
            f"(64 bits), got {options.seed!r}"
        )


def _check_schedule(options: "StyleOptions") -> None:
    """The output size, the stage sizes and their steps, and the input limit."""
    if options.size is not None:
        positive_int("size", options.size)
    if options.size is not None and options.scales and options.size != options.scales[-1]:
        raise OptionError(
            f"size {options.size} and scales {list(options.scales)} disagree: the last of scales is the "
            "output size; give one of them"
        )
    positive_int("max_input_pixels", options.max_input_pixels)
    for stage_size in options.scales or ():
        positive_int("scales", stage_size)
    if options.scales and list(options.scales) != sorted(options.scales):
        raise OptionError(f"scales must grow from coarse to fine, got {list(options.scales)}")
    steps = options.stage_steps()
    if len(steps) != len(options.stage_sizes()):
        raise OptionError(f"steps lists {len(steps)} values but there are {len(options.stage_sizes())} scales")
    for count in steps:
        positive_int("steps", count)


def _check_weights(options: "StyleOptions") -> None:
    """The loss weights, the style scale and the layers they weigh."""
    for name in ("content_weight", "style_weight", "tv_weight", "style_scale", "learning_rate"):
        non_negative(name, getattr(options, name))
    if options.style_scale <= 0:
        raise OptionError(f"style_scale must be above 0, got {options.style_scale}")
    if not options.style_layers:
        raise OptionError("style_layers must name at least one layer")
    check_layer_names(options.content_layers, "content layer")
    check_layer_names(options.style_layers, "style layer")
    for layers, weights, what in (
        (options.content_layers, options.content_layer_weights, "content"),
        (options.style_layers, options.style_layer_weights, "style"),
    ):
        if weights is not None:
            if len(weights) != len(layers):
                raise OptionError(
                    f"{len(weights)} {what} layer weights given for {len(layers)} {what} layers "
                    f"({', '.join(layers)}); give one weight per layer"
                )
            for weight in weights:
                non_negative(f"{what} layer weight", weight)


def _check_choices(options: "StyleOptions") -> None:
    """The options that name one of a few choices: optimiser, colour, masks, precision, pooling, style loss, init."""
    if not isinstance(options.average, bool):
        raise OptionError(f"average must be True or False, got {options.average!r}")
    if options.parametrization not in PARAMETRIZATIONS:
        raise OptionError(
            f"parametrization must be one of {', '.join(PARAMETRIZATIONS)}, got {options.parametrization!r}"
        )
    if options.optimizer not in ("lbfgs", "adam"):
        raise OptionError(f"optimizer must be 'lbfgs' or 'adam', got {options.optimizer!r}")
    if options.preserve_color not in (None, "luminance", "histogram"):
        raise OptionError(f"preserve_color must be 'luminance', 'histogram' or None, got {options.preserve_color!r}")
    if options.color_space not in COLOR_SPACES:
        raise OptionError(f"color_space must be one of {', '.join(COLOR_SPACES)}, got {options.color_space!r}")
    if options.color_transfer not in (None, *COLOR_TRANSFERS):
        raise OptionError(
            f"color_transfer must be one of {', '.join(COLOR_TRANSFERS)} or None, got {options.color_transfer!r}"
        )
    if options.preserve_color == "histogram" and options.color_transfer not in (None, "pca"):
        raise OptionError(
            f"preserve_color 'histogram' is color_transfer 'pca'; it cannot be combined with "
            f"color_transfer {options.color_transfer!r}: give one"
        )
    if (
        isinstance(options.mask_dilation, bool)
        or not isinstance(options.mask_dilation, int)
        or options.mask_dilation < 0
    ):
        raise OptionError(f"mask_dilation must be a whole number of cells, 0 or more, got {options.mask_dilation!r}")
    for name in ("style_masks", "style_image_masks"):
        value = getattr(options, name)
        if value is not None and (isinstance(value, (str, bytes, os.PathLike)) or not isinstance(value, Sequence)):
            raise OptionError(f"{name} must be a list of masks, one per style image, got {value!r}")
    if options.mixed_precision not in (None, True, False):
        raise OptionError(f"mixed_precision must be True, False or None (automatic), got {options.mixed_precision!r}")
    if options.pooling not in ("avg", "max"):
        raise OptionError(f"pooling must be 'avg' or 'max', got {options.pooling!r}")
    if options.style_loss not in STYLE_LOSSES:
        raise OptionError(f"style_loss must be one of {', '.join(STYLE_LOSSES)}, got {options.style_loss!r}")
    if options.style_loss != "gram" and options.tile:
        raise OptionError(
            f"style_loss {options.style_loss!r} takes each layer's features over the whole picture at once, "
            "so it cannot be evaluated in tiles: drop `tile`"
        )
    if isinstance(options.init, str) and options.init not in ("content", "noise") and not options.init.strip():
        raise OptionError("init must be 'content', 'noise' or an image")


def _check_memory(options: "StyleOptions") -> None:
    """The memory budget and the levers a user may force (nst_ext.plan.memory.LEVERS)."""
    if options.max_memory is not None:
        parse_size(options.max_memory)
    if options.checkpointing not in (None, True, False):
        raise OptionError(f"checkpointing must be True, False or None (automatic), got {options.checkpointing!r}")
    if options.lbfgs_history is not None:
        positive_int("lbfgs_history", options.lbfgs_history)
    for name in ("lbfgs_history_bfloat16", "content_target_bfloat16"):
        if getattr(options, name) not in (None, True, False):
            raise OptionError(f"{name} must be True, False or None (automatic), got {getattr(options, name)!r}")
    if options.tile is not None and (
        isinstance(options.tile, bool) or not isinstance(options.tile, int) or options.tile < 0
    ):
        raise OptionError(
            f"tile must be a tile edge in pixels, 0 (never tile) or None (when the budget needs "
            f"it), got {options.tile!r}"
        )


def _check_devices(options: "StyleOptions") -> None:
    """The devices VGG is spread over and the layers where each begins."""
    if options.devices is not None:
        if isinstance(options.devices, str) or not options.devices:
            raise OptionError(
                f"devices must be a list of one or more devices such as ['cuda:0', 'cuda:1'], got {options.devices!r}"
            )
        if options.device not in ("auto", options.devices[0]):
            raise OptionError(
                f"device {options.device!r} and devices {list(options.devices)} disagree; give one "
                "(the first of devices holds the picture)"
            )
    if options.device_split is not None:
        check_layer_names(options.device_split, "device split layer")
        count = len(options.devices or [options.device])
        if len(options.device_split) != count - 1:
            raise OptionError(
                f"device split names {len(options.device_split)} layer(s) for {count} device(s); "
                f"give {count - 1}: the layer where each device after the first begins"
            )
        starts = [LAYER_INDEX[name] for name in options.device_split]
        if starts != sorted(set(starts)) or starts[0] == 0:
            raise OptionError(
                f"device split layers must come after conv1_1 and in network order, got {list(options.device_split)}"
            )
