"""The ``nst-ext`` commands (also ``python -m nst_ext``): each command's run, its progress, its exit
status (the arguments: nst_ext.cli.arguments).

    nst-ext stylize CONTENT STYLE [STYLE ...] -o OUT [options]
    nst-ext demo            stylize the sample images shipped in the package
    nst-ext layers          list VGG19's layer names
    nst-ext info            backends, device, weights

Bad input gets one line on stderr and exit status 2; every output is checked
before any work (nst_ext.outputs); Ctrl-C and SIGTERM save the best image so
far and exit with 130 and 143. Arguments are parsed before torch is imported,
so --help and usage errors are instant.
"""

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
from nst_ext.cli.arguments import CommandError, build_parser, style_options
from nst_ext.errors import InputError, JobWarning, OptionError
from nst_ext.layers import LAYERS, min_image_side
from nst_ext.options import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS, StyleOptions
from nst_ext.outputs import WriteError, check_outputs, deferred_signals, write_or_rescue

EXIT_BAD_INPUT = 2
# The work was done (or some of it) but a result could not be written, or memory ran out.
EXIT_FAILED = 1
EXIT_FOR_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}


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
