"""The loss of one stage (:class:`Objective`): content, style and total-variation terms over VGG19,
its targets computed once, run through VGG segment by segment so that a large picture can keep only
the segments' inputs (activation checkpointing) and VGG can be spread over several devices. Its one
:class:`~nst_ext.objective.terms.Evaluation`, chosen at construction, evaluates it on the whole
picture (nst_ext.objective.whole) or tile by tile when the picture is too large for one pass
(nst_ext.objective.tiled); the CUDA graph wraps an evaluation that allows it.
"""

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch.utils.checkpoint import checkpoint

from nst_ext.io.images import resize
from nst_ext.plan.layers import LAYER_INDEX
from nst_ext.objective.losses import (
    ContentLoss,
    TemporalLoss,
    TotalVariationLoss,
)
from nst_ext.objective.masks import StageMasks, layer_masks
from nst_ext.objective import tiled
from nst_ext.objective.style_targets import StyleTerm, style_groups, style_targets
from nst_ext.objective.terms import TERMS, Evaluation
from nst_ext.objective.whole import WholePicture

if TYPE_CHECKING:
    from nst_ext.plan.memory import MemoryPlan
    from nst_ext.model.network import Network
    from nst_ext.plan.options import StyleOptions

__all__ = ["TERMS", "Objective", "TemporalTarget"]


@dataclass(frozen=True)
class TemporalTarget:
    """For a video frame (Ruder, Dosovitskiy & Brox 2016): the previous stylized frame
    ``previous`` (3, H, W) and a ``mask`` (H, W) in [0, 1], 1 where the input did not change; the
    temporal term is ``weight`` times the mean over pixels of mask · (image - previous)²."""

    previous: torch.Tensor
    mask: torch.Tensor
    weight: float

    def at(self, shape: Tuple[int, int]) -> "TemporalTarget":
        """This target resized to a stage's `shape` (height, width)."""
        return TemporalTarget(resize(self.previous, shape), resize(self.mask[None], shape)[0], self.weight)


