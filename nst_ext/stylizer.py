"""Gatys, Ecker & Bethge style transfer over VGG19 with the compiled losses,
plus the 2017 controls: colour preservation and coarse-to-fine multi-scale.

    import nst_ext
    picture = nst_ext.stylize("photo.jpg", "painting.jpg", size=512)
    picture.save("out.png")

or, to reuse the loaded network for several runs, ``nst_ext.Stylizer(...)``.
"""

import dataclasses
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from nst_ext import color
from nst_ext.errors import ImageError
from nst_ext.images import ImageSource, load_image, long_side_shape, resize, resize_to_long_side, to_pil
from nst_ext.lbfgs import LBFGS
from nst_ext.losses import ContentLoss, StyleLoss, TotalVariationLoss
from nst_ext.options import OptionError, StyleOptions, resolve_device, uses_mixed_precision
from nst_ext.layers import LAYER_INDEX, LAYERS, min_image_side
from nst_ext.vgg import VGG19Features
from nst_ext.weights import resolve_weights

# The loss terms of one evaluation, in the order of the (4,) tensors that hold them.
TERMS = ("content", "style", "tv", "total")
LBFGS_HISTORY = 50
# Memory a stage needs per pixel of its picture, measured: a default 1024 px run (1 Mpixel) peaks
# at about 5 GiB of RSS on the CPU (BENCHMARKS.md): VGG activations kept for the backward pass,
# their gradients and the L-BFGS history. Used only to refuse sizes that cannot fit at all.
BYTES_PER_PIXEL = 4096


