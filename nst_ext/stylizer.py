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
from PIL import Image

from nst_ext.io import algorithm_cache
from nst_ext.io.images import ImageSource, image_shape, resize, to_pil
from nst_ext.model.network import Network
from nst_ext.objective import TERMS, Objective, TemporalTarget, color
from nst_ext.objective.inputs import (
    content_at_stage,
    masks_at_stage,
    prepare_inputs,
    prepare_masks,
    starting_image,
    styles_at_stage,
)
from nst_ext.optimize import BestImage, History, Progress, StageInputs, StyleTargetCache, optimize_stage
from nst_ext.plan.budget import release_freed_memory_promptly
from nst_ext.plan.effects import allowed_process_effects, warn_memory_release_not_allowed
from nst_ext.plan.memory import MemoryPlan
from nst_ext.plan.options import OptionError, StyleOptions
from nst_ext.plan.run import RunPlan, plan_run, stage_geometry, stage_shapes

__all__ = ["BestImage", "Objective", "Progress", "StylizeResult", "Stylizer", "TERMS", "TemporalTarget", "stylize"]


@dataclass
class StylizeResult:
    tensor: torch.Tensor  # (3, H, W) float32 RGB in [0, 1], CPU
    history: List[Dict[str, float]] = field(default_factory=list)
    interrupted: bool = False
    seconds: float = 0.0
    seed: Optional[int] = None  # the seed the run used (options.seed, or the fresh one drawn for None)

    @property
    def image(self) -> "Image.Image":
        """The picture as a PIL image (8-bit RGB)."""
        return to_pil(self.tensor)

    @property
    def improved(self) -> bool:
        """Whether any step improved the picture: in some stage an evaluation after the first was
        lower than the first. Not so with one step per stage (L-BFGS's one evaluation is of the
        starting image), or when every step diverged: the result is then the starting picture."""
        stages: Dict[int, List[float]] = {}
        for record in self.history:
            stages.setdefault(int(record["stage"]), []).append(record["total"])
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
        # The style targets of the last style images run, per stage size: a batch job makes them once.
        self._style_targets = StyleTargetCache(shared=self.shares_style_targets)
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
        must have the same shape at every stage (``nst_ext.plan.run.stage_shapes``; ``nst_ext.jobs`` groups
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

    def plan(
        self, content_shape: Tuple[int, int], style_shapes: Sequence[Tuple[int, int]], pictures: int = 1
    ) -> RunPlan:
        """The plan of a run of `pictures` content images of `content_shape` (height, width) with
        style images of `style_shapes` on this stylizer's devices (nst_ext.plan.run): each stage's
        sizes, steps and memory plan, or OptionError when a stage cannot fit."""
        return plan_run(self.options, self.network, content_shape, style_shapes, pictures)

    def _run(self, contents, styles, callback, init=None, temporal=None) -> List[StylizeResult]:
        options = self.options
        started = time.perf_counter()
        effects = allowed_process_effects()
        if effects.algorithm_cache:
            algorithm_cache.load_once()  # the shapes timed by earlier processes on this machine
        content_images, style_images, blend = prepare_inputs(options, contents, styles)
        masks = prepare_masks(options, content_images[0], style_images)
        if len({stage_shapes(options, image_shape(image)) for image in content_images}) > 1:
            raise OptionError(
                "the content images of one batch must have the same shape at every stage; "
                "run pictures of other shapes in another batch"
            )
        self._remember_styles(styles)
        # One generator per picture, seeded alike: a picture's noise does not depend on its batch.
        seed = options.seed if options.seed is not None else torch.seed()
        generators = [torch.Generator().manual_seed(seed) for _ in content_images]
        plan = self.plan(image_shape(content_images[0]), [image_shape(s) for s in style_images], len(content_images))
        self._prepare_memory_release(plan, effects.prompt_memory_release)
        # Every stage's images are made, and their sizes checked, before any work starts.
        stages: List[Optional[Tuple[List[torch.Tensor], List[torch.Tensor]]]] = [
            (
                [content_at_stage(options, image, stage.shape) for image in content_images],
                styles_at_stage(options, style_images, stage.style_shapes),
            )
            for stage in plan.stages
        ]
        histories: List[History] = [[] for _ in content_images]
        images: List[Optional[torch.Tensor]] = [None] * len(content_images)  # before the first stage: none
        previous_contents: List[Optional[torch.Tensor]] = [None] * len(content_images)
        interrupted = False
        for stage in plan.stages:
            # A stage's images are dropped with it, its style images once its targets are made (at a
            # print size each is as large as the picture).
            stage_images, stages[stage.index] = stages[stage.index], None
            assert stage_images is not None
            stage_contents, stage_styles = stage_images
            starts = [
                starting_image(options, content, image, previous, generator, init, self.device)
                for content, image, previous, generator in zip(stage_contents, images, previous_contents, generators)
            ]
            previous_contents = list(stage_contents)
            inputs = StageInputs(
                stage_contents,
                stage_styles,
                blend,
                temporal and temporal.at(stage.shape),
                masks_at_stage(masks, stage.shape, stage.style_shapes),
            )
            best, interrupted = optimize_stage(
                self.network, options, stage, len(plan.stages), starts, inputs, histories, callback, self._style_targets
            )
            images = list(best)
            if interrupted:
                break
        return _results(
            options, images, histories, interrupted, seed, content_images[0], started, effects.algorithm_cache
        )

    def _prepare_memory_release(self, plan: RunPlan, allowed: bool) -> None:
        """Freed memory handed back to the system at once where the plan counts on it on a CPU (else
        the allocator's slack eats what checkpointing saves), or a warning where it is not allowed."""
        if plan.releases_freed_memory_promptly and any(device.type == "cpu" for device in self.devices):
            if allowed:
                release_freed_memory_promptly()
            else:
                warn_memory_release_not_allowed()

    def _remember_styles(self, styles) -> None:
        """Keeps the style Grams made by a run for the next run with the very same style tensors (as
        a batch job or a video passes them; not paths, whose files may change between runs), unless
        their colours follow each content. A tensor changed in place between runs is not noticed."""
        sources = tuple(styles) if isinstance(styles, (list, tuple)) else (styles,)
        same = len(sources) == len(self._style_sources) and all(
            isinstance(a, torch.Tensor) and a is b for a, b in zip(sources, self._style_sources)
        )
        if not same:  # (under colour control the cache keeps nothing: StyleTargetCache.shared)
            self._style_targets.forget()
        self._style_sources = sources  # referenced, so that `is` above cannot match a new object

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
        shape, style_shapes = stage_geometry(
            self.options,
            image_shape(content_images[0]),
            [image_shape(style) for style in style_images],
            size or self.options.output_size,
        )
        stage_content = content_at_stage(self.options, content_images[0], shape)
        stage_styles = styles_at_stage(self.options, style_images, style_shapes)
        masks = masks_at_stage(
            prepare_masks(self.options, content_images[0], style_images),
            tuple(stage_content.shape[-2:]),
            [tuple(style.shape[-2:]) for style in stage_styles],
        )
        objective = Objective(self.network, self.options, stage_content, stage_styles, blend, plan, masks=masks)
        return stage_content.unsqueeze(0).to(self.device), objective


def _results(
    options: StyleOptions, images, histories, interrupted, seed, content_image, started, save_cache
) -> List[StylizeResult]:
    """Each picture's result: its best image on the CPU in [0, 1] (the content's luminance put
    back under preserve_color="luminance"), its history, and the run's seed and time."""
    results = [
        StylizeResult(
            tensor=image[0].detach().float().cpu().clamp(0, 1), history=history, interrupted=interrupted, seed=seed
        )
        for image, history in zip(images, histories)
    ]
    if options.preserve_color == "luminance":
        final_content = resize(content_image, tuple(results[0].tensor.shape[-2:]))
        results[0].tensor = color.combine_luminance(results[0].tensor, final_content, options.color_space)
    for result in results:
        result.seconds = time.perf_counter() - started
    if save_cache:
        algorithm_cache.save()  # the shapes this run timed, for the next process
    return results


def stylize(
    content: ImageSource,
    style: Union[ImageSource, Sequence[ImageSource]],
    callback: Optional[Callable[[Progress], None]] = None,
    **options,
) -> Union["Image.Image", torch.Tensor]:
    """Stylize `content` with one or more `style` images (paths, PIL images or
    ``(3, H, W)`` tensors in [0, 1]). Options are :class:`StyleOptions` fields.

    Returns a PIL image, or a ``(3, H, W)`` float tensor in [0, 1] when
    `content` was a tensor.
    """
    result = Stylizer(**options).run(content, style, callback=callback)
    return result.tensor if isinstance(content, torch.Tensor) else result.image
