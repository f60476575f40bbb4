"""The plan of a run (:class:`RunPlan`), computed once from the options, the pictures' shapes and
the network's devices before any image is resized: each stage's long side, its content and style
shapes, its steps, its memory plan and how it is evaluated. The stylizer, the objective and batch
grouping read it; nothing else derives a stage's size, its schedule or a memory lever.

Torch-free: the network is read only for its devices and precision (``device``, ``devices``,
``device_starts``, ``mixed_precision``).
"""

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

from nst_ext.errors import OptionError
from nst_ext.plan.layers import long_side_shape
from nst_ext.plan.memory import MemoryPlan, plan_stage, run_budget

Shape = Tuple[int, int]  # (height, width)


def style_side(options, long_side: int) -> int:
    """The long side of the style images at a stage whose output's long side is `long_side`."""
    return max(1, round(long_side * options.style_scale))


def stage_shapes(options, content_shape: Shape) -> Tuple[Shape, ...]:
    """(height, width) of each stage for a content image of `content_shape`: pictures with the
    same stage shapes can be optimised together (batch grouping)."""
    return tuple(long_side_shape(*content_shape, size) for size in options.stage_sizes())


@dataclass(frozen=True)
class StagePlan:
    """One stage: `long_side` of the output at this stage; `shape` the content's (height, width);
    `style_shapes` each style image's; `steps` of the optimiser; `memory` how it fits."""

    index: int
    long_side: int
    shape: Shape
    style_shapes: Tuple[Shape, ...]
    steps: int
    memory: MemoryPlan

    @property
    def evaluator(self) -> str:
        """How the stage's loss is evaluated: "tiles" (a picture larger than one tile) or "whole"."""
        return "tiles" if self.memory.tile_edge else "whole"


@dataclass(frozen=True)
class RunPlan:
    """Every stage of a run of `pictures` content images optimised together, coarse to fine, and
    the `budget` (bytes) its memory plans were made against."""

    stages: Tuple[StagePlan, ...]
    pictures: int
    budget: int

    @property
    def steps(self) -> int:
        """The optimiser's steps over all the stages."""
        return sum(stage.steps for stage in self.stages)

    @property
    def releases_freed_memory_promptly(self) -> bool:
        """Whether some stage's plan counts on freed memory going back to the system at once."""
        return any(stage.memory.releases_freed_memory_promptly for stage in self.stages)


def stage_geometry(
    options, content_shape: Shape, style_shapes: Sequence[Shape], long_side: int
) -> Tuple[Shape, Tuple[Shape, ...]]:
    """The content's and the style images' (height, width) at a stage of output side `long_side`."""
    side = style_side(options, long_side)
    return long_side_shape(*content_shape, long_side), tuple(long_side_shape(*shape, side) for shape in style_shapes)


def plan_run(
    options,
    network,
    content_shape: Shape,
    style_shapes: Sequence[Shape],
    pictures: int = 1,
    budget: Optional[int] = None,
) -> RunPlan:
    """The plan for `pictures` content images of `content_shape` with style images of
    `style_shapes` (full size), against `budget` (default :func:`nst_ext.plan.memory.run_budget`).
    A stage that cannot fit (untiled, for a style loss that cannot be tiled) is refused
    (OptionError) before any image is made; the finest stage is planned first, so that the refusal
    names the picture asked for."""
    for what, shape in [("content shape", content_shape), *(("style shape", shape) for shape in style_shapes)]:
        if len(shape) != 2 or not all(
            isinstance(side, int) and not isinstance(side, bool) and side > 0 for side in shape
        ):
            raise OptionError(f"a {what} is (height, width) in whole pixels above 0, got {tuple(shape)!r}")
    if isinstance(pictures, bool) or not isinstance(pictures, int) or pictures < 1:
        raise OptionError(f"pictures must be a whole number of at least 1, got {pictures!r}")
    budget = run_budget(options, network) if budget is None else budget
    untileable = options.style_loss != "gram"  # the distribution losses take the whole picture at once
    schedule = options.stages()
    stages = []
    for index in reversed(range(len(schedule))):
        long_side, steps = schedule[index]
        shape, styles = stage_geometry(options, content_shape, style_shapes, long_side)
        try:
            memory = plan_stage(
                *shape,
                options.content_layers,
                options.style_layers,
                steps,
                styles,
                budget,
                network.device.type,
                activation_bytes=2 if network.mixed_precision else 4,
                optimizer=options.optimizer,
                checkpointing=options.checkpointing,
                history_size=options.lbfgs_history,
                breaks=network.device_starts,
                pictures=pictures,
                tile=0 if untileable else options.tile,
                history_bfloat16=options.lbfgs_history_bfloat16,
                content_bfloat16=options.content_target_bfloat16,
                averaged=options.average,
                pyramid=options.parametrization == "pyramid",
                style_loss=options.style_loss,
                style_regions=len(style_shapes) if options.style_masks is not None else 0,
            )
        except OptionError as refusal:
            if not untileable:
                raise
            raise OptionError(
                f"style_loss {options.style_loss!r} needs each picture in one pass (no tiles), and {refusal}; "
                "or style_loss 'gram', which can evaluate it in tiles"
            ) from None
        stages.append(StagePlan(index, long_side, shape, styles, steps, memory))
    return RunPlan(tuple(stages[::-1]), pictures, budget)


def fitting_batch_size(options, network, content_shape: Shape, style_shapes: Sequence[Shape], most: int) -> int:
    """The largest number of pictures of `content_shape`, up to `most`, that a run can optimise
    together within its budget without checkpointing or a shorter L-BFGS history (their price per
    step would eat what the batch gains); at least 1. The budget is read once for all the counts."""
    budget = run_budget(options, network)
    for pictures in range(most, 1, -1):
        try:
            plan = plan_run(options, network, content_shape, style_shapes, pictures, budget)
        except OptionError:  # does not fit at all
            continue
        if not any(stage.memory.budget_limited for stage in plan.stages):
            return pictures
    return 1
