"""The loss of one stage (:class:`Objective`): content, style and total-variation terms over VGG19,
its targets computed once, evaluated segment by segment so that a large picture can keep only the
segments' inputs (activation checkpointing) and VGG can be spread over several devices; and the
evaluator that replays it as a CUDA graph.
"""

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, Optional, Sequence, Tuple

import torch
from torch.utils.checkpoint import checkpoint

from nst_ext.layers import LAYER_INDEX
from nst_ext.losses import ContentLoss, StyleLoss, TotalVariationLoss, blended_gram

if TYPE_CHECKING:
    from nst_ext.memory import MemoryPlan
    from nst_ext.stylizer import Stylizer

# The loss terms of one evaluation, in the order of the (5,) tensors that hold them.
TERMS = ("content", "style", "tv", "temporal", "total")


@dataclass(frozen=True)
class TemporalTarget:
    """For a video frame (Ruder, Dosovitskiy & Brox 2016): the previous stylized frame
    ``previous`` (3, H, W) and a ``mask`` (H, W) in [0, 1], 1 where the input did not change; the
    temporal term is ``weight`` times the mean over pixels of mask · (image - previous)²."""

    previous: torch.Tensor
    mask: torch.Tensor
    weight: float


class Objective:
    """The weighted loss of one stage, its targets computed once at construction.

    Calling it with an image ``(1, 3, H, W)`` in [0, 1] on the stylizer's
    device returns 0-d float32 tensors ``content``, ``style``, ``tv``, ``temporal``
    (each already multiplied by its weight) and ``total`` on that device; the caller
    runs backward. `plan` (nst_ext.memory) gives VGG's segments and whether
    each is checkpointed; without one, VGG runs as one segment per device.
    `style_grams`: the style layers' target Grams when already made for these
    style images at this size (a batch job makes them once); ``self.style_grams``
    holds them for reuse. `temporal`: a video frame's temporal term, its
    tensors at this stage's size.
    """

    def __init__(self, stylizer: "Stylizer", stage_content: torch.Tensor, stage_styles: Sequence[torch.Tensor],
                 blend: Sequence[float], plan: Optional["MemoryPlan"] = None,
                 style_grams: Optional[Dict[str, torch.Tensor]] = None, temporal: Optional[TemporalTarget] = None):
        options = stylizer.options
        self.stylizer = stylizer
        vgg = stylizer.vgg
        content_layers, style_layers = list(options.content_layers), list(options.style_layers)
        # One pass over the content image gives the content targets and, for the normalisation
        # below, the style layers' features there. The style images go through one at a time,
        # each dropped once its Grams are added in.
        at_content_layers = content_layers + (style_layers if options.normalize_style else [])
        with torch.no_grad():
            with stylizer.autocast():
                content_features = vgg(stage_content.unsqueeze(0).to(stylizer.device), at_content_layers)
            grams = style_grams
            if grams is None:
                grams = {name: None for name in style_layers}
                for style, weight in zip(stage_styles, blend):
                    with stylizer.autocast():
                        features = vgg(style.unsqueeze(0).to(stylizer.device), style_layers)
                    for name in style_layers:
                        grams[name] = blended_gram(grams[name], features[name], weight)
                    del features
        self.style_grams = grams
        content_weights = options.content_layer_weights or [1.0 / max(1, len(content_layers))] * len(content_layers)
        style_weights = options.style_layer_weights or [1.0 / len(style_layers)] * len(style_layers)
        self.content_terms = [(name, weight, ContentLoss(content_features[name]))
                              for name, weight in zip(content_layers, content_weights)]
        self.style_terms = [(name, weight, StyleLoss(grams[name])) for name, weight in zip(style_layers, style_weights)]
        self.layers = frozenset(content_layers + style_layers)
        deepest = max(LAYER_INDEX[name] for name in self.layers)
        self.segments: Tuple[Tuple[int, int], ...] = plan.segments if plan else stylizer.device_segments(deepest + 1)
        self.checkpointing = bool(plan and plan.checkpointing)
        self.tv_loss = TotalVariationLoss()
        self.temporal = None
        if temporal is not None:
            self.temporal = (temporal.previous.to(stylizer.device).reshape(1, 3, *temporal.previous.shape[-2:]),
                             temporal.mask.to(stylizer.device).reshape(1, 1, *temporal.mask.shape[-2:]),
                             float(temporal.weight))
        # The style term relative to its value at the content image: how far the style is from the
        # content in Gram terms varies by two orders of magnitude between pairs (a photographic
        # texture against a portrait is far), and unscaled, a far style buries the subject.
        self.style_normalizer = 1.0
        if options.normalize_style:
            start = sum(w * term(content_features[name]).to(stylizer.device) for name, w, term in self.style_terms).item()
            self.style_normalizer = 1.0 / max(start, 1e-6)

    def _segment(self, start: int, stop: int, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """VGG layers ``start … stop - 1`` on `x`, and the weighted content and style losses of
        the layers among them: (last output, content, style), the losses 0-d float32 on the
        device of those layers."""
        vgg = self.stylizer.vgg
        device = vgg.layer_devices[start] if vgg.layer_devices else x.device
        with self.stylizer.autocast(device):
            x, features = vgg.run_layers(x, start, stop, self.layers)
        zero = torch.zeros((), device=device)
        content = sum((w * term(features[name]) for name, w, term in self.content_terms if name in features), zero)
        style = sum((w * term(features[name]) for name, w, term in self.style_terms if name in features), zero)
        return x, content, style

    def __call__(self, image: torch.Tensor) -> Dict[str, torch.Tensor]:
        options = self.stylizer.options
        # cuDNN and oneDNN follow the input's layout: channels-last pairs with the channels-last weights.
        x = image.contiguous(memory_format=torch.channels_last)
        x = self.stylizer.vgg.normalize(x)
        content = style = image.new_zeros((), dtype=torch.float32)
        for start, stop in self.segments:
            if self.checkpointing:
                # Non-reentrant: only the segment's input is kept, the rest recomputed in the
                # backward pass. VGG has no randomness, so no RNG state to restore.
                x, segment_content, segment_style = checkpoint(self._segment, start, stop, x, use_reentrant=False,
                                                               preserve_rng_state=False)
            else:
                x, segment_content, segment_style = self._segment(start, stop, x)
            content = content + segment_content.to(image.device)
            style = style + segment_style.to(image.device)
        terms = {"content": options.content_weight * content,
                 "style": options.style_weight * style * self.style_normalizer,
                 "tv": options.tv_weight * self.tv_loss(image),
                 "temporal": image.new_zeros((), dtype=torch.float32)}
        if self.temporal is not None:
            previous, mask, weight = self.temporal
            terms["temporal"] = weight * (mask * (image - previous).square()).mean()
        terms["total"] = terms["content"] + terms["style"] + terms["tv"] + terms["temporal"]
        return terms

    def evaluator(self, image: torch.Tensor, graph: bool = True) -> Callable[[], torch.Tensor]:
        """A function that computes the loss at `image` (a leaf with requires_grad), fills
        ``image.grad`` and returns the terms as a new (5,) float32 tensor in the order of
        :data:`TERMS`. On CUDA with `graph` and VGG on one device, the forward and backward are
        captured once as a CUDA graph and replayed (shapes are fixed within a stage); where capture
        fails, it warns and evaluates eagerly."""

        def eager() -> torch.Tensor:
            image.grad = None
            terms = self(image)
            terms["total"].backward()
            return torch.stack([terms[name].detach().float() for name in TERMS])

        if not (graph and image.is_cuda and len(self.stylizer.devices) == 1):
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
