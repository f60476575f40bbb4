"""Gatys, Ecker & Bethge style transfer over VGG19 with the compiled losses,
plus the 2017 controls: colour preservation and coarse-to-fine multi-scale.

    import nst_ext
    picture = nst_ext.stylize("photo.jpg", "painting.jpg", size=512)
    picture.save("out.png")

or, to reuse the loaded network for several runs, ``nst_ext.Stylizer(...)``.
"""

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from nst_ext.io import algorithm_cache
from nst_ext.objective import color
from nst_ext.io.images import ImageSource, load_image, resize, to_pil
from nst_ext.objective.inputs import content_at_stage, masks_at_stage, prepare_inputs, prepare_masks, styles_at_stage
from nst_ext.lbfgs import LBFGS, run_together
from nst_ext.plan.budget import release_freed_memory_promptly
from nst_ext.plan.effects import allowed_process_effects, warn_memory_release_not_allowed
from nst_ext.plan.memory import MemoryPlan, plan_stages
from nst_ext.model.network import Network
from nst_ext.objective import TERMS, Objective, TemporalTarget
from nst_ext.plan.options import LBFGS_FIRST_STEP_RMS, LBFGS_MAX_STEP_RMS, OptionError, StyleOptions

__all__ = ["Objective", "Progress", "StylizeResult", "Stylizer", "TERMS", "TemporalTarget", "stylize"]


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
        self._values = None

    def _value(self, name: str) -> float:
        if self._values is None:
            self._values = dict(zip(TERMS, self._terms.tolist()))
        return self._values[name]

    content_loss = property(lambda self: self._value("content"))
    style_loss = property(lambda self: self._value("style"))
    tv_loss = property(lambda self: self._value("tv"))
    temporal_loss = property(lambda self: self._value("temporal"))
    total_loss = property(lambda self: self._value("total"))


@dataclass
class StylizeResult:
    tensor: torch.Tensor  # (3, H, W) float32 RGB in [0, 1], CPU
    history: List[Dict[str, float]] = field(default_factory=list)
    interrupted: bool = False
    seconds: float = 0.0
    seed: Optional[int] = None  # the seed the run used (options.seed, or the fresh one drawn for None)

    @property
    def image(self):
        return to_pil(self.tensor)

    @property
    def improved(self) -> bool:
        """Whether any step improved the picture: in some stage an evaluation after the first was
        lower than the first. Not so with one step per stage (L-BFGS's one evaluation is of the
        starting image), or when every step diverged: the result is then the starting picture."""
        stages: Dict[int, List[float]] = {}
        for record in self.history:
            stages.setdefault(record["stage"], []).append(record["total"])
        return any(min(totals[1:], default=math.inf) < totals[0] for totals in stages.values())


