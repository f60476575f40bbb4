"""One stage's optimisation (:func:`optimize_stage`) for one picture or a batch: its objective made
from the stage's images, L-BFGS or Adam run for the stage's steps, the best image kept, every
evaluation reported to a callback (:class:`Progress`) and recorded in the pictures' histories.

Nothing here waits for the GPU: the loss terms of each evaluation stay on the device (read into the
histories once, at the end of the stage), the best images are kept there by masked copies
(:class:`BestImage`), and the L-BFGS keeps its scalars there.
"""

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from nst_ext.io.images import image_shape
from nst_ext.lbfgs import LBFGS, run_together
from nst_ext.model.network import Network
from nst_ext.objective import TERMS, Objective, TemporalTarget
from nst_ext.objective.masks import StageMasks
from nst_ext.parametrization import PyramidVariable
from nst_ext.plan.memory import MemoryPlan
from nst_ext.plan.options import LBFGS_FIRST_STEP_RMS, LBFGS_MAX_STEP_RMS, StyleOptions
from nst_ext.plan.run import StagePlan

History = List[Dict[str, float]]  # one row per evaluation: stage, step and each of TERMS


class Progress:
    """What a callback sees after every evaluation of the loss.

    The loss values stay on the device until a callback reads one of
    ``content_loss``, ``style_loss``, ``tv_loss``, ``total_loss`` (floats;
    the first read copies all four to the host, a GPU synchronisation), so a
    callback that reads them only now and then does not slow a GPU run.
    ``image()`` returns the current image, ``(3, H, W)`` in [0, 1], on the CPU;
    ``memory_plan`` says how the stage fits in memory (checkpointing, tiles, history).
    For pictures optimised together (:meth:`Stylizer.run_many`) the losses are
    the batch's sums and ``image()`` is the first picture.
    """

    def __init__(
        self,
        stage: int,
        stages: int,
        step: int,
        steps: int,
        size: Tuple[int, int],
        terms: torch.Tensor,
        image: Callable[[], torch.Tensor],
        memory_plan: Optional[MemoryPlan] = None,
    ):
        self.stage, self.stages, self.step, self.steps, self.size = stage, stages, step, steps, size
        self.memory_plan = memory_plan  # how this stage fits in memory (nst_ext.plan.memory)
        self.image = image
        self._terms = terms
        self._values: Optional[Dict[str, float]] = None

    def _value(self, name: str) -> float:
        if self._values is None:
            self._values = dict(zip(TERMS, self._terms.tolist()))
        return self._values[name]

    content_loss = property(lambda self: self._value("content"))
    style_loss = property(lambda self: self._value("style"))
    tv_loss = property(lambda self: self._value("tv"))
    temporal_loss = property(lambda self: self._value("temporal"))
    total_loss = property(lambda self: self._value("total"))


class BestImage:
    """The image with the lowest total loss offered so far, kept on its device without reading the
    loss on the host: each offer is a masked copy. A NaN loss is never the best."""

    def __init__(self, image: torch.Tensor):
        self.image = image.detach().clone()
        self.loss = torch.full((), math.inf, device=image.device)

    def offer(self, loss: torch.Tensor, image: torch.Tensor) -> None:
        loss = loss.detach().float()
        better = loss < self.loss
        self.loss = torch.where(better, loss, self.loss)
        torch.where(better, image.detach(), self.image, out=self.image)  # no second picture-sized buffer


# The average's decay per evaluation: the last ten or so iterates weigh most, a fifth to a quarter
# of a finest stage's steps.
AVERAGE_DECAY = 0.9


class AverageImage:
    """The exponential moving average of the images offered (decay AVERAGE_DECAY, bias-corrected as
    Adam's moments are, so that the first offers are not pulled towards zero), kept on their device
    without reading the loss on the host; an image whose loss is not finite is left out."""

    def __init__(self, image: torch.Tensor):
        self.total = torch.zeros_like(image.detach(), dtype=torch.float32)
        self.weight = torch.zeros((), device=image.device)

    def offer(self, loss: torch.Tensor, image: torch.Tensor) -> None:
        decay = torch.where(torch.isfinite(loss.detach()), AVERAGE_DECAY, 1.0).to(self.weight.device)
        # In place: no second picture-sized buffer (the memory plan counts one image for the average).
        self.total.lerp_(image.detach().float(), 1 - decay)
        self.weight = self.weight * decay + (1 - decay)

    def image_or(self, fallback: torch.Tensor) -> torch.Tensor:
        """The average (`fallback`'s dtype), or `fallback` when no finite offer came."""
        average = (self.total / self.weight.clamp_min(torch.finfo(torch.float32).tiny)).to(fallback.dtype)
        return torch.where(self.weight > 0, average, fallback)


@dataclass
class StageInputs:
    """What one stage optimises against: `contents`, one ``(3, H, W)`` per picture at the stage's
    shape; `styles`, the style images at their stage shapes (taken over: the list is emptied once
    their targets are made, since at a print size each is as large as the picture); the
    normalised `blend` weights; a video frame's `temporal` term and the `masks`, at this size."""

    contents: List[torch.Tensor]
    styles: List[torch.Tensor]
    blend: Sequence[float]
    temporal: Optional[TemporalTarget] = None
    masks: Optional[StageMasks] = None