def device_memory_bytes(device: torch.device) -> int:
    """The total memory of `device` (a GPU's, or this machine's RAM)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class Progress:
    """What a callback sees after every evaluation of the loss.

    The loss values stay on the device until a callback reads one of
    ``content_loss``, ``style_loss``, ``tv_loss``, ``total_loss`` (floats;
    the first read copies all four to the host, a GPU synchronisation), so a
    callback that reads them only now and then does not slow a GPU run.
    ``image()`` returns the current image, ``(3, H, W)`` in [0, 1], on the CPU.
    """

    def __init__(self, stage: int, stages: int, step: int, steps: int, size: Tuple[int, int],
                 terms: torch.Tensor, image: Callable[[], torch.Tensor]):
        self.stage, self.stages, self.step, self.steps, self.size = stage, stages, step, steps, size
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
        self.device = resolve_device(self.options.device)
        self.mixed_precision = uses_mixed_precision(self.options.mixed_precision, self.device)
        self.weights = resolve_weights(self.options.weights, self.options.weights_normalization)
        layers = list(self.options.content_layers) + list(self.options.style_layers)
        deepest = max(layers, key=LAYER_INDEX.__getitem__)
        self.vgg = VGG19Features(self.weights, deepest, self.options.pooling).to(self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            self.vgg = self.vgg.to(memory_format=torch.channels_last)

    # -- inputs -----------------------------------------------------------------------------------
    def _prepare_inputs(self, content: ImageSource, styles: Sequence[ImageSource]):
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
        content_image = load_image(content, "content image", limit)
        style_images = [load_image(style, f"style image {i + 1}" if len(styles) > 1 else "style image", limit)
                        for i, style in enumerate(styles)]
        if options.preserve_color == "histogram":
            style_images = [color.match_color_histogram(style, content_image) for style in style_images]
        elif options.preserve_color == "luminance":
            style_images = [color.match_luminance(style, content_image) for style in style_images]
        return content_image, style_images, blend

    def _check_memory(self, content_image: torch.Tensor, long_side: int) -> None:
        """Refuses, before any stage's images are made, a size whose largest stage cannot fit in
        the device's memory at all."""
        height, width = long_side_shape(*content_image.shape[-2:], long_side)
        needed, available = height * width * BYTES_PER_PIXEL, device_memory_bytes(self.device)
        if needed > available:
            raise OptionError(
                f"size {long_side} makes a {width}x{height} picture "
                f"that needs about {needed / 2**30:,.0f} GiB, more than the {available / 2**30:,.0f} GiB of "
                f"{self.device.type.upper() if self.device.type == 'cpu' else 'this GPU'} memory; use a smaller --size")

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
            callback: Optional[Callable[[Progress], None]] = None) -> StylizeResult:
        """Stylize `content` with `styles`; returns the image with its loss history.

        Ctrl-C (KeyboardInterrupt) stops the run cleanly: the result holds the
        best image found so far and ``interrupted=True``.
        """
        options = self.options
        started = time.perf_counter()
        content_image, style_images, blend = self._prepare_inputs(content, styles)
        generator = torch.Generator().manual_seed(options.seed if options.seed is not None else torch.seed())
        sizes, stage_steps = options.stage_sizes(), options.stage_steps()
        self._check_memory(content_image, max(sizes))
        # Every stage's images are made, and their sizes checked, before any work starts.
        stages = [self._stage_inputs(content_image, style_images, stage_size) for stage_size in sizes]
        result = StylizeResult(tensor=resize_to_long_side(content_image, sizes[-1]))
        image = None
        for stage, ((stage_content, stage_styles), steps) in enumerate(zip(stages, stage_steps)):
            image = self._initial_image(stage_content, image, generator)
            image, interrupted = self._optimize(stage, len(sizes), steps, image, stage_content, stage_styles, blend,
                                                result.history, callback)
            result.tensor = image[0].detach().float().cpu().clamp(0, 1)
            if interrupted:
                result.interrupted = True
                break
        if options.preserve_color == "luminance":
            final_content = resize(content_image, tuple(result.tensor.shape[-2:]))
            result.tensor = color.combine_luminance(result.tensor, final_content)
        result.seconds = time.perf_counter() - started
        return result

    def _initial_image(self, stage_content, previous, generator) -> torch.Tensor:
        height, width = stage_content.shape[-2:]
        if previous is not None:  # coarse-to-fine: start from the last stage's result
            start = resize(previous[0].detach().float().cpu().clamp(0, 1), (height, width))
        elif isinstance(self.options.init, str) and self.options.init == "content":
            start = stage_content
        elif isinstance(self.options.init, str) and self.options.init == "noise":
            start = torch.rand((3, height, width), generator=generator)
        else:
            start = resize(load_image(self.options.init, "init image", self.options.max_input_pixels), (height, width))
        return start.unsqueeze(0).to(self.device).contiguous()

    def _autocast(self):
        # No cast cache: a CUDA graph must not capture casts cached outside it (and they are cheap).
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.mixed_precision,
                              cache_enabled=False)

    def objective(self, content: ImageSource, styles: Union[ImageSource, Sequence[ImageSource]],
                  size: Optional[int] = None) -> Tuple[torch.Tensor, "Objective"]:
        """The loss of one stage at `size` (default: the output size), for
        custom optimisers and benchmarks: returns the content image as the
        starting point, ``(1, 3, H, W)`` on the device, and the Objective."""
        content_image, style_images, blend = self._prepare_inputs(content, styles)
        stage_content, stage_styles = self._stage_inputs(content_image, style_images, size or self.options.size)
        return stage_content.unsqueeze(0).to(self.device), Objective(self, stage_content, stage_styles, blend)

    def _stage_inputs(self, content_image, style_images, stage_size):
        """The content and style images resized for a stage whose output's long side is
        stage_size (styles by style_scale), sizes checked against the layers."""
        stage_content = resize_to_long_side(content_image, stage_size)
        if self.options.preserve_color == "luminance":
            stage_content = color.as_gray_rgb(color.luminance(stage_content))
        self._check_size(stage_content, "the content image")
        style_side = max(1, round(stage_size * self.options.style_scale))
        stage_styles = [resize_to_long_side(style, style_side) for style in style_images]
        for i, style in enumerate(stage_styles):
            self._check_size(style, f"style image {i + 1}")
        return stage_content, stage_styles

    def _optimize(self, stage, stages, steps, image, stage_content, stage_styles, blend, history, callback):
        """One stage. Nothing here waits for the GPU: the loss terms of each evaluation stay on the
        device (read into `history` once, at the end of the stage), the best image is kept there
        by a masked copy, and the L-BFGS keeps its scalars there."""
        options = self.options
        image = image.clone().requires_grad_(True)
        best = BestImage(image)
        records = []

        def closure():
            terms = evaluate()
            records.append(terms)
            best.offer(terms[-1], image)
            if callback is not None:
                callback(Progress(stage=stage, stages=stages, step=len(records), steps=steps,
                                  size=tuple(image.shape[-2:]), terms=terms,
                                  image=lambda: image.detach()[0].float().cpu().clamp(0, 1)))
            return terms[-1]

        interrupted = False
        try:  # a stop while the targets are computed keeps the stage's starting image
            evaluate = Objective(self, stage_content, stage_styles, blend).evaluator(image, graph=options.cuda_graph)
            if options.optimizer == "lbfgs":
                LBFGS(image, lr=1.0, history_size=LBFGS_HISTORY).run(closure, steps)
            else:
                optimizer = torch.optim.Adam([image], lr=options.learning_rate)
                for _ in range(steps):
                    optimizer.step(closure)
                    with torch.no_grad():
                        image.clamp_(0, 1)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            if records:  # one transfer for the whole stage
                for step, values in enumerate(torch.stack(records).tolist(), start=1):
                    history.append({"stage": stage, "step": step, **dict(zip(TERMS, values))})
        return best.image, interrupted


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


