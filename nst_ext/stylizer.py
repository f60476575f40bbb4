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
from nst_ext.images import DEFAULT_MAX_INPUT_PIXELS, ImageError, ImageSource, load_image, resize, resize_to_long_side, to_pil
from nst_ext.losses import ContentLoss, StyleLoss, TotalVariationLoss
from nst_ext.vgg import LAYER_INDEX, LAYERS, VGG19Features, check_layer_names, min_image_side
from nst_ext.weights import resolve_weights

DEFAULT_STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
DEFAULT_CONTENT_LAYERS = ("relu4_2",)
COARSEST_AUTOMATIC_SCALE = 256
FIRST_STAGE_STEPS = 150
FINER_STAGE_STEPS = 50


class OptionError(ValueError):
    """An option with a value that cannot work, stated in one line."""


@dataclass
class StyleOptions:
    """Every knob of a run, with defaults that make a good picture.

    Weights are relative: each layer's loss is normalised by its target (see
    nst_ext.losses), so ``style_weight / content_weight`` sets the balance.
    ``scales`` are the coarse-to-fine stage sizes (Gatys et al. 2017), each
    stage starting from the previous one's result. By default (None) they
    halve from ``size`` down to no less than 256 pixels: 512 runs 256 → 512,
    1024 runs 256 → 512 → 1024, 256 and smaller run one stage.
    ``steps`` is the optimiser's iterations per stage: one int for every
    stage, or one per stage. By default (None) 150 for the first stage, which
    forms the picture, and 50 for each finer stage, which refines it.
    """

    size: int = 512
    steps: Optional[Union[int, Sequence[int]]] = None
    content_layers: Sequence[str] = DEFAULT_CONTENT_LAYERS
    style_layers: Sequence[str] = DEFAULT_STYLE_LAYERS
    content_layer_weights: Optional[Sequence[float]] = None
    style_layer_weights: Optional[Sequence[float]] = None
    content_weight: float = 1.0
    style_weight: float = 5.0
    tv_weight: float = 1.0
    style_blend_weights: Optional[Sequence[float]] = None
    style_scale: float = 1.0
    optimizer: str = "lbfgs"
    learning_rate: float = 0.02
    init: Union[str, ImageSource] = "content"
    scales: Optional[Sequence[int]] = None
    preserve_color: Optional[str] = None
    seed: Optional[int] = 0
    device: str = "auto"
    mixed_precision: bool = False  # bfloat16 convolutions (CUDA, or CPUs with native bfloat16)
    pooling: str = "avg"
    weights: Optional[str] = None
    weights_normalization: Optional[str] = None
    max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS

    def stage_sizes(self) -> List[int]:
        if self.scales:
            return list(self.scales)
        sizes = [self.size]
        while sizes[0] // 2 >= COARSEST_AUTOMATIC_SCALE:
            sizes.insert(0, sizes[0] // 2)
        return sizes

    def stage_steps(self) -> List[int]:
        stages = len(self.stage_sizes())
        if self.steps is None:
            return [FIRST_STAGE_STEPS] + [FINER_STAGE_STEPS] * (stages - 1)
        if isinstance(self.steps, int):
            return [self.steps] * stages
        return list(self.steps)

    def validate(self) -> None:
        def positive_int(name, value):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise OptionError(f"{name} must be a positive whole number, got {value!r}")

        def non_negative(name, value):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise OptionError(f"{name} must be a non-negative number, got {value!r}")

        positive_int("size", self.size)
        for stage_size in self.scales or ():
            positive_int("scales", stage_size)
        if self.scales and list(self.scales) != sorted(self.scales):
            raise OptionError(f"scales must grow from coarse to fine, got {list(self.scales)}")
        steps = self.stage_steps()
        if len(steps) != len(self.stage_sizes()):
            raise OptionError(f"steps lists {len(steps)} values but there are {len(self.stage_sizes())} scales")
        for count in steps:
            positive_int("steps", count)
        for name in ("content_weight", "style_weight", "tv_weight", "style_scale", "learning_rate"):
            non_negative(name, getattr(self, name))
        if self.style_scale <= 0:
            raise OptionError(f"style_scale must be above 0, got {self.style_scale}")
        if not self.style_layers:
            raise OptionError("style_layers must name at least one layer")
        check_layer_names(self.content_layers, "content layer")
        check_layer_names(self.style_layers, "style layer")
        for layers, weights, what in ((self.content_layers, self.content_layer_weights, "content"),
                                      (self.style_layers, self.style_layer_weights, "style")):
            if weights is not None:
                if len(weights) != len(layers):
                    raise OptionError(f"{len(weights)} {what} layer weights given for {len(layers)} {what} layers "
                                      f"({', '.join(layers)}); give one weight per layer")
                for weight in weights:
                    non_negative(f"{what} layer weight", weight)
        if self.optimizer not in ("lbfgs", "adam"):
            raise OptionError(f"optimizer must be 'lbfgs' or 'adam', got {self.optimizer!r}")
        if self.preserve_color not in (None, "luminance", "histogram"):
            raise OptionError(f"preserve_color must be 'luminance', 'histogram' or None, got {self.preserve_color!r}")
        if self.pooling not in ("avg", "max"):
            raise OptionError(f"pooling must be 'avg' or 'max', got {self.pooling!r}")
        if isinstance(self.init, str) and self.init not in ("content", "noise") and not self.init.strip():
            raise OptionError("init must be 'content', 'noise' or an image")


@dataclass
class Progress:
    """What a callback sees after every evaluation of the loss."""

    stage: int
    stages: int
    step: int
    steps: int
    size: Tuple[int, int]
    content_loss: float
    style_loss: float
    tv_loss: float
    total_loss: float
    image: Callable[[], torch.Tensor]  # the current image, (3, H, W) in [0, 1], on the CPU


@dataclass
class StylizeResult:
    tensor: torch.Tensor  # (3, H, W) float32 RGB in [0, 1], CPU
    history: List[Dict[str, float]] = field(default_factory=list)
    interrupted: bool = False
    seconds: float = 0.0

    @property
    def image(self):
        return to_pil(self.tensor)


def resolve_device(requested: str) -> torch.device:
    if requested in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise OptionError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {requested!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionError("device 'cuda' was asked for but no CUDA GPU is available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise OptionError(f"device {requested!r} does not exist: {torch.cuda.device_count()} GPU(s) visible")
    elif device.type != "cpu":
        raise OptionError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {requested!r}")
    return device


def cpu_has_native_bfloat16() -> bool:
    """Whether oneDNN runs bfloat16 convolutions natively here (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


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
        if self.options.mixed_precision and self.device.type == "cpu" and not cpu_has_native_bfloat16():
            raise OptionError("mixed precision on the CPU needs native bfloat16 (AVX512-BF16 or AMX); this CPU has "
                              "none, so it would be slower: drop --mixed-precision")
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
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.options.mixed_precision)

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
        options = self.options
        objective = Objective(self, stage_content, stage_styles, blend)
        image = image.clone().requires_grad_(True)
        best = {"loss": math.inf, "image": image.detach().clone()}
        evaluations = 0

        def closure():
            nonlocal evaluations
            optimizer.zero_grad(set_to_none=True)
            terms = objective(image)
            terms["total"].backward()
            evaluations += 1
            values = {"stage": stage, "step": evaluations, **{key: float(value.detach()) for key, value in terms.items()}}
            history.append(values)
            if values["total"] < best["loss"]:
                best["loss"] = values["total"]
                best["image"] = image.detach().clone()
            if callback is not None:
                callback(Progress(stage=stage, stages=stages, step=evaluations, steps=steps,
                                  size=tuple(image.shape[-2:]), content_loss=values["content"],
                                  style_loss=values["style"], tv_loss=values["tv"], total_loss=values["total"],
                                  image=lambda: image.detach()[0].float().cpu().clamp(0, 1)))
            return terms["total"]

        interrupted = False
        try:
            if options.optimizer == "lbfgs":
                optimizer = torch.optim.LBFGS([image], lr=1.0, max_iter=steps, max_eval=steps, history_size=50,
                                              tolerance_grad=-1.0, tolerance_change=-1.0)
                optimizer.step(closure)
            else:
                optimizer = torch.optim.Adam([image], lr=options.learning_rate)
                for _ in range(steps):
                    optimizer.step(closure)
                    with torch.no_grad():
                        image.clamp_(0, 1)
        except KeyboardInterrupt:
            interrupted = True
        return best["image"], interrupted


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
        with torch.no_grad(), stylizer._autocast():
            content_features = stylizer.vgg(stage_content.unsqueeze(0).to(stylizer.device), content_layers)
            style_features = [stylizer.vgg(style.unsqueeze(0).to(stylizer.device), style_layers) for style in stage_styles]
        content_weights = options.content_layer_weights or [1.0 / len(content_layers)] * len(content_layers)
        style_weights = options.style_layer_weights or [1.0 / len(style_layers)] * len(style_layers)
        self.content_terms = [(name, weight, ContentLoss(content_features[name]))
                              for name, weight in zip(content_layers, content_weights)]
        self.style_terms = [(name, weight, StyleLoss([features[name] for features in style_features], blend))
                            for name, weight in zip(style_layers, style_weights)]
        self.layers = sorted({name for name, _, _ in self.content_terms + self.style_terms}, key=LAYER_INDEX.__getitem__)
        self.tv_loss = TotalVariationLoss()

    def __call__(self, image: torch.Tensor) -> Dict[str, torch.Tensor]:
        options = self.stylizer.options
        with self.stylizer._autocast():
            # cuDNN follows the input's layout: channels-last pairs with the channels-last weights.
            vgg_input = image.contiguous(memory_format=torch.channels_last) if image.is_cuda else image
            features = self.stylizer.vgg(vgg_input, self.layers)
        content = sum((w * term(features[name]) for name, w, term in self.content_terms), image.new_zeros(()))
        style = sum(w * term(features[name]) for name, w, term in self.style_terms)
        terms = {"content": options.content_weight * content, "style": options.style_weight * style,
                 "tv": options.tv_weight * self.tv_loss(image)}
        terms["total"] = terms["content"] + terms["style"] + terms["tv"]
        return terms


def stylize(content: ImageSource, style: Union[ImageSource, Sequence[ImageSource]],
            callback: Optional[Callable[[Progress], None]] = None, **options):
    """Stylize `content` with one or more `style` images (paths, PIL images or
    ``(3, H, W)`` tensors in [0, 1]). Options are :class:`StyleOptions` fields.

    Returns a PIL image, or a ``(3, H, W)`` float tensor in [0, 1] when
    `content` was a tensor.
    """
    result = Stylizer(**options).run(content, style, callback=callback)
    return result.tensor if isinstance(content, torch.Tensor) else result.image
