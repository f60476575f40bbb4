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

from nst_ext import color
from nst_ext.errors import ImageError
from nst_ext.images import ImageSource, load_image, long_side_shape, resize, resize_to_long_side, to_pil
from nst_ext.lbfgs import LBFGS, run_together
from nst_ext.memory import (DEFAULT_BUDGET_SHARE, MemoryPlan, free_memory_bytes, parse_size, plan_stage,
                            release_freed_memory_promptly, saved_bytes_per_layer, split_layers)
from nst_ext.objective import TERMS, Objective, TemporalTarget
from nst_ext.options import LBFGS_FIRST_STEP_RMS, OptionError, StyleOptions, resolve_device, uses_mixed_precision
from nst_ext.layers import LAYER_INDEX, LAYERS, min_image_side
from nst_ext.vgg import VGG19Features
from nst_ext.weights import resolve_weights

__all__ = ["Objective", "Progress", "StylizeResult", "Stylizer", "TERMS", "TemporalTarget", "free_memory_bytes",
           "stylize"]


class Progress:
    """What a callback sees after every evaluation of the loss.

    The loss values stay on the device until a callback reads one of
    ``content_loss``, ``style_loss``, ``tv_loss``, ``total_loss`` (floats;
    the first read copies all four to the host, a GPU synchronisation), so a
    callback that reads them only now and then does not slow a GPU run.
    ``image()`` returns the current image, ``(3, H, W)`` in [0, 1], on the CPU;
    ``memory_plan`` says how the stage fits in memory (checkpointing, history).
    For pictures optimised together (:meth:`Stylizer.run_many`) the losses are
    the batch's sums and ``image()`` is the first picture.
    """

    def __init__(self, stage: int, stages: int, step: int, steps: int, size: Tuple[int, int],
                 terms: torch.Tensor, image: Callable[[], torch.Tensor], memory_plan: Optional[MemoryPlan] = None):
        self.stage, self.stages, self.step, self.steps, self.size = stage, stages, step, steps, size
        self.memory_plan = memory_plan  # how this stage fits in memory (nst_ext.memory)
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
    or unsuitable images :class:`nst_ext.images.ImageError`.
    """

    def __init__(self, options: Optional[StyleOptions] = None, **overrides):
        options = options or StyleOptions()
        unknown = set(overrides) - {f.name for f in dataclasses.fields(StyleOptions)}
        if unknown:
            raise OptionError(f"unknown option(s) {', '.join(sorted(unknown))}; see help(nst_ext.StyleOptions)")
        self.options = dataclasses.replace(options, **overrides)
        self.options.validate()
        self.devices = [resolve_device(name) for name in (self.options.devices or [self.options.device])]
        self.device = self.devices[0]  # the image's, the optimiser's and VGG's first layers'
        self.mixed_precision = uses_mixed_precision(self.options.mixed_precision, self.device)
        self._mixed_precision_on = {device: uses_mixed_precision(self.options.mixed_precision, device)
                                    for device in self.devices}
        self.weights = resolve_weights(self.options.weights, self.options.weights_normalization)
        layers = list(self.options.content_layers) + list(self.options.style_layers)
        deepest = max(layers, key=LAYER_INDEX.__getitem__)
        self.vgg = VGG19Features(self.weights, deepest, self.options.pooling).to(self.device)
        if any(device.type == "cuda" for device in self.devices):
            torch.backends.cudnn.benchmark = True
        # Channels-last on every device: cuDNN's tensor-core convolutions and oneDNN's native NHWC ones
        # (on the CPU no layout conversion around each convolution: 5.4 vs 6.8 s per 1024 px step,
        # BENCHMARKS.md "Large pictures").
        self.vgg = self.vgg.to(memory_format=torch.channels_last)
        # Where each further device's layers begin (VGG layer indices), by the user's split or in
        # proportion to each device's free memory.
        # The target Grams of the last style images run, per stage size: a batch job makes them once.
        self._style_grams: Dict[Tuple, Dict[str, torch.Tensor]] = {}
        self._style_sources: Tuple = ()
        self.device_starts: List[int] = []
        if len(self.devices) > 1:
            if self.options.device_split:
                self.device_starts = [LAYER_INDEX[name] for name in self.options.device_split]
            else:
                saved = saved_bytes_per_layer(self.options.size, self.options.size, deepest, layers, 2)
                self.device_starts = split_layers(saved, [free_memory_bytes(d) for d in self.devices])
            if self.device_starts and self.device_starts[-1] > LAYER_INDEX[deepest]:
                raise OptionError(f"device split at {LAYERS[self.device_starts[-1]].name} is past the deepest layer "
                                  f"used, {deepest}; split at shallower layers")
            cuts = [0, *self.device_starts, len(self.vgg.layers)]
            self.vgg.place([self.devices[d] for d in range(len(self.devices)) for _ in range(cuts[d], cuts[d + 1])])

    # -- inputs -----------------------------------------------------------------------------------
    def _prepare_inputs(self, contents: Sequence[ImageSource], styles: Sequence[ImageSource]):
        """The content images (a list), the style images and the normalised blend weights. Style
        colours follow the content under preserve_color, so that needs one content image."""
        options = self.options
        if isinstance(styles, (str, bytes)) or not isinstance(styles, Sequence):
            styles = [styles]
        if not styles:
            raise OptionError("give at least one style image")
        blend = options.style_blend_weights
        if blend is None:
            blend = [1.0] * len(styles)
        if len(blend) != len(styles):
            raise OptionError(f"{len(blend)} style blend weights given for {len(styles)} style images; "
                              "give one weight per style image")
        if any(not math.isfinite(w) or w < 0 for w in blend) or sum(blend) <= 0:
            raise OptionError(f"style blend weights must be non-negative with a positive sum, got {list(blend)}")
        blend = [w / sum(blend) for w in blend]
        limit = options.max_input_pixels
        content_images = [load_image(content, "content image", limit) for content in contents]
        style_images = [load_image(style, f"style image {i + 1}" if len(styles) > 1 else "style image", limit)
                        for i, style in enumerate(styles)]
        assert self.shares_style_targets or len(content_images) == 1
        if options.preserve_color == "histogram":
            style_images = [color.match_color_histogram(style, content_images[0]) for style in style_images]
        elif options.preserve_color == "luminance":
            style_images = [color.match_luminance(style, content_images[0]) for style in style_images]
        return content_images, style_images, blend

    def device_segments(self, layer_count: int) -> Tuple[Tuple[int, int], ...]:
        """Layers ``0 … layer_count - 1`` cut where each device's layers begin."""
        cuts = sorted({0, *(start for start in self.device_starts if start < layer_count), layer_count})
        return tuple(zip(cuts[:-1], cuts[1:]))

    def memory_budget(self) -> int:
        """Bytes a stage may use: --max-memory on each device, or by default a safe share of the
        memory free on the devices now."""
        distinct = set(self.devices)  # "cpu,cpu" is one memory, counted once
        if self.options.max_memory is not None:
            return parse_size(self.options.max_memory) * len(distinct)
        return int(DEFAULT_BUDGET_SHARE * sum(free_memory_bytes(device) for device in distinct))

    def memory_plans(self, content_shape: Tuple[int, int], style_shapes: Sequence[Tuple[int, int]],
                     pictures: int = 1) -> List[MemoryPlan]:
        """Each stage's plan (nst_ext.memory) for `pictures` content images of `content_shape`
        (height, width) optimised together and style images of `style_shapes`, from their shapes
        alone: a size that cannot fit is refused (OptionError) before any stage's images are made."""
        options = self.options
        budget, plans = self.memory_budget(), []
        # The finest stage first: when nothing fits, the refusal names the picture asked for.
        for stage_size, steps in reversed(list(zip(options.stage_sizes(), options.stage_steps()))):
            height, width = long_side_shape(*content_shape, stage_size)
            style_side = max(1, round(stage_size * options.style_scale))
            plans.append(plan_stage(
                height, width, options.content_layers, options.style_layers, steps,
                [long_side_shape(*shape, style_side) for shape in style_shapes], budget, self.device.type,
                activation_bytes=2 if self.mixed_precision else 4, optimizer=options.optimizer,
                checkpointing=options.checkpointing, history_size=options.lbfgs_history,
                breaks=self.device_starts, pictures=pictures))
        return plans[::-1]

    def _check_size(self, image: torch.Tensor, what: str) -> None:
        layers = list(self.options.content_layers) + list(self.options.style_layers)
        needed = min_image_side(layers)
        height, width = image.shape[-2:]
        if min(height, width) < needed:
            deepest = max(layers, key=lambda name: LAYERS[LAYER_INDEX[name]].pools_before)
            raise ImageError(f"{what} is {width}x{height} pixels at this stage, too small for layer {deepest}, which "
                             f"needs at least {needed} pixels on the short side; use a larger --size/--style-scale "
                             "or shallower layers")

    # -- the optimisation -------------------------------------------------------------------------
    def run(self, content: ImageSource, styles: Union[ImageSource, Sequence[ImageSource]],
            callback: Optional[Callable[[Progress], None]] = None, init: Optional[ImageSource] = None,
            temporal: Optional[TemporalTarget] = None) -> StylizeResult:
        """Stylize `content` with `styles`; returns the image with its loss history. `init`
        overrides the ``init`` option for this run; `temporal` adds a video frame's temporal term
        (resized to each stage).

        Ctrl-C (KeyboardInterrupt) stops the run cleanly: the result holds the
        best image found so far and ``interrupted=True``.
        """
        return self._run([content], styles, callback, init, temporal)[0]

    def run_many(self, contents: Sequence[ImageSource], styles: Union[ImageSource, Sequence[ImageSource]],
                 callback: Optional[Callable[[Progress], None]] = None) -> List[StylizeResult]:
        """Stylize several content images with the same `styles`, optimised together: each step
        runs them through VGG as one batch, which keeps a GPU busier than one picture does. Each
        picture has its own content target, style normaliser and L-BFGS, so its result is the one
        ``run`` gives it alone (up to the rounding of batched convolutions; tested). The contents
        must have the same shape at every stage (:meth:`stage_shapes`; ``nst_ext.jobs`` groups
        a folder's images so). Under preserve_color each picture's style targets follow its own
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
        together. Not under preserve_color, where they follow each content's colours."""
        return self.options.preserve_color is None

    def stage_shapes(self, content_shape: Tuple[int, int]) -> Tuple[Tuple[int, int], ...]:
        """(height, width) of each stage for a content image of `content_shape`: pictures with the
        same stage shapes can be optimised together (:meth:`run_many`)."""
        return tuple(long_side_shape(*content_shape, size) for size in self.options.stage_sizes())

    def _run(self, contents, styles, callback, init=None, temporal=None) -> List[StylizeResult]:
        options = self.options
        started = time.perf_counter()
        content_images, style_images, blend = self._prepare_inputs(contents, styles)
        shapes = {self.stage_shapes(tuple(image.shape[-2:])) for image in content_images}
        if len(shapes) > 1:
            raise OptionError("the content images of one batch must have the same shape at every stage; "
                              "run pictures of other shapes in another batch")
        self._remember_styles(styles)
        # One generator per picture, seeded alike: a picture's noise does not depend on its batch.
        seed = options.seed if options.seed is not None else torch.seed()
        generators = [torch.Generator().manual_seed(seed) for _ in content_images]
        sizes, stage_steps = options.stage_sizes(), options.stage_steps()
        plans = self.memory_plans(tuple(content_images[0].shape[-2:]), [tuple(s.shape[-2:]) for s in style_images],
                                  pictures=len(content_images))
        if any(plan.budget_limited for plan in plans) and any(device.type == "cpu" for device in self.devices):
            release_freed_memory_promptly()  # else the allocator's slack eats what checkpointing saves
        # Every stage's images are made, and their sizes checked, before any work starts.
        stages = [([self._stage_content(image, stage_size) for image in content_images],
                   self._stage_styles(style_images, stage_size)) for stage_size in sizes]
        results = [StylizeResult(tensor=resize_to_long_side(image, sizes[-1])) for image in content_images]
        images = previous_contents = [None] * len(content_images)  # before the first stage: none
        for stage, ((stage_contents, stage_styles), steps, plan) in enumerate(zip(stages, stage_steps, plans)):
            images = [self._initial_image(stage_content, image, previous_content, generator, init)
                      for stage_content, image, previous_content, generator
                      in zip(stage_contents, images, previous_contents, generators)]
            previous_contents = stage_contents
            stage_temporal = temporal and TemporalTarget(
                resize(temporal.previous, tuple(stage_contents[0].shape[-2:])),
                resize(temporal.mask[None], tuple(stage_contents[0].shape[-2:]))[0], temporal.weight)
            images, interrupted = self._optimize(stage, len(sizes), steps, images, stage_contents, stage_styles, blend,
                                                 [result.history for result in results], callback, plan, stage_temporal)
            for result, image in zip(results, images):
                result.tensor = image[0].detach().float().cpu().clamp(0, 1)
                result.interrupted = interrupted
            if interrupted:
                break
        if options.preserve_color == "luminance":
            final_content = resize(content_images[0], tuple(results[0].tensor.shape[-2:]))
            results[0].tensor = color.combine_luminance(results[0].tensor, final_content)
        for result in results:
            result.seconds = time.perf_counter() - started
        return results

    def _remember_styles(self, styles) -> None:
        """Keeps the style Grams made by a run for the next run with the very same style tensors (as
        a batch job or a video passes them; not paths, whose files may change between runs), unless
        their colours follow each content. A tensor changed in place between runs is not noticed."""
        sources = tuple(styles) if isinstance(styles, (list, tuple)) else (styles,)
        same = (len(sources) == len(self._style_sources)
                and all(isinstance(a, torch.Tensor) and a is b for a, b in zip(sources, self._style_sources)))
        if not same or not self.shares_style_targets:
            self._style_grams.clear()
        self._style_sources = sources  # referenced, so that `is` above cannot match a new object

    def _initial_image(self, stage_content, previous, previous_content, generator, init=None) -> torch.Tensor:
        """The image a stage starts from, ``(1, 3, H, W)`` on the device: the last stage's result
        (`previous`, made at the size of `previous_content`) enlarged when there is one, with the
        content's detail added back (``content_detail``), else the ``init``."""
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
        return start.unsqueeze(0).to(self.device).contiguous()

    def autocast(self, device: Optional[torch.device] = None):
        """bfloat16 autocast for VGG's layers on `device` (default: the first device), where mixed
        precision is on for it."""
        device = device or self.device
        # No cast cache: a CUDA graph must not capture casts cached outside it (and they are cheap).
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                              enabled=self._mixed_precision_on.get(device, self.mixed_precision), cache_enabled=False)

    def objective(self, content: ImageSource, styles: Union[ImageSource, Sequence[ImageSource]],
                  size: Optional[int] = None, plan: Optional[MemoryPlan] = None) -> Tuple[torch.Tensor, Objective]:
        """The loss of one stage at `size` (default: the output size), for
        custom optimisers and benchmarks: returns the content image as the
        starting point, ``(1, 3, H, W)`` on the device, and the Objective
        (`plan`: its segments and checkpointing; default one segment per device)."""
        content_images, style_images, blend = self._prepare_inputs([content], styles)
        stage_size = size or self.options.size
        stage_content = self._stage_content(content_images[0], stage_size)
        stage_styles = self._stage_styles(style_images, stage_size)
        return stage_content.unsqueeze(0).to(self.device), Objective(self, stage_content, stage_styles, blend, plan)

    def _stage_content(self, content_image, stage_size):
        """The content image resized for a stage whose output's long side is stage_size, its size
        checked against the layers."""
        stage_content = resize_to_long_side(content_image, stage_size)
        if self.options.preserve_color == "luminance":
            stage_content = color.as_gray_rgb(color.luminance(stage_content))
        self._check_size(stage_content, "the content image")
        return stage_content

    def _stage_styles(self, style_images, stage_size):
        """The style images resized for a stage whose output's long side is stage_size (by
        style_scale), their sizes checked against the layers."""
        style_side = max(1, round(stage_size * self.options.style_scale))
        stage_styles = [resize_to_long_side(style, style_side) for style in style_images]
        for i, style in enumerate(stage_styles):
            self._check_size(style, f"style image {i + 1}")
        return stage_styles

    def _optimize(self, stage, stages, steps, images, stage_contents, stage_styles, blend, histories, callback, plan,
                  temporal=None):
        """One stage for one picture or a batch (`images`: a list of ``(1, 3, H, W)``, one per
        picture, with their stage contents and histories). Nothing here waits for the GPU: the
        loss terms of each evaluation stay on the device (read into the histories once, at the end
        of the stage), the best images are kept there by masked copies, and the L-BFGS keeps its
        scalars there."""
        options = self.options
        batched = len(images) > 1
        images = [image.clone().requires_grad_(True) for image in images]
        bests = [BestImage(image) for image in images]
        records = []

        def closure():
            terms = evaluate()
            records.append(terms)
            rows = terms if batched else terms[None]
            for best, row, image in zip(bests, rows, images):
                best.offer(row[-1], image)
            if callback is not None:
                callback(Progress(stage=stage, stages=stages, step=len(records), steps=steps,
                                  size=tuple(images[0].shape[-2:]), terms=rows.sum(0),
                                  image=lambda: images[0].detach()[0].float().cpu().clamp(0, 1), memory_plan=plan))
            return rows[:, -1].sum()

        interrupted = False
        try:  # a stop while the targets are computed keeps the stage's starting images
            key = tuple(tuple(style.shape[-2:]) for style in stage_styles)  # one per stage size
            contents = torch.stack(stage_contents) if batched else stage_contents[0]
            objective = Objective(self, contents, stage_styles, blend, plan, self._style_grams.get(key), temporal)
            if self.shares_style_targets:
                self._style_grams[key] = objective.style_grams
            evaluate = objective.evaluator(images if batched else images[0], graph=options.cuda_graph)
            if options.optimizer == "lbfgs":
                optimizers = [LBFGS(image, lr=1.0, history_size=plan.history_size, first_step_rms=LBFGS_FIRST_STEP_RMS)
                              for image in images]
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
        self.image = torch.where(better, image.detach(), self.image)


def stylize(content: ImageSource, style: Union[ImageSource, Sequence[ImageSource]],
            callback: Optional[Callable[[Progress], None]] = None, **options):
    """Stylize `content` with one or more `style` images (paths, PIL images or
    ``(3, H, W)`` tensors in [0, 1]). Options are :class:`StyleOptions` fields.

    Returns a PIL image, or a ``(3, H, W)`` float tensor in [0, 1] when
    `content` was a tensor.
    """
    result = Stylizer(**options).run(content, style, callback=callback)
    return result.tensor if isinstance(content, torch.Tensor) else result.image
