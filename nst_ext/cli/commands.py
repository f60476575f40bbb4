"""The ``nst-ext`` commands (also ``python -m nst_ext``): each command's run, its progress, its exit
status (the arguments: nst_ext.cli.arguments).

    nst-ext stylize CONTENT STYLE [STYLE ...] -o OUT [options]
    nst-ext demo            stylize the sample images shipped in the package
    nst-ext layers          list VGG19's layer names
    nst-ext info            backends, device, weights

Bad input gets one line on stderr and exit status 2; every output is checked
before any work (nst_ext.io.outputs); Ctrl-C and SIGTERM save the best image so
far and exit with 130 and 143. Arguments are parsed before torch is imported,
so --help and usage errors are instant.
"""

import contextlib
import dataclasses
import os
import re
import sys
import warnings
from importlib import resources
from pathlib import Path
from typing import List, Optional

# Torch-free imports only: arguments are parsed, and outputs checked, before torch is imported.
from nst_ext.cli.arguments import build_parser, given_options, in_flags
from nst_ext.cli.style_flags import CommandError, style_options
from nst_ext.cli.job_commands import run_batch_command, run_video_command
from nst_ext.cli.stopping import install_stop_handlers, nothing_made, restore_handlers, stop_exit_status, stop_verb
from nst_ext.cli.watching import LiveViewOnDemand, web_module
from nst_ext.errors import BackendWarning, InputError, JobWarning
from nst_ext.plan.layers import LAYERS, min_image_side
from nst_ext.plan.effects import process_effects_allowed
from nst_ext.plan.options import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS, StyleOptions
from nst_ext.io.outputs import WriteError, check_outputs, deferred_signals

EXIT_BAD_INPUT = 2
# The work was done (or some of it) but a result could not be written, or memory ran out.
EXIT_FAILED = 1


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
    """Everything about the outputs that can be wrong is found before any work is done (nst_ext.io.outputs)."""
    if args.save_every < 0:
        raise CommandError(f"--save-every must be 0 (off) or a positive number of steps, got {args.save_every}")
    if args.bit_depth == 16 and output.suffix.lower() not in (".png", ".tif", ".tiff"):
        raise CommandError(f"--bit-depth 16 writes PNG or TIFF; name the output .png or .tif, not {output.name!r}")
    patterns = []
    if args.save_every:
        patterns.append((output.parent, _intermediate_pattern(output), "intermediate images"))
    check_outputs(
        [(output, "-o"), (Path(args.plot) if args.plot else None, "--plot")],
        inputs,
        overwrite=args.overwrite,
        patterns=patterns,
    )


def _info_of(picture: str) -> int:
    from nst_ext.io import provenance

    print(provenance.describe(provenance.read(picture)))
    return 0


# Where and in what pieces a run works, not what it computes: `--from` takes them from this command
# line (a print re-made on a smaller machine needs another budget or device). The picture is then the
# same up to float rounding (tiles and devices sum in another order); bit for bit only without them.
PLACEMENT_OPTIONS = ("device", "devices", "device_split", "max_memory", "checkpointing", "tile")


def _rerun(args, argv: List[str]) -> int:
    """`stylize --from PICTURE`: the run that made the picture, with the output's switches and the
    placement options (PLACEMENT_OPTIONS) of this command line `argv`; a style option given as well
    is refused, even at its default value (it would not be that run, or would say what it is not)."""
    if args.content or args.styles:
        raise CommandError("with --from the inputs come from the picture; drop the content and style images")
    given = given_options(argv)
    changed = [field.name for field in dataclasses.fields(StyleOptions) if field.name in given]
    refused = [f"--{name.replace('_', '-')}" for name in changed if name not in PLACEMENT_OPTIONS]
    if refused:
        placement = ", ".join(f"--{name.replace('_', '-')}" for name in PLACEMENT_OPTIONS)
        raise CommandError(
            f"with --from the settings come from the picture; drop {', '.join(refused)} (only where "
            f"the work runs may change: {placement})"
        )
    from nst_ext.io import provenance

    options, content, styles = provenance.rerun(args.from_picture)
    options = dataclasses.replace(options, **{name: vars(args)[name] for name in changed})
    return _run_stylize(args, content, styles, Path(args.output), options)


