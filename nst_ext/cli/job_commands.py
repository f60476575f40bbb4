"""``nst-ext batch`` and ``nst-ext video``: each job's run, its progress (bars, ``--web``), its exit
status (the jobs themselves: nst_ext.jobs)."""

import sys
from pathlib import Path

from nst_ext.cli.style_flags import style_options
from nst_ext.cli.stopping import job_stopped
from nst_ext.cli.watching import LiveViewOnDemand
from nst_ext.errors import OptionError
from nst_ext.io.outputs import WriteError


def run_batch_command(args) -> int:
    options = style_options(args)
    options.validate()
    if args.batch_size is not None and args.batch_size < 1:
        raise OptionError(f"--batch-size must be at least 1, got {args.batch_size}")
    from nst_ext.jobs import MANIFEST_NAME, Distributed, run_batch  # torch is imported from here on

    distributed = Distributed()
    bar = None
    live = LiveViewOnDemand(args, f"batch {args.input}", shown_here=distributed.rank == 0)

    def on_start(total, already):
        nonlocal bar
        if distributed.rank == 0 and not args.quiet:  # rank 0 shows every rank's items
            from nst_ext.cli.progress import ItemBar

            bar = ItemBar(total, already, Path(args.output) / MANIFEST_NAME)

    def on_item(item, status, error):
        if status == "failed":
            print(f"nst-ext: skipped {item.name}: {error}", file=sys.stderr)
        if bar is not None:
            bar.count(force=True)

    def on_progress(progress):
        if bar is not None:
            bar.show(progress)
        live.observe(progress)

    summary = None
    try:
        summary = run_batch(
            args.input,
            args.styles,
            args.output,
            options,
            output_format=args.format,
            overwrite=args.overwrite,
            on_item=on_item,
            on_progress=on_progress,
            distributed=distributed,
            on_start=on_start,
            batch_size=args.batch_size,
        )
    except WriteError as error:
        raise error.with_advice(
            "the items finished before are kept: run the same command again once the output can be written"
        ) from None
    finally:
        if bar is not None:
            bar.count(force=True)
            bar.close()
        live.close(status=_ending(summary))
        distributed.close()
    if summary.interrupted:
        return job_stopped("finished items")
    if distributed.rank == 0:
        print(f"nst-ext: batch: {summary.line()}", file=sys.stderr)
    return 1 if summary.failed else 0


def run_video_command(args) -> int:
    options = style_options(args)
    options.validate()
    from nst_ext.jobs import FRAME_STEPS, TEMPORAL_WEIGHT, Distributed, run_video  # torch from here on

    distributed = Distributed()
    bar = None
    live = LiveViewOnDemand(args, f"video {args.input}", shown_here=distributed.rank == 0)

    def on_frame(done, total):
        nonlocal bar
        if distributed.rank == 0 and not args.quiet:
            if bar is None or done <= bar.n:  # the first frame, or of the next pass (--passes)
                from nst_ext.cli.progress import FrameBar

                if bar is not None:
                    bar.close()
                bar = FrameBar(total)
            bar.show(done)

    summary = None
    try:
        summary = run_video(
            args.input,
            args.styles,
            args.output,
            options,
            temporal_weight=TEMPORAL_WEIGHT if args.temporal_weight is None else args.temporal_weight,
            frame_steps=FRAME_STEPS if args.frame_steps is None else args.frame_steps,
            coherence=args.coherence,
            long_term=args.long_term,
            passes=args.passes,
            overwrite=args.overwrite,
            on_frame=on_frame,
            on_progress=live.observe,
            distributed=distributed,
        )
    except WriteError as error:
        raise error.with_advice(
            "the finished frames are kept: run the same command again once the output can be written"
        ) from None
    finally:
        if bar is not None:
            bar.close()
        live.close(status=_ending(summary))
        distributed.close()
    if summary.interrupted:
        return job_stopped("the finished frames")
    if distributed.rank == 0:
        kept = f" ({summary.kept} kept from a stopped run)" if summary.kept else ""
        print(
            f"nst-ext: wrote {args.output}: {summary.frames} frames, {summary.stylized} stylized now{kept}",
            file=sys.stderr,
        )
    return 0


def _ending(summary) -> str:
    """The live view's last word on a job: no summary means it ended with an error."""
    return "failed" if summary is None else "stopped" if summary.interrupted else "done"
