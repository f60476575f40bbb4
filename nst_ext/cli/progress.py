"""The command line's progress bars, on stderr: a picture's steps with its latest losses
(:class:`StepBar`), a batch's items as every process finishes them (:class:`ItemBar`), a video's
frames (:class:`FrameBar`). Each is a small tqdm, made once the work has started."""

import sys
import time
from pathlib import Path

from tqdm import tqdm

# Reading the losses waits for the GPU, so the step bar shows them at most this often.
LOSS_DISPLAY_SECONDS = 0.5


class StepBar(tqdm):
    """The optimiser's steps over all stages, with the stage's size and losses, and a line when a
    stage's memory plan had to cut down (checkpointing, a shorter L-BFGS history)."""

    def __init__(self, total_steps: int, device):
        super().__init__(
            total=total_steps, unit="step", dynamic_ncols=True, file=sys.stderr, desc=f"stylizing on {device}"
        )
        self.losses_shown_at = 0.0

    def show(self, progress) -> None:
        """One evaluation done (`progress`: nst_ext.stylizer.Progress)."""
        plan = progress.memory_plan
        if progress.step == 1 and plan is not None and plan.budget_limited:
            self.write(f"nst-ext: stage {progress.stage + 1} of {progress.stages}: {plan.describe()}", file=sys.stderr)
        now = time.monotonic()
        if now - self.losses_shown_at >= LOSS_DISPLAY_SECONDS or progress.step == progress.steps:
            self.losses_shown_at = now
            self.set_postfix_str(
                f"{progress.size[1]}x{progress.size[0]} content {progress.content_loss:.3g} "
                f"style {progress.style_loss:.3g} total {progress.total_loss:.3g}",
                refresh=False,
            )
        self.update(1)


class ItemBar(tqdm):
    """A batch's items still to do, counted from the job's manifest (so that under torchrun rank 0
    shows every process's items): the lines appended since the bar was made."""

    def __init__(self, total: int, already: int, manifest: Path):
        self.manifest = manifest
        self.manifest_start = manifest.stat().st_size if manifest.exists() else 0
        self.counted_at = 0.0
        super().__init__(
            total=total - already,
            unit="image",
            dynamic_ncols=True,
            file=sys.stderr,
            desc=f"batch ({already} already done)" if already else "batch",
        )

    def count(self, force: bool = False) -> None:
        """Catches up with the manifest (at most every LOSS_DISPLAY_SECONDS unless `force`)."""
        now = time.monotonic()
        if not force and now - self.counted_at < LOSS_DISPLAY_SECONDS:
            return
        self.counted_at = now
        try:
            with open(self.manifest, "rb") as records:
                records.seek(self.manifest_start)
                finished = records.read().count(b"\n")
        except FileNotFoundError:  # no item has finished yet
            return
        self.update(finished - self.n)

    def show(self, progress) -> None:
        """One evaluation of the item in flight: its stage and step."""
        self.set_postfix_str(
            f"stage {progress.stage + 1}/{progress.stages} step {progress.step}/{progress.steps}", refresh=False
        )
        self.count()


class FrameBar(tqdm):
    """A video's frames of this process's part."""

    def __init__(self, total: int):
        super().__init__(total=total, unit="frame", dynamic_ncols=True, file=sys.stderr, desc="video")

    def show(self, done: int) -> None:
        self.update(done - self.n)