class _StylizeProgress:
    """The callback of a `stylize` run: the progress bar (made at the first step, once the inputs
    were checked and loaded), the live view, and the images written every --save-every steps."""

    def __init__(self, args, output: Path, steps: int, device, live):
        self.args, self.output, self.steps, self.device, self.live = args, output, steps, device, live
        self.bar = None
        self.steps_done = 0
        self.save_every = args.save_every

    def __call__(self, progress) -> None:
        from nst_ext.io.images import save_image

        self.steps_done += 1
        if self.bar is None and not self.args.quiet:
            from nst_ext.cli.progress import StepBar

            self.bar = StepBar(self.steps, self.device)
        if self.bar is not None:
            self.bar.show(progress)
        self.live.observe(progress)
        if self.save_every and progress.step % self.save_every == 0:
            path = _intermediate_path(self.output, progress.stage, progress.step)
            try:
                save_image(progress.image(), path, overwrite=True)
            except WriteError as error:  # a full disk must not cost the run: it goes on, its picture kept
                print(f"nst-ext: warning: {in_flags(error)}; no more intermediate images are written", file=sys.stderr)
                self.save_every = 0

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _run_stylize(args, content, styles, output: Path, options: Optional[StyleOptions] = None) -> int:
    options = options or style_options(args)
    options.validate()
    _check_outputs(args, output, _input_files(options, content, styles))
    from nst_ext.stylizer import Stylizer  # torch is imported from here on

    stylizer = Stylizer(options)
    live = LiveViewOnDemand(args, output.name)
    progress = _StylizeProgress(args, output, sum(options.stage_steps()), stylizer.device, live)
    result = None
    try:
        result = stylizer.run(content, styles, callback=progress)
    finally:
        progress.close()
        if result is None:
            live.close(status="failed")
    if result.interrupted and not result.history:
        live.close(status="stopped", message="stopped before the first step finished; nothing written")
        print(f"nst-ext: {stop_verb()} before the first step finished; nothing written", file=sys.stderr)
        return stop_exit_status()
    if not result.interrupted and not result.improved:
        print(
            f"nst-ext: warning: no step improved the picture, so {output} is its starting image (with one step "
            "per stage, L-BFGS only evaluates the start); give more --steps",
            file=sys.stderr,
        )
    stopped_while_saving = _save_result(args, stylizer, result, content, styles, output, live)
    if result.interrupted or stopped_while_saving:
        print(
            f"nst-ext: {stop_verb()} after {progress.steps_done} steps; saved the best image so far to {output}",
            file=sys.stderr,
        )
        return stop_exit_status()
    print(
        f"nst-ext: wrote {output} ({result.tensor.shape[2]}x{result.tensor.shape[1]}) in {result.seconds:.1f} s",
        file=sys.stderr,
    )
    return 0


def _save_result(args, stylizer, result, content, styles, output: Path, live) -> bool:
    """Writes the picture (and --plot) with stop signals deferred until the files are in place, and
    shows it on the live page; returns whether a stop arrived while saving."""
    from nst_ext.io.images import save_image
    from nst_ext.jobs.finish import finish_picture

    stopped_while_saving = False
    ending = "failed"
    try:
        with deferred_signals():  # a stop signal now waits until the files are in place
            # A full disk: the picture goes to a fallback folder, named in the error.
            finish_picture(
                stylizer,
                result,
                content,
                styles,
                output,
                args.command,
                overwrite=args.overwrite,
                bit_depth=args.bit_depth,
            )
            if args.plot:
                from nst_ext.cli.plot import plot_losses

                save_image(plot_losses(result.history), args.plot, overwrite=args.overwrite)
        ending = "stopped" if result.interrupted else "done"
    except KeyboardInterrupt:  # delivered once the files were written
        stopped_while_saving, ending = True, "stopped"
    finally:  # the page shows the final picture once it is written (or could not be)
        live.close(result.tensor, ending)
    return stopped_while_saving