class StyleTargetCache:
    """The style targets of the last style images run, per stage shape: a batch job makes them
    once. Kept only while they do not depend on the content (``shared``)."""

    def __init__(self, shared: bool):
        self.shared = shared
        self.targets: Dict[Tuple, Dict[str, torch.Tensor]] = {}

    def get(self, key: Tuple) -> Optional[Dict[str, torch.Tensor]]:
        return self.targets.get(key)

    def keep(self, key: Tuple, targets: Dict[str, torch.Tensor]) -> None:
        if self.shared:
            self.targets[key] = targets

    def forget(self) -> None:
        self.targets.clear()


def optimize_stage(
    network: Network,
    options: StyleOptions,
    stage: StagePlan,
    stages: int,
    images: List[torch.Tensor],
    inputs: StageInputs,
    histories: List[History],
    callback: Optional[Callable[[Progress], None]],
    cache: StyleTargetCache,
) -> Tuple[List[torch.Tensor], bool]:
    """Runs `stage` (of `stages`) from `images`, a list of ``(1, 3, H, W)`` on the device, one per
    picture, each the stage's own tensor; appends each evaluation to the pictures' `histories`.
    Returns each picture's best image (with ``options.average``, the average of its iterates,
    :class:`AverageImage`, unless Ctrl-C stopped it) and whether Ctrl-C stopped the run (a stop
    while the targets are made keeps the stage's starting images)."""
    batched = len(images) > 1
    images = [image.requires_grad_(True) for image in images]
    bests = [BestImage(image) for image in images]
    averages = [AverageImage(image) for image in images] if options.average else []
    pyramids = [PyramidVariable(image) for image in images] if options.parametrization == "pyramid" else []
    records: List[torch.Tensor] = []

    def closure() -> torch.Tensor:
        for pyramid in pyramids:
            pyramid.write_image()
        terms = evaluate()
        for pyramid in pyramids:
            pyramid.take_gradient()
        records.append(terms)
        rows = terms if batched else terms[None]
        for best, row, image in zip(bests, rows, images):
            best.offer(row[-1], image)
        for average, row, image in zip(averages, rows, images):
            average.offer(row[-1], image)
        if callback is not None:
            callback(
                Progress(
                    stage=stage.index,
                    stages=stages,
                    step=len(records),
                    steps=stage.steps,
                    size=image_shape(images[0]),
                    terms=rows.sum(0),
                    image=lambda: images[0].detach()[0].float().cpu().clamp(0, 1),
                    memory_plan=stage.memory,
                )
            )
        return rows[:, -1].sum()

    interrupted = False
    try:
        objective = _stage_objective(network, options, stage, inputs, cache)
        evaluate = objective.evaluator(images if batched else images[0], graph=options.cuda_graph)
        moved = [pyramid.coefficients for pyramid in pyramids] if pyramids else images
        _run_optimizer(options, stage, moved, closure, clamp=not pyramids)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        _record(stage.index, records, histories, batched)
    if averages and not interrupted:
        return [average.image_or(best.image) for average, best in zip(averages, bests)], interrupted
    return [best.image for best in bests], interrupted


def _stage_objective(
    network: Network, options: StyleOptions, stage: StagePlan, inputs: StageInputs, cache: StyleTargetCache
) -> Objective:
    """The stage's objective, its style targets from `cache` when the same style images were run at
    this size; ``inputs.styles`` is emptied once the targets are made (:class:`StageInputs`)."""
    key = tuple(tuple(style.shape[-2:]) for style in inputs.styles)  # one per stage size
    contents = torch.stack(inputs.contents) if len(inputs.contents) > 1 else inputs.contents[0]
    objective = Objective(
        network,
        options,
        contents,
        inputs.styles,
        inputs.blend,
        stage.memory,
        cache.get(key),
        inputs.temporal,
        inputs.masks,
    )
    inputs.styles.clear()
    cache.keep(key, objective.style_grams)
    return objective


def _run_optimizer(
    options: StyleOptions,
    stage: StagePlan,
    images: List[torch.Tensor],
    closure: Callable[[], torch.Tensor],
    clamp: bool = True,
) -> None:
    """The stage's steps of L-BFGS (one per picture, run together) or Adam (element by element:
    one over all the pictures is one per picture) over `images`, each picture's tensor the
    optimiser moves (its pixels, clamped to [0, 1] after an Adam step with `clamp`, or its
    pyramid's coefficients)."""
    if options.optimizer == "lbfgs":
        history_dtype = torch.bfloat16 if stage.memory.history_bfloat16 else None
        optimizers = [
            LBFGS(
                image,
                lr=1.0,
                history_size=stage.memory.history_size,
                first_step_rms=LBFGS_FIRST_STEP_RMS,
                history_dtype=history_dtype,
                max_step_rms=LBFGS_MAX_STEP_RMS,
            )
            for image in images
        ]
        run_together(optimizers, closure, stage.steps)
        return
    optimizer = torch.optim.Adam(images, lr=options.learning_rate)
    for _ in range(stage.steps):
        optimizer.step(closure)
        if clamp:
            with torch.no_grad():
                for image in images:
                    image.clamp_(0, 1)


def _record(stage: int, records: List[torch.Tensor], histories: List[History], batched: bool) -> None:
    """The stage's evaluations into each picture's history, in one transfer from the device."""
    if not records:
        return
    values = torch.stack(records)
    rows = (values if batched else values[:, None]).transpose(0, 1).tolist()
    for history, picture_rows in zip(histories, rows):
        for step, row in enumerate(picture_rows, start=1):
            history.append({"stage": stage, "step": step, **dict(zip(TERMS, row))})
