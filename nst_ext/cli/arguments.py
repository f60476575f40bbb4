"""The ``nst-ext`` command line's arguments: the parser of every command and the run's options read
from it. Torch-free, so that ``--help`` and usage errors answer at once."""

import argparse
import functools
from typing import Dict, List, Optional, Set

from nst_ext import __version__
from nst_ext.cli.style_flags import add_style_options, comma_separated, listed
from nst_ext.errors import InputError
from nst_ext.jobs.batch import AUTO_BATCH_LIMIT
from nst_ext.jobs.coherence import COHERENCE_MODES, LONG_TERM, TEMPORAL_WEIGHT
from nst_ext.jobs.video import FRAME_STEPS
from nst_ext.plan.options import (
    StyleOptions,
)
from nst_ext.web import DEFAULT_MAX_UPLOAD, DEFAULT_PORT, LOCAL_HOST


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
    f"watch the run in a browser: a page on {LOCAL_HOST} (PORT, or a free port: the address is printed) "
    "with the picture as it forms, the losses, and a Stop button that does what Ctrl-C does "
    "(needs pip install 'nst_ext[web]')"
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
    _add_stylize_commands(commands, defaults)
    _add_batch_command(commands, defaults)
    _add_video_command(commands, defaults)
    _add_serve_command(commands)
    _add_info_commands(commands)
    return parser


def _add_stylize_commands(commands, defaults: StyleOptions) -> None:
    """`stylize` and `demo`."""
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
    add_style_options(stylize, defaults)
    _add_output_options(stylize)
    demo = commands.add_parser("demo", help="stylize the sample photo with the sample painting shipped in the package")
    demo.add_argument("-o", "--output", default=None, help="output image (default: a new nst-ext-demo*.png here)")
    add_style_options(demo, defaults)
    _add_output_options(demo)


def _add_batch_command(commands, defaults: StyleOptions) -> None:
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
        'gains nothing there: BENCHMARKS.md, "Many pictures"). With --preserve-color always 1',
    )
    add_style_options(batch, defaults)


def _add_video_command(commands, defaults: StyleOptions) -> None:
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
        type=comma_separated(int),
        default=list(LONG_TERM),
        metavar="N,N,...",
        help="with --coherence flow, the earlier frames each frame is held to, in frames back "
        f"(default {listed(LONG_TERM)}; must hold 1): a pixel keeps the look it had when last seen, so "
        "what a passing object uncovers comes back as it was",
    )
    video.add_argument(
        "--passes",
        type=int,
        default=1,
        metavar="N",
        help="with --coherence flow, N - 1 more passes over the whole clip after the first, in alternating "
        "directions, each frame then held to its neighbours on both sides (Ruder et al.'s multi-pass mode; "
        "one process; each pass takes about as long as the first; default %(default)s)",
    )
    add_style_options(video, defaults)


def _add_serve_command(commands) -> None:
    serve = commands.add_parser(
        "serve",
        help="a local web app: choose a photo and styles, watch it paint, download the picture",
        description="Serves a page to stylize pictures from a browser: upload a content picture and one or more "
        "styles (or pick the samples), set the main options, start, watch the picture form, download "
        "it. Jobs run one at a time, the others wait in a queue; results are written to --out and "
        "never replace a file. Needs pip install 'nst_ext[web]'.",
    )
    serve.add_argument("--port", type=_port, default=DEFAULT_PORT, help="(default %(default)s; 0: a free port)")
    serve.add_argument(
        "--host",
        default=LOCAL_HOST,
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
        default=DEFAULT_MAX_UPLOAD,
        metavar="SIZE",
        help="the largest file accepted, e.g. 10MB (default %(default)s)",
    )


def _add_info_commands(commands) -> None:
    """`layers` and `info`."""
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


# Library names (as nst_ext.errors' messages name options) whose flag is not --name-with-dashes.
FLAG_ALIASES = {"output_format": "--format", "out_dir": "-o"}


@functools.lru_cache(maxsize=None)
def _long_flags() -> Dict[str, str]:
    """Each option's destination (the library's name for it) -> its long flag, over every command."""
    flags: Dict[str, str] = {}
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                for option in command._actions:
                    names = [o for o in option.option_strings if o.startswith("--") and not o.startswith("--no-")]
                    if names:
                        flags.setdefault(option.dest, names[0])
    return flags


def flag_for(name: str, value: Optional[str] = None) -> str:
    """How the command line names the library's option `name` given `value` (None: the option
    itself): ``max_memory`` -> ``--max-memory``, ``device=cpu`` -> ``--device cpu``,
    ``overwrite=True`` -> ``--overwrite``."""
    flag = FLAG_ALIASES.get(name) or _long_flags().get(name) or "--" + name.replace("_", "-")
    if value is None or value == "True":
        return flag
    if value == "False" and flag.startswith("--"):
        return "--no-" + flag[2:]
    return f"{flag} {value}"


def in_flags(error: BaseException) -> str:
    """An error's one line as the command line says it: the options it names as flags."""
    return error.worded(flag_for) if isinstance(error, InputError) else str(error)


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