def _layers() -> int:
    print(
        "VGG19's layers. 'size': the layer's output size relative to the picture; 'min px': the smallest\n"
        "picture side (at every stage, for content and style images alike) that leaves it at least 1x1.\n"
    )
    print(f"{'layer':<9} {'kind':<5} {'channels':>8}  {'size':>5}  {'min px':>6}  default use")
    for layer in LAYERS:
        use = (
            "content" if layer.name in DEFAULT_CONTENT_LAYERS else "style" if layer.name in DEFAULT_STYLE_LAYERS else ""
        )
        print(
            f"{layer.name:<9} {layer.kind:<5} {layer.channels:>8}  1/{2**layer.pools_before:<3}  "
            f"{min_image_side([layer.name]):>6}  {use}"
        )
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    previous_handlers = install_stop_handlers()  # SIGTERM stops a run like Ctrl-C: the best image is saved
    try:
        # The command may change what the library leaves alone for other programs (nst_ext.plan.effects).
        with _one_line_warnings(), process_effects_allowed():
            return _main(argv)
    finally:
        restore_handlers(previous_handlers)


@contextlib.contextmanager
def _one_line_warnings():
    """A job's warnings (JobWarning) as one ``nst-ext: warning:`` line each, not Python's two."""
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, (JobWarning, BackendWarning)):
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
    return (
        isinstance(error, MemoryError)
        or type(error).__name__ == "OutOfMemoryError"
        or (isinstance(error, RuntimeError) and "can't allocate memory" in str(error))
    )


def _main(argv: Optional[List[str]]) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command == "layers":
            return _layers()
        if args.command == "info":
            if args.picture and args.self_test:
                raise CommandError("--self-test checks this install's kernels, not a picture: give one or the other")
            if args.picture:
                return _info_of(args.picture)
            from nst_ext.info import run as info_report

            return info_report(with_self_test=args.self_test)
        if args.command == "demo":
            data = resources.files("nst_ext") / "data"
            output = Path(args.output) if args.output else _free_demo_name()
            if args.plot is None and args.output is None:
                args.plot = str(_demo_plot(output))
            with resources.as_file(data / "astronaut.jpg") as content, resources.as_file(data / "swirls.jpg") as style:
                return _run_stylize(args, content, [style], output)
        if args.command == "batch":
            return run_batch_command(args)
        if args.command == "video":
            return run_video_command(args)
        if args.command == "serve":
            return web_module("app").serve(
                args.out, host=args.host, port=args.port, device=args.device, max_upload=args.max_upload
            )
        if args.from_picture:
            return _rerun(args, sys.argv[1:] if argv is None else argv)
        if args.content is None or not args.styles:
            raise CommandError("stylize needs a content image and at least one style image (or --from PICTURE)")
        return _run_stylize(args, args.content, args.styles, Path(args.output))
    except WriteError as error:  # found only while writing (a full disk): not the user's input
        print(f"nst-ext: error: {in_flags(error)}", file=sys.stderr)
        return EXIT_FAILED
    except InputError as error:
        print(f"nst-ext: error: {in_flags(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return nothing_made()
    except BrokenPipeError:  # e.g. `nst-ext layers | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (MemoryError, RuntimeError) as error:
        if not _out_of_memory(error):
            raise
        reason = (str(error).strip().splitlines() or ["no details"])[-1][:200]
        print(
            f"nst-ext: error: ran out of memory ({reason}); use a smaller --size, or a --max-memory below what "
            "this process may take (ulimit -v, a container's limit) so that the run is planned to fit",
            file=sys.stderr,
        )
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