class Objective:
    """The weighted loss of one stage, its targets computed once at construction.

    `stage_content`: the content image ``(3, H, W)``, or a batch of them
    ``(B, 3, H, W)`` (same size) optimised together, each picture against its
    own content target and its own style normaliser (VGG works on each
    picture of a batch on its own, so a picture's loss and gradient do not
    depend on the others). Calling it with images ``(B, 3, H, W)`` in [0, 1]
    on the network's first device returns float32 tensors ``content``, ``style``,
    ``tv``, ``temporal`` (each already multiplied by its weight) and ``total``
    on that device: 0-d for one content image, ``(B,)`` for a batch; the
    caller runs backward (of the sum, for a batch). With the option ``clamp_in_loss`` (the default)
    the images are clamped to [0, 1] first: the loss is that of the picture as saved. `plan` (nst_ext.plan.memory)
    gives VGG's segments and whether each is checkpointed; without one, VGG
    runs as one segment per device. `style_grams`: the style layers' target
    Grams when already made for these style images at this size (a batch job
    makes them once); ``self.style_grams`` holds them for reuse. `temporal`:
    a video frame's temporal term, its tensors at this stage's size. `masks`: spatial control
    at this stage's size (:class:`nst_ext.objective.masks.StageMasks`): with style masks each style image
    is its own term over its region (not blended), normalised on its own by its value at the
    content image, so each region takes on its style as firmly whatever the others' distance.
    When the plan has a tile edge and the picture is larger than one tile, the targets are made
    and :meth:`evaluator` evaluates tile by tile (nst_ext.objective.tiled: the same loss and
    gradient); calling the objective then gives the values without a graph.
    """

    def __init__(
        self,
        network: "Network",
        options: "StyleOptions",
        stage_content: torch.Tensor,
        stage_styles: Sequence[torch.Tensor],
        blend: Sequence[float],
        plan: Optional["MemoryPlan"] = None,
        style_grams: Optional[Dict[str, torch.Tensor]] = None,
        temporal: Optional[TemporalTarget] = None,
        masks: Optional[StageMasks] = None,
    ):
        self.network, self.options = network, options
        content_layers, style_layers = list(options.content_layers), list(options.style_layers)
        self.layers = frozenset(content_layers + style_layers)
        deepest = max(LAYER_INDEX[name] for name in self.layers)
        self.segments: Tuple[Tuple[int, int], ...] = plan.segments if plan else network.device_segments(deepest + 1)
        self.checkpointing = bool(plan and plan.checkpointing)
        self.tile_edge = plan.tile_edge if plan else 0
        self.batched = stage_content.dim() == 4
        contents = stage_content if self.batched else stage_content.unsqueeze(0)
        # With tiles (a picture too large for one pass), the targets are made tile by tile too.
        self.tiles = tiled.tiles_for(self, contents.shape[-2:])
        self.evaluation: Evaluation = tiled.Tiles(self) if self.tiles else WholePicture(self)
        with torch.no_grad():  # the style images go through one at a time, each dropped once its Grams are added in
            grams = (
                style_grams
                if style_grams is not None
                else style_targets(self, stage_styles, blend, style_layers, masks or StageMasks())
            )
        self.style_grams = grams
        content_weights = options.content_layer_weights or [1.0 / max(1, len(content_layers))] * len(content_layers)
        style_weights = options.style_layer_weights or [1.0 / len(style_layers)] * len(style_layers)
        groups = style_groups(
            options, grams, blend, style_layers, style_weights, masks, (contents.shape[-2], contents.shape[-1])
        )
        # One pass over the content image gives the content targets and each style group's value at
        # the content image, which normalize_style divides by.
        target_dtype = torch.bfloat16 if plan and plan.content_bfloat16 else torch.float32
        content_features, starts = self._content_pass(contents, content_layers, style_layers, groups, target_dtype)
        content_regions = (
            layer_masks(masks.content, content_layers, masks.dilation)
            if masks is not None and masks.content is not None
            else {}
        )
        self.content_terms = [
            (name, weight, ContentLoss(content_features[name], content_regions.get(name), target_dtype))
            for name, weight in zip(content_layers, content_weights)
        ]
        self.style_terms = self._normalized(groups, starts)
        self.tv_loss = TotalVariationLoss()
        self.temporal: Optional[Tuple[TemporalLoss, float]] = None  # the term and its weight
        if temporal is not None:
            previous = temporal.previous.to(network.device).reshape(1, 3, *temporal.previous.shape[-2:])
            mask = temporal.mask.to(network.device).reshape(1, 1, *temporal.mask.shape[-2:])
            self.temporal = (TemporalLoss(previous, mask), float(temporal.weight))

    def _content_pass(
        self, contents: torch.Tensor, content_layers, style_layers, groups, target_dtype: torch.dtype = torch.float32
    ) -> Tuple[Dict[str, torch.Tensor], Optional[List[List[torch.Tensor]]]]:
        """The content images' features at the content layers (the content targets; in tiles, put
        together in `target_dtype`) and, with normalize_style, each style term's value at them
        (``(B,)`` per term, in `groups`' order), from one pass through VGG (in tiles: the features
        put together from the tiles, the style terms from their Grams made in the same pass)."""
        normalizing = self.options.normalize_style
        flat = [term for group in groups for term in group] if normalizing else []
        with torch.no_grad():
            features, flat_values = self.evaluation.content_pass(contents, content_layers, flat, target_dtype)
        values = iter(flat_values)
        return features, [[next(values) for _ in group] for group in groups] if normalizing else None

    def _normalized(self, groups, starts) -> List[StyleTerm]:
        """The style terms with their weights: with normalize_style each divided by its group's
        value at the content image, ``(B,)`` (`starts`: each term's): how far the style is from the
        content in Gram terms varies by two orders of magnitude between pairs (a photographic
        texture against a portrait is far), and unscaled, a far style buries the subject; with style
        masks each style is normalised on its own, so each region takes on its style as firmly
        whatever the others' distance."""
        device = self.network.device
        terms = []
        for index, group in enumerate(groups):
            scale = torch.ones((), device=device)
            if starts is not None:
                start = sum(weight * value.to(device) for (_, weight, _), value in zip(group, starts[index]))
                scale = 1.0 / start.clamp(min=1e-6)
            # Each weight on its layer's device (several devices: the targets are where their layer is).
            terms += [(name, (weight * scale).to(next(term.buffers()).device), term) for name, weight, term in group]
        return terms

    def _segment(
        self, start: int, stop: int, x: torch.Tensor, score: "tiled.Score"
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """VGG layers ``start … stop - 1`` on `x` and `score` of the features the losses read among
        them: (last output, content, style), the values ``(B,)`` float32 on those layers' device."""
        vgg = self.network.vgg
        device = vgg.layer_devices[start] if vgg.layer_devices else x.device
        with self.network.autocast(device):
            x, features = vgg.run_layers(x, start, stop, self.layers)
        return (x, *score(features, torch.zeros(x.shape[0], device=device)))

    def score(self, features: Dict[str, torch.Tensor], zero: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The weighted content and style losses of the layers among `features` (whole pictures)."""
        content = sum((w * term(features[name]) for name, w, term in self.content_terms if name in features), zero)
        style = sum((w * term(features[name]) for name, w, term in self.style_terms if name in features), zero)
        return content, style

    def through_network(self, image: torch.Tensor, score: "tiled.Score") -> Tuple[torch.Tensor, torch.Tensor]:
        """`image` ``(B, 3, H, W)`` in [0, 1] (a picture, or a tile of one) through VGG's segments,
        each segment's features given to `score`: the sums of its (content, style), ``(B,)`` float32
        on the image's device. Checkpointed segments (when the plan says so and a graph is made)
        keep only their input; each is recomputed in the backward pass."""
        x = self.network.vgg.normalize(image)
        content = style = image.new_zeros(image.shape[0], dtype=torch.float32)
        for start, stop in self.segments:
            if self.checkpointing and torch.is_grad_enabled():
                # Non-reentrant: only the segment's input is kept, the rest recomputed in the
                # backward pass. VGG has no randomness, so no RNG state to restore.
                x, segment_content, segment_style = checkpoint(
                    self._segment, start, stop, x, score, use_reentrant=False, preserve_rng_state=False
                )
            else:
                x, segment_content, segment_style = self._segment(start, stop, x, score)
            content = content + segment_content.to(image.device)
            style = style + segment_style.to(image.device)
        return content, style

    def local_terms(self, image: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The elementwise terms of `image` ``(B, 3, H, W)`` (as scored: clamped), weighted:
        ``tv`` and ``temporal``, ``(B,)`` float32 each."""
        terms = {
            "tv": self.options.tv_weight * self.tv_loss(image).float(),
            "temporal": image.new_zeros(image.shape[0], dtype=torch.float32),
        }
        if self.temporal is not None:
            temporal_loss, weight = self.temporal
            terms["temporal"] = weight * temporal_loss(image).float()
        return terms

    def __call__(self, image: torch.Tensor) -> Dict[str, torch.Tensor]:
        terms = self.evaluation.values(image)
        return terms if self.batched else {name: value[0] for name, value in terms.items()}

    def evaluator(
        self, image: Union[torch.Tensor, Sequence[torch.Tensor]], graph: bool = True
    ) -> Callable[[], torch.Tensor]:
        """A function that computes the loss at `image`, fills its ``grad`` and returns the terms
        as a new float32 tensor in the order of :data:`TERMS`: (5,) for one image, a leaf
        ``(1, 3, H, W)`` with requires_grad; (B, 5) for a batch objective, given a list of B such
        leaves (one per picture, so that each has its own optimiser). On CUDA with `graph`, VGG
        on one device and a whole-picture evaluation, the forward and backward are captured once
        as a CUDA graph and replayed (shapes are fixed within a stage); where capture fails, it
        warns and evaluates eagerly."""
        leaves = list(image) if isinstance(image, (list, tuple)) else [image]

        def eager() -> torch.Tensor:
            terms = self.evaluation.evaluate(leaves)
            values = torch.stack([terms[name].float() for name in TERMS], dim=-1)
            return values if self.batched else values[0]

        if not (graph and self.evaluation.graphable and leaves[0].is_cuda and len(self.network.devices) == 1):
            return eager
        try:
            return _graphed(eager, leaves)
        except RuntimeError as error:  # e.g. an op that synchronises, from a user's custom weights
            warnings.warn(
                f"nst_ext: CUDA graph capture failed ({error}); evaluating without a graph",
                RuntimeWarning,
                stacklevel=2,
            )
            torch.cuda.synchronize(leaves[0].device)
            return eager


def _graphed(evaluate: Callable[[], torch.Tensor], leaves: Sequence[torch.Tensor]) -> Callable[[], torch.Tensor]:
    """`evaluate` captured as a CUDA graph: the replay writes the same tensors (the terms and
    each leaf's ``grad``) in place, so each call returns a copy of the terms."""
    device = leaves[0].device
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        # Warm-up outside the graph: cuDNN's and nst_ext's algorithm choices time their
        # candidates (a synchronisation, not allowed while capturing), libraries make handles.
        for _ in range(2):
            evaluate()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    for leaf in leaves:
        leaf.grad = None
    with torch.cuda.graph(graph):
        static_terms = evaluate()
    static_grads = [leaf.grad for leaf in leaves]

    def replay() -> torch.Tensor:
        graph.replay()
        for leaf, grad in zip(leaves, static_grads):
            leaf.grad = grad
        return static_terms.clone()

    return replay