class Stylizer:
    """Loads VGG19 once; ``run`` stylizes content images with style images.

    Options are those of :class:`StyleOptions`, given as an instance and/or
    keyword overrides. Invalid options raise :class:`OptionError`, unreadable
    or unsuitable images :class:`nst_ext.io.images.ImageError`.
    """

    def __init__(self, options: Optional[StyleOptions] = None, **overrides):
        options = options or StyleOptions()
        unknown = set(overrides) - {f.name for f in dataclasses.fields(StyleOptions)}
        if unknown:
            raise OptionError(f"unknown option(s) {', '.join(sorted(unknown))}; see help(nst_ext.StyleOptions)")
        self.options = dataclasses.replace(options, **overrides)
        self.options.validate()
        self.network = Network(self.options)
        # The target Grams of the last style images run, per stage size: a batch job makes them once.
        self._style_grams: Dict[Tuple, Dict[str, torch.Tensor]] = {}
        self._style_sources: Tuple = ()

    # Where the run happens is the network's (nst_ext.model.network): read here, decided there.
    vgg = property(lambda self: self.network.vgg)
    device = property(lambda self: self.network.device)  # the picture's and the optimiser's
    devices = property(lambda self: self.network.devices)
    mixed_precision = property(lambda self: self.network.mixed_precision)
    weights = property(lambda self: self.network.weights)

    # -- the optimisation -------------------------------------------------------------------------
    def run(
        self,
        content: ImageSource,
        styles: Union[ImageSource, Sequence[ImageSource]],
        callback: Optional[Callable[[Progress], None]] = None,
        init: Optional[ImageSource] = None,
        temporal: Optional[TemporalTarget] = None,
    ) -> StylizeResult:
        """Stylize `content` with `styles`; returns the image with its loss history. `init`
        overrides the ``init`` option for this run; `temporal` adds a video frame's temporal term
        (resized to each stage).

        Ctrl-C (KeyboardInterrupt) stops the run cleanly: the result holds the
        best image found so far and ``interrupted=True``.
        """
        return self._run([content], styles, callback, init, temporal)[0]

    def run_many(
        self,
        contents: Sequence[ImageSource],
        styles: Union[ImageSource, Sequence[ImageSource]],
        callback: Optional[Callable[[Progress], None]] = None,
    ) -> List[StylizeResult]:
        """Stylize several content images with the same `styles`, optimised together: each step
        runs them through VGG as one batch, which keeps a GPU busier than one picture does. Each
        picture has its own content target, style normaliser and L-BFGS, so its result is the one
        ``run`` gives it alone (up to the rounding of batched convolutions; tested). The contents
        must have the same shape at every stage (``StyleOptions.stage_shapes``; ``nst_ext.jobs`` groups
        a folder's images so). Under colour control each picture's style targets follow its own
        colours, so the pictures are then run one after another. The callback sees the batch's
        summed losses and the first picture. Ctrl-C stops all of them: each result holds its
        best image so far and ``interrupted=True``.
        """
        contents = list(contents)
        if not self.shares_style_targets or len(contents) <= 1:
            results = []
            for content in contents:
                results.append(self.run(content, styles, callback))
                if results[-1].interrupted:
                    break
            return results
        return self._run(contents, styles, callback)

    @property
    def shares_style_targets(self) -> bool:
        """Whether the style targets are the same for every content image: then they are kept for
        the next run with the same style tensors, and :meth:`run_many` optimises its pictures
        together. Not under colour control, where they follow each content's colours."""
        return not self.options.colors_follow_content

    def _run(self, contents, styles, callback, init=None, temporal=None) -> List[StylizeResult]:
        options = self.options
        started = time.perf_counter()
        effects = allowed_process_effects()
        if effects.algorithm_cache:
            algorithm_cache.load_once()  # the shapes timed by earlier processes on this machine
        content_images, style_images, blend = prepare_inputs(self.options, contents, styles)
        masks = prepare_masks(self.options, content_images[0], style_images)
        shapes = {options.stage_shapes(tuple(image.shape[-2:])) for image in content_images}
        if len(shapes) > 1:
            raise OptionError(
                "the content images of one batch must have the same shape at every stage; "
                "run pictures of other shapes in another batch"
            )
        self._remember_styles(styles)
        # One generator per picture, seeded alike: a picture's noise does not depend on its batch.
        seed = options.seed if options.seed is not None else torch.seed()
        generators = [torch.Generator().manual_seed(seed) for _ in content_images]
        sizes, stage_steps = options.stage_sizes(), options.stage_steps()
        plans = plan_stages(
            options,
            self.network,
            tuple(content_images[0].shape[-2:]),
            [tuple(s.shape[-2:]) for s in style_images],
            pictures=len(content_images),
        )
        if options.style_loss != "gram" and any(plan.tile_edge for plan in plans):
            raise OptionError(
                f"this picture fits the memory budget only in tiles, and style_loss {options.style_loss!r} "
                "needs each picture in one pass: use style_loss 'gram', a smaller size or a larger max_memory"
            )
        if any(plan.releases_freed_memory_promptly for plan in plans) and any(
            device.type == "cpu" for device in self.devices
        ):
            # Else the allocator's slack eats what checkpointing saves.
            if effects.prompt_memory_release:
                release_freed_memory_promptly()
            else:
                warn_memory_release_not_allowed()
        # Every stage's images are made, and their sizes checked, before any work starts.
        stages = [
            (
                [content_at_stage(self.options, image, stage_size) for image in content_images],
                styles_at_stage(self.options, style_images, stage_size),
            )
            for stage_size in sizes
        ]
        histories: List[List[Dict[str, float]]] = [[] for _ in content_images]
        images = previous_contents = [None] * len(content_images)  # before the first stage: none
        for stage, (steps, plan) in enumerate(zip(stage_steps, plans)):
            # A stage's images are dropped with it, its style images once its targets are made (at a
            # print size each is as large as the picture).
            (stage_contents, stage_styles), stages[stage] = stages[stage], None
            images = [
                self._initial_image(stage_content, image, previous_content, generator, init)
                for stage_content, image, previous_content, generator in zip(
                    stage_contents, images, previous_contents, generators
                )
            ]
            previous_contents = stage_contents
            stage_temporal = temporal and TemporalTarget(
                resize(temporal.previous, tuple(stage_contents[0].shape[-2:])),
                resize(temporal.mask[None], tuple(stage_contents[0].shape[-2:]))[0],
                temporal.weight,
            )
            stage_masks = masks_at_stage(
                masks, tuple(stage_contents[0].shape[-2:]), [tuple(style.shape[-2:]) for style in stage_styles]
            )
            images, interrupted = self._optimize(
                stage,
                len(sizes),
                steps,
                images,
                stage_contents,
                stage_styles,
                blend,
                histories,
                callback,
                plan,
                stage_temporal,
                stage_masks,
            )
            if interrupted:
                break
        results = [
            StylizeResult(
                tensor=image[0].detach().float().cpu().clamp(0, 1), history=history, interrupted=interrupted, seed=seed
            )
            for image, history in zip(images, histories)
        ]
        if options.preserve_color == "luminance":
            final_content = resize(content_images[0], tuple(results[0].tensor.shape[-2:]))
            results[0].tensor = color.combine_luminance(results[0].tensor, final_content, options.color_space)
        for result in results:
            result.seconds = time.perf_counter() - started
        if effects.algorithm_cache:
            algorithm_cache.save()  # the shapes this run timed, for the next process
        return results

    def _remember_styles(self, styles) -> None:
        """Keeps the style Grams made by a run for the next run with the very same style tensors (as
        a batch job or a video passes them; not paths, whose files may change between runs), unless
        their colours follow each content. A tensor changed in place between runs is not noticed."""
        sources = tuple(styles) if isinstance(styles, (list, tuple)) else (styles,)
        same = len(sources) == len(self._style_sources) and all(
            isinstance(a, torch.Tensor) and a is b for a, b in zip(sources, self._style_sources)
        )
        if not same or not self.shares_style_targets:
            self._style_grams.clear()
        self._style_sources = sources  # referenced, so that `is` above cannot match a new object

    def _initial_image(self, stage_content, previous, previous_content, generator, init=None) -> torch.Tensor:
        """The image a stage starts from, ``(1, 3, H, W)`` on the device: the last stage's result
        (`previous`, made at the size of `previous_content`) enlarged when there is one, with the
        content's detail added back (``content_detail``), else the ``init``. A tensor of its own."""
        height, width = stage_content.shape[-2:]
        init = self.options.init if init is None else init
        starts_from_content = isinstance(init, str) and init == "content"
        if previous is not None:  # coarse-to-fine: start from the last stage's result
            start = resize(previous[0].detach().float().cpu().clamp(0, 1), (height, width))
            if self.options.content_detail and starts_from_content:
                # What the enlargement of the content itself loses: the picture's edges at this size.
                start = (start + stage_content - resize(previous_content, (height, width))).clamp(0, 1)
        elif starts_from_content:
            start = stage_content
        elif isinstance(init, str) and init == "noise":
            start = torch.rand((3, height, width), generator=generator)
        else:
            start = resize(load_image(init, "init image", self.options.max_input_pixels), (height, width))
        image = start.unsqueeze(0).to(self.device).contiguous()
        # The stage optimises this tensor in place: never the content image or a caller's init itself.
        may_be_theirs = previous is None and not (isinstance(init, str) and init == "noise")
        return image.clone() if may_be_theirs and image.data_ptr() == start.data_ptr() else image

    def objective(
        self,
        content: ImageSource,
        styles: Union[ImageSource, Sequence[ImageSource]],
        size: Optional[int] = None,
        plan: Optional[MemoryPlan] = None,
    ) -> Tuple[torch.Tensor, Objective]:
        """The loss of one stage at `size` (default: the output size), for
        custom optimisers and benchmarks: returns the content image as the
        starting point, ``(1, 3, H, W)`` on the device, and the Objective
        (`plan`: its segments and checkpointing; default one segment per device)."""
        content_images, style_images, blend = prepare_inputs(self.options, [content], styles)
        stage_size = size or self.options.output_size
        stage_content = content_at_stage(self.options, content_images[0], stage_size)
        stage_styles = styles_at_stage(self.options, style_images, stage_size)
        masks = masks_at_stage(
            prepare_masks(self.options, content_images[0], style_images),
            tuple(stage_content.shape[-2:]),
            [tuple(style.shape[-2:]) for style in stage_styles],
        )
        objective = Objective(self.network, self.options, stage_content, stage_styles, blend, plan, masks=masks)
        return stage_content.unsqueeze(0).to(self.device), objective

    def _optimize(
        self,
        stage,
        stages,
        steps,
        images,
        stage_contents,
        stage_styles,
        blend,
        histories,
        callback,
        plan,
        temporal=None,
        masks=None,
    ):
        """One stage for one picture or a batch (`images`: a list of ``(1, 3, H, W)``, one per
        picture, with their stage contents and histories). It takes `stage_styles` over: the
        list is emptied once their Grams are made (at a print size each style image is as large
        as the picture). Nothing here waits for the GPU: the
        loss terms of each evaluation stay on the device (read into the histories once, at the end
        of the stage), the best images are kept there by masked copies, and the L-BFGS keeps its
        scalars there."""
        options = self.options
        batched = len(images) > 1
        images = [image.requires_grad_(True) for image in images]  # each the stage's own (_initial_image)
        bests = [BestImage(image) for image in images]
        records = []

        def closure():
            terms = evaluate()
            records.append(terms)
            rows = terms if batched else terms[None]
            for best, row, image in zip(bests, rows, images):
                best.offer(row[-1], image)
            if callback is not None:
                callback(
                    Progress(
                        stage=stage,
                        stages=stages,
                        step=len(records),
                        steps=steps,
                        size=tuple(images[0].shape[-2:]),
                        terms=rows.sum(0),
                        image=lambda: images[0].detach()[0].float().cpu().clamp(0, 1),
                        memory_plan=plan,
                    )
                )
            return rows[:, -1].sum()

        interrupted = False
        try:  # a stop while the targets are computed keeps the stage's starting images
            key = tuple(tuple(style.shape[-2:]) for style in stage_styles)  # one per stage size
            contents = torch.stack(stage_contents) if batched else stage_contents[0]
            objective = Objective(
                self.network, options, contents, stage_styles, blend, plan, self._style_grams.get(key), temporal, masks
            )
            del contents
            stage_styles.clear()  # the Grams are made (see the docstring)
            if self.shares_style_targets:
                self._style_grams[key] = objective.style_grams
            evaluate = objective.evaluator(images if batched else images[0], graph=options.cuda_graph)
            if options.optimizer == "lbfgs":
                history_dtype = torch.bfloat16 if plan.history_bfloat16 else None
                optimizers = [
                    LBFGS(
                        image,
                        lr=1.0,
                        history_size=plan.history_size,
                        first_step_rms=LBFGS_FIRST_STEP_RMS,
                        history_dtype=history_dtype,
                        max_step_rms=LBFGS_MAX_STEP_RMS,
                    )
                    for image in images
                ]
                run_together(optimizers, closure, steps)
            else:  # Adam works element by element: one over all the pictures is one per picture
                optimizer = torch.optim.Adam(images, lr=options.learning_rate)
                for _ in range(steps):
                    optimizer.step(closure)
                    with torch.no_grad():
                        for image in images:
                            image.clamp_(0, 1)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            if records:  # one transfer for the whole stage
                values = torch.stack(records)
                values = (values if batched else values[:, None]).transpose(0, 1).tolist()
                for history, rows in zip(histories, values):
                    for step, row in enumerate(rows, start=1):
                        history.append({"stage": stage, "step": step, **dict(zip(TERMS, row))})
        return [best.image for best in bests], interrupted


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


def stylize(
    content: ImageSource,
    style: Union[ImageSource, Sequence[ImageSource]],
    callback: Optional[Callable[[Progress], None]] = None,
    **options,
):
    """Stylize `content` with one or more `style` images (paths, PIL images or
    ``(3, H, W)`` tensors in [0, 1]). Options are :class:`StyleOptions` fields.

    Returns a PIL image, or a ``(3, H, W)`` float tensor in [0, 1] when
    `content` was a tensor.
    """
    result = Stylizer(**options).run(content, style, callback=callback)
    return result.tensor if isinstance(content, torch.Tensor) else result.image