class Objective:
    """The weighted loss of one stage, its targets computed once at construction.

    Calling it with an image ``(1, 3, H, W)`` in [0, 1] on the stylizer's
    device returns 0-d tensors ``content``, ``style``, ``tv`` (each already
    multiplied by its weight) and ``total``; the caller runs backward.
    """

    def __init__(self, stylizer: Stylizer, stage_content: torch.Tensor, stage_styles: Sequence[torch.Tensor],
                 blend: Sequence[float]):
        options = stylizer.options
        self.stylizer = stylizer
        content_layers, style_layers = list(options.content_layers), list(options.style_layers)
        # One pass over the content image gives the content targets and, for the normalisation
        # below, the style layers' features there.
        at_content_layers = content_layers + (style_layers if options.normalize_style else [])
        with torch.no_grad(), stylizer._autocast():
            content_features = stylizer.vgg(stage_content.unsqueeze(0).to(stylizer.device), at_content_layers)
            style_features = [stylizer.vgg(style.unsqueeze(0).to(stylizer.device), style_layers) for style in stage_styles]
        content_weights = options.content_layer_weights or [1.0 / max(1, len(content_layers))] * len(content_layers)
        style_weights = options.style_layer_weights or [1.0 / len(style_layers)] * len(style_layers)
        self.content_terms = [(name, weight, ContentLoss(content_features[name]))
                              for name, weight in zip(content_layers, content_weights)]
        self.style_terms = [(name, weight, StyleLoss([features[name] for features in style_features], blend))
                            for name, weight in zip(style_layers, style_weights)]
        self.layers = sorted({name for name, _, _ in self.content_terms + self.style_terms}, key=LAYER_INDEX.__getitem__)
        self.tv_loss = TotalVariationLoss()
        # The style term relative to its value at the content image: how far the style is from the
        # content in Gram terms varies by two orders of magnitude between pairs (a photographic
        # texture against a portrait is far), and unscaled, a far style buries the subject.
        self.style_normalizer = 1.0
        if options.normalize_style:
            start = sum(w * term(content_features[name]) for name, w, term in self.style_terms).item()
            self.style_normalizer = 1.0 / max(start, 1e-6)

    def __call__(self, image: torch.Tensor) -> Dict[str, torch.Tensor]:
        options = self.stylizer.options
        with self.stylizer._autocast():
            # cuDNN follows the input's layout: channels-last pairs with the channels-last weights.
            vgg_input = image.contiguous(memory_format=torch.channels_last) if image.is_cuda else image
            features = self.stylizer.vgg(vgg_input, self.layers)
        content = sum((w * term(features[name]) for name, w, term in self.content_terms), image.new_zeros(()))
        style = sum(w * term(features[name]) for name, w, term in self.style_terms) * self.style_normalizer
        terms = {"content": options.content_weight * content, "style": options.style_weight * style,
                 "tv": options.tv_weight * self.tv_loss(image)}
        terms["total"] = terms["content"] + terms["style"] + terms["tv"]
        return terms

    def evaluator(self, image: torch.Tensor, graph: bool = True) -> Callable[[], torch.Tensor]:
        """A function that computes the loss at `image` (a leaf with requires_grad), fills
        ``image.grad`` and returns the terms as a new (4,) float32 tensor in the order of
        :data:`TERMS`. On CUDA with `graph`, the forward and backward are captured once as a CUDA
        graph and replayed (shapes are fixed within a stage); where capture fails, it warns and
        evaluates eagerly."""

        def eager() -> torch.Tensor:
            image.grad = None
            terms = self(image)
            terms["total"].backward()
            return torch.stack([terms[name].detach().float() for name in TERMS])

        if not (graph and image.is_cuda):
            return eager
        try:
            return _graphed(eager, image)
        except RuntimeError as error:  # e.g. an op that synchronises, from a user's custom weights
            warnings.warn(f"nst_ext: CUDA graph capture failed ({error}); evaluating without a graph",
                          RuntimeWarning, stacklevel=2)
            torch.cuda.synchronize(image.device)
            return eager


def _graphed(evaluate: Callable[[], torch.Tensor], image: torch.Tensor) -> Callable[[], torch.Tensor]:
    """`evaluate` captured as a CUDA graph: the replay writes the same tensors (the terms and
    ``image.grad``) in place, so each call returns a copy of the terms."""
    side = torch.cuda.Stream(image.device)
    side.wait_stream(torch.cuda.current_stream(image.device))
    with torch.cuda.stream(side):
        # Warm-up outside the graph: cuDNN's and nst_ext's algorithm choices time their
        # candidates (a synchronisation, not allowed while capturing), libraries make handles.
        for _ in range(2):
            evaluate()
    torch.cuda.current_stream(image.device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    image.grad = None
    with torch.cuda.graph(graph):
        static_terms = evaluate()
    static_grad = image.grad

    def replay() -> torch.Tensor:
        graph.replay()
        image.grad = static_grad
        return static_terms.clone()

    return replay


def stylize(content: ImageSource, style: Union[ImageSource, Sequence[ImageSource]],
            callback: Optional[Callable[[Progress], None]] = None, **options):
    """Stylize `content` with one or more `style` images (paths, PIL images or
    ``(3, H, W)`` tensors in [0, 1]). Options are :class:`StyleOptions` fields.

    Returns a PIL image, or a ``(3, H, W)`` float tensor in [0, 1] when
    `content` was a tensor.
    """
    result = Stylizer(**options).run(content, style, callback=callback)
    return result.tensor if isinstance(content, torch.Tensor) else result.image
