"""How much memory one stage of a run needs, and the plan that keeps it within a budget.

Torch-free (the CLI parses ``--max-memory`` before torch is imported). The estimate counts, from
the layer registry, the bytes of what a step keeps: VGG activations saved for the backward pass,
the L-BFGS history, the targets, the best and content images, the weights, transient buffers of the
backward pass and, on the CPU, the runtime itself (resident set size is what a user sees). Its
coefficients were measured with ``benchmarks/memory.py --breakdown`` (BENCHMARKS.md, "Large pictures").

For a budget (of which it fills at most the usable share, :func:`usable_share`: a whole run can peak
above its finest stage's estimate) the plan pulls the levers of :data:`LEVERS` in their order. Why that
order: the first three keep the float32 run's own picture (checkpointing keeps only the VGG segments'
inputs and recomputes each segment in the backward pass: more time per step, BENCHMARKS.md, "Large
pictures"; tiles, nst_ext.plan.tiles and nst_ext.objective.tiled, show VGG one tile at a time, the
largest that fits, and leave the picture-sized state: picture, gradient, L-BFGS vectors, content
targets); the two bfloat16 states reach an equally low loss by another path, so another picture
(BENCHMARKS.md, "L-BFGS pairs in bfloat16"), each tried with the levers before it again (the content
targets only in tiles: untiled a step widens them whole); fewer pairs slow convergence, so they come
last, untiled with checkpointing first, then tiled. A stage that does not fit even then is refused
before any work, in one line.
"""

import dataclasses
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from nst_ext.plan import tiles
from nst_ext.plan.budget import format_size, free_memory_bytes, parse_size
from nst_ext.errors import OptionError
from nst_ext.plan.distribution_memory import distribution_making_bytes, distribution_target_bytes
from nst_ext.plan.activations import choose_segments, saved_bytes_per_layer
from nst_ext.plan.layers import LAYER_INDEX, LAYERS, layer_elements

LBFGS_HISTORY = 50  # pairs, when memory allows
MIN_LBFGS_HISTORY = 5
# What a plan does to fit a budget, in the order it does it (the module docstring says why): the one
# description that the --max-memory help and StyleOptions' docstring read.
LEVERS = (
    "keeps no more L-BFGS pairs than the stage has steps (free)",
    "checkpoints VGG's activations (the same picture, 1.8x the time per step at 1024 px on the CPU of BENCHMARKS.md)",
    "evaluates the picture in tiles (the same picture, about one more forward pass per step)",
    "stores the L-BFGS pairs in bfloat16 (an equally low loss by another path)",
    "stores the content targets in bfloat16 (in tiles; the same)",
    f"keeps fewer L-BFGS pairs (down to {MIN_LBFGS_HISTORY}: slower convergence)",
)
# The share of the memory free at the start that a run plans to use when no --max-memory is given:
# the rest is headroom for the allocator's fragmentation and for other programs.
DEFAULT_BUDGET_SHARE = 0.8

# Measured coefficients (benchmarks/memory.py --breakdown, BENCHMARKS.md "Large pictures").
# Resident memory of the process before any stage (python, torch's libraries, VGG's weights: 650-670
# MiB measured) and what the allocator keeps of making the targets (30-150 MiB).
CPU_RUNTIME_BYTES = 750 * 2**20
# Not counted by torch.cuda.max_memory_allocated; the CUDA context is outside any budget we check.
CUDA_RUNTIME_BYTES = 0
# Transient buffers of a step (gradients of the largest activations, the style losses' float32 slabs,
# what the allocator keeps), as a multiple of the largest activation saved in a segment (or tile);
# keyed by whether freed memory is released promptly (MemoryPlan.releases_freed_memory_promptly,
# nst_ext.plan.budget.release_freed_memory_promptly). Fitted to the measured peaks
# at 512 and 1024 px: the estimates land within -4% to +5% of them (BENCHMARKS.md, "Large pictures");
# the prompt one checked on tiled runs up to 8192 px (BENCHMARKS.md, "Any size, in tiles").
TRANSIENT_PER_LARGEST_ACTIVATION = {False: 6.0, True: 3.0}
# Picture-sized vectors a step holds besides the L-BFGS history: the picture, its gradient, the
# previous gradient and the last step (the two-loop recursion works in its buffer; nst_ext.lbfgs).
LBFGS_WORK_VECTORS = 4
# Picture-sized float32 images a stage holds besides the optimiser's: the best image so far
# (nst_ext.stylizer.BestImage) and the stage's content image. Negligible at the sizes the
# coefficients above were fitted at; at a print size each is as large as an L-BFGS pair vector.
HELD_IMAGES = 2
# A whole run's peak was measured up to 12% above its finest stage's estimate (what the earlier stages
# leave in the allocator; the estimate itself is fitted to one stage alone: BENCHMARKS.md, "Large
# pictures"): a plan sized to a budget fills only the rest of it, so that such a peak still fits.
ESTIMATE_UNDERSHOOT = 0.11
# A masked Gram (each style mask's region has its own loss; w2's too) widens each style layer's
# features to float32 and weighs them by the mask's root in its forward pass, and makes a gradient
# per region in its backward (csrc/masked.h): transients the unmasked fused loss does not make. This
# many float32 copies of the largest style layer's features (as seen: the picture or a tile) per
# region, fitted to the peak RSS of a 3-step stage with 2 and 3 regions at 384 and 512 px
# (BENCHMARKS.md, "Large pictures").
MASKED_GRAM_COPIES_PER_REGION = 1.7
# A Laplacian pyramid's coefficients per pixel (nst_ext.parametrization: 1 + 1/4 + 1/16 + ..., to
# within the rounding up of odd sides): the optimiser's state through the pyramid.
PYRAMID_COEFFICIENTS_PER_PIXEL = 4 / 3


def usable_share(budget: int) -> int:
    """The bytes of a `budget` that a plan may fill: the budget less the estimate's possible undershoot."""
    return int(budget * (1 - ESTIMATE_UNDERSHOOT))


def budget_for(needed: int) -> int:
    """The smallest budget whose usable share holds `needed` bytes (the inverse of :func:`usable_share`)."""
    budget = math.ceil(needed / (1 - ESTIMATE_UNDERSHOOT))
    while usable_share(budget) < needed:
        budget += 1
    return budget


@dataclass(frozen=True)
class MemoryPlan:
    """How one stage runs, and the bytes it is estimated to need at its peak.

    segments: ``(start, stop)`` layer ranges, each checkpointed when ``checkpointing``; one
    segment per device otherwise. history_size: L-BFGS pairs kept.
    """

    height: int
    width: int
    checkpointing: bool
    history_size: int
    segments: Tuple[Tuple[int, int], ...]
    activations: int
    history: int
    targets: int
    transient: int
    runtime: int
    held_images: int = 0  # bytes of the picture-sized images the stage holds (HELD_IMAGES)
    budget_limited: bool = False  # checkpointing, tiles or a shorter history because of the budget
    tile_edge: int = 0  # pixels of each tile's own square (nst_ext.plan.tiles); 0: the picture in one pass
    history_bfloat16: bool = False  # the L-BFGS pairs stored in bfloat16 (nst_ext.lbfgs)
    content_bfloat16: bool = False  # the content targets stored in bfloat16 (nst_ext.objective.losses.ContentLoss)

    @property
    def releases_freed_memory_promptly(self) -> bool:
        """Whether the run hands freed memory back at once (nst_ext.plan.budget): always with checkpointing
        or tiles, whose transient is estimated so, whether the budget or the user chose them; and for
        any plan the budget limited."""
        return releases_promptly(self.checkpointing, self.tile_edge) or self.budget_limited

    @property
    def total(self) -> int:
        return self.activations + self.history + self.targets + self.transient + self.runtime + self.held_images

    def describe(self) -> str:
        parts = [f"{self.width}x{self.height} needs about {format_size(self.total)}"]
        if self.tile_edge:
            parts.append(f"evaluated in tiles of {self.tile_edge} px")
        if self.checkpointing:
            parts.append(f"VGG activations checkpointed over {len(self.segments)} segments")
        if self.history_size < LBFGS_HISTORY:
            parts.append(f"L-BFGS history {self.history_size} pairs")
        if self.history_bfloat16:
            parts.append("L-BFGS history in bfloat16")
        if self.content_bfloat16:
            parts.append("content targets in bfloat16")
        return ", ".join(parts)


def releases_promptly(checkpointing: bool, tile_edge: int) -> bool:
    """Whether a plan with these levers is estimated with the prompt-release transient
    (TRANSIENT_PER_LARGEST_ACTIVATION): checkpointing and tiles save memory only so."""
    return checkpointing or bool(tile_edge)


# Each smaller tile edge tried is this share of the last: the plan takes the largest that fits.
TILE_EDGE_RATIO = 0.85


@dataclass(frozen=True)
class _Stage:
    """What a stage's estimate depends on besides its levers (the arguments of :func:`plan_stage`)."""

    height: int
    width: int
    content_layers: Tuple[str, ...]
    style_layers: Tuple[str, ...]
    style_shapes: Tuple[Tuple[int, int], ...]
    device_type: str
    activation_bytes: int
    optimizer: str
    breaks: Tuple[int, ...]
    pictures: int
    held_images: int = HELD_IMAGES  # picture-sized float32 images held besides the picture itself
    optimised_per_pixel: float = 1.0  # values the optimiser moves per pixel (a pyramid's coefficients: more)
    style_loss: str = "gram"  # nst_ext.plan.validation.STYLE_LOSSES
    style_regions: int = 0  # style masks' regions, each with its own loss (0: no style masks)

    @property
    def layers(self) -> List[str]:
        return list(self.content_layers) + list(self.style_layers)

    @property
    def pixels(self) -> int:
        return 3 * self.height * self.width * self.pictures

    def making_targets(self, shapes: Sequence[Tuple[int, Tuple[int, int]]]) -> int:
        """One pass without gradients over each (count, (h, w)): the tapped outputs and two layers in flight."""
        indices = [LAYER_INDEX[name] for name in self.layers]
        return max(
            count
            * self.activation_bytes
            * (sum(layer_elements(index, h, w) for index in indices) + 2 * layer_elements(0, h, w))
            for count, (h, w) in shapes
        )


def _history_bytes(stage: _Stage, pairs: int, bfloat16: bool) -> int:
    """The optimiser's picture-sized state: Adam's moments, or the L-BFGS pairs and work vectors
    (in bfloat16: the pairs in 2 bytes, and one pair vector widened at a time)."""
    moved = math.ceil(stage.pixels * stage.optimised_per_pixel)
    if stage.optimizer != "lbfgs":
        return 4 * moved * 4
    if bfloat16:
        return 2 * pairs * moved * 2 + (LBFGS_WORK_VECTORS + 1) * moved * 4
    return (2 * pairs + LBFGS_WORK_VECTORS) * moved * 4


def _target_bytes(stage: _Stage, edge: int, bfloat16_content: bool, seen: Tuple[int, int]) -> Tuple[int, int]:
    """The bytes of the targets a stage keeps, and the peak of making them (`seen`: what VGG sees
    at once, the picture or a tile with its halo)."""
    pictures, margin = stage.pictures, tiles.halo(stage.layers)
    # Targets: each content layer's features, float32 or bfloat16 (untiled, also the loss's float32
    # difference in a step, and a bfloat16 target's widened copy; tiled, those are a tile's) and
    # one float32 Gram per style layer. Making them takes one pass without gradients over the
    # content images together and over each style image (tiled: a tile of each at a time).
    content_elements = pictures * sum(
        layer_elements(LAYER_INDEX[name], stage.height, stage.width) for name in stage.content_layers
    )
    style_grams = sum(4 * LAYERS[LAYER_INDEX[name]].channels ** 2 for name in stage.style_layers)
    step_copies = 0 if edge else 8 if bfloat16_content else 4
    targets = ((2 if bfloat16_content else 4) + step_copies) * content_elements + style_grams
    if stage.style_loss != "gram":
        targets += distribution_target_bytes(stage)
    if edge:  # tiles and total-variation strips are clamped one at a time: no picture-sized temporaries
        tile_shape = lambda h, w: (min(h, edge + 2 * margin), min(w, edge + 2 * margin))  # noqa: E731
        making = stage.making_targets([(pictures, seen), *((1, tile_shape(*shape)) for shape in stage.style_shapes)])
    else:
        making = stage.making_targets(
            [(pictures, (stage.height, stage.width)), *((1, shape) for shape in stage.style_shapes)]
        )
    if stage.style_loss != "gram":
        making = max(making, distribution_making_bytes(stage))
    return targets, making


def _masked_gram_bytes(stage: _Stage, seen: Tuple[int, int]) -> int:
    """A step's transients of the masked Gram losses (MASKED_GRAM_COPIES_PER_REGION), 0 without
    style masks or where the loss is sliced (nst_ext.plan.distribution_memory counts its own)."""
    if not stage.style_regions or stage.style_loss == "sliced":
        return 0
    largest = max(layer_elements(LAYER_INDEX[name], *seen) for name in stage.style_layers)
    return int(MASKED_GRAM_COPIES_PER_REGION * stage.style_regions * stage.pictures * largest * 4)


def _estimate(
    stage: _Stage,
    checkpoint: bool,
    pairs: int,
    edge: int = 0,
    bfloat16_history: bool = False,
    bfloat16_content: bool = False,
) -> MemoryPlan:
    """The plan of `stage` with these levers pulled, and its estimated bytes."""
    layers, pictures, margin = stage.layers, stage.pictures, tiles.halo(stage.layers)
    last = max(layers, key=LAYER_INDEX.__getitem__)
    # What VGG sees at once: the picture, or one tile with its halo.
    seen = (
        (min(stage.height, edge + 2 * margin), min(stage.width, edge + 2 * margin))
        if edge
        else (stage.height, stage.width)
    )
    saved = [pictures * size for size in saved_bytes_per_layer(*seen, last, layers, stage.activation_bytes)]
    outputs = [pictures * layer_elements(i, *seen) * stage.activation_bytes for i in range(len(saved))]
    if checkpoint:
        segments, activations = choose_segments(saved, outputs, stage.breaks)
    else:
        cuts = sorted({0, *stage.breaks, len(saved)})
        segments, activations = list(zip(cuts[:-1], cuts[1:])), sum(saved)
    largest = max(max(saved[a:b]) for a, b in segments)
    history = _history_bytes(stage, pairs, bfloat16_history)
    targets, making = _target_bytes(stage, edge, bfloat16_content, seen)
    # The peak is that of a step or, when larger, that of making the targets (before the
    # history exists): counted as transient so that `total` is the larger of the two.
    transient = max(
        int(TRANSIENT_PER_LARGEST_ACTIVATION[releases_promptly(checkpoint, edge)] * largest)
        + _masked_gram_bytes(stage, seen),
        making - activations - history,
    )
    return MemoryPlan(
        stage.height,
        stage.width,
        checkpoint,
        pairs,
        tuple(segments),
        activations,
        history,
        targets,
        transient,
        CPU_RUNTIME_BYTES if stage.device_type == "cpu" else CUDA_RUNTIME_BYTES,
        held_images=stage.held_images * stage.pixels * 4,
        tile_edge=edge,
        history_bfloat16=bfloat16_history and stage.optimizer == "lbfgs",
        content_bfloat16=bfloat16_content,
    )


def _tile_edges(tile: Optional[int], layers: Sequence[str], side: int) -> List[int]:
    """The tile edges a plan may try, largest first: a forced one (on the grid; none when the picture
    is no larger), or with None the largest tiles down to the halo's width; 0: none."""
    if tile:
        edge = tiles.tile_edge(tile, layers)
        return [edge] if edge < side else []
    if tile is not None:
        return []
    margin, grid = tiles.halo(layers), tiles.alignment(layers)
    edges: List[int] = []
    edge = tiles.tile_edge(side - 1, layers)
    while edge >= margin and side > grid and (not edges or edge < edges[-1]):
        edges.append(edge)
        edge = tiles.tile_edge(int(edge * TILE_EDGE_RATIO), layers)
    return edges


def _candidates(
    steps: int,
    edges: List[int],
    tile: Optional[int],
    checkpointing: Optional[bool],
    history_size: Optional[int],
    history_bfloat16: Optional[bool],
    content_bfloat16: Optional[bool],
) -> List[Tuple[bool, int, int, bool, bool]]:
    """The levers to try, (checkpointing, pairs, tile edge, pairs in bfloat16, content in bfloat16),
    in the order of LEVERS (module docstring); a forced choice keeps only the states it allows."""
    untiled = not (tile and edges)
    tiled_checkpointing = bool(checkpointing)
    most_pairs = history_size or min(LBFGS_HISTORY, max(1, steps))
    levers = [(False, 0), (True, 0)] if untiled else []
    if checkpointing is not None:
        levers = [(c, e) for c, e in levers if c == checkpointing]
    levers += [(tiled_checkpointing, edge) for edge in edges]
    # The same picture first (every lever with float32 state), then the same levers with the
    # L-BFGS pairs in bfloat16, the content targets, both (each an equal loss by another path:
    # BENCHMARKS.md, "L-BFGS pairs in bfloat16", "Content targets in bfloat16"), then fewer pairs
    # with the most compact state allowed.
    # Untiled, bfloat16 content targets save nothing (a step widens them whole): only when forced.
    states = [
        (h, c)
        for h, c in ((False, False), (True, False), (False, True), (True, True))
        if history_bfloat16 in (None, h) and content_bfloat16 in (None, c)
    ]
    states_for = {edge: [(h, c) for h, c in states if edge or not c or content_bfloat16] for edge in [0, *edges]}
    candidates = [(c, most_pairs, e, *state) for state in states for c, e in levers if state in states_for[e]]
    if history_size is None:
        shorter = ([(True, 0)] if untiled and checkpointing is not False else []) + [
            (tiled_checkpointing, edge) for edge in edges
        ]
        for pairs in range(most_pairs - 1, MIN_LBFGS_HISTORY - 1, -1):
            candidates += [(c, pairs, e, *states_for[e][-1]) for c, e in shorter]
    return candidates


def _refusal(smallest: MemoryPlan, budget: int) -> OptionError:
    """The one line that refuses a stage whose `smallest` plan does not fit `budget`."""
    how = [f"tiles of {smallest.tile_edge} px"] if smallest.tile_edge else []
    how += ["checkpointing"] if smallest.checkpointing else []
    how += [
        f"an L-BFGS history of {smallest.history_size}"
        + (" in bfloat16" if smallest.history_bfloat16 else "")
        + (" and the content targets in bfloat16" if smallest.content_bfloat16 else "")
    ]
    return OptionError(
        f"a {smallest.width}x{smallest.height} stage needs at least {format_size(budget_for(smallest.total))} "
        f"(with {', '.join(how[:-1]) + ' and ' if len(how) > 1 else ''}{how[-1]}, and "
        f"{ESTIMATE_UNDERSHOOT:.0%} for the estimate's error), more "
        f"than the {format_size(budget)} budget; use a smaller `size`, "
        "a larger `max_memory`, or `devices` to spread VGG over several devices"
    )


def plan_stage(
    height: int,
    width: int,
    content_layers: Sequence[str],
    style_layers: Sequence[str],
    steps: int,
    style_shapes: Sequence[Tuple[int, int]],
    budget: Optional[int],
    device_type: str,
    activation_bytes: int,
    optimizer: str = "lbfgs",
    checkpointing: Optional[bool] = None,
    history_size: Optional[int] = None,
    breaks: Sequence[int] = (),
    pictures: int = 1,
    tile: Optional[int] = None,
    history_bfloat16: Optional[bool] = None,
    content_bfloat16: Optional[bool] = None,
    averaged: bool = False,
    pyramid: bool = False,
    style_loss: str = "gram",
    style_regions: int = 0,
) -> MemoryPlan:
    """The plan for one stage of a `height` x `width` picture with these loss layers, `steps`
    optimiser steps and style images of `style_shapes` ((height, width) at this stage). `budget`:
    bytes, or None for no limit. `activation_bytes`: 2 with bfloat16 convolutions, else 4.
    `checkpointing` / `history_size`: forced when given, else chosen (module docstring). `breaks`:
    layer indices where a new device begins. `pictures`: how many pictures of this size are
    optimised together as one batch (activations, histories and content targets scale with it; the
    style targets are shared). `tile`: None chooses tiles when nothing else fits, 0 never tiles, N
    tiles of N pixels (on the pooling grid; a picture no larger than one tile is not tiled).
    `history_bfloat16`: None stores the L-BFGS pairs in bfloat16 when float32 does not fit, True or
    False forces. `content_bfloat16`: likewise the content targets, tried after the pairs and, unless
    forced, only in tiles (untiled a step widens them whole). `averaged`: the stage keeps the average
    of its iterates too (one more picture-sized image, nst_ext.optimize.AverageImage). `pyramid`: the
    optimiser moves the picture's Laplacian pyramid (nst_ext.parametrization): its state is counted
    in coefficients, and the picture and its gradient are held besides. `style_loss`: the distribution
    losses keep the style images' features while their targets are made, and sliced keeps a target
    as large as the picture's features and its sort's indices for the backward (:func:`_target_bytes`);
    `style_regions`: how many style masks' regions (0: none), each with a loss of its own (a masked
    Gram's transients: MASKED_GRAM_COPIES_PER_REGION; a sliced loss's targets).
    Raises OptionError when nothing fits the budget."""
    stage = _Stage(
        height,
        width,
        tuple(content_layers),
        tuple(style_layers),
        tuple(tuple(shape) for shape in style_shapes),  # type: ignore[misc]
        device_type,
        activation_bytes,
        optimizer,
        tuple(breaks),
        pictures,
        HELD_IMAGES + int(averaged) + 2 * int(pyramid),
        PYRAMID_COEFFICIENTS_PER_PIXEL if pyramid else 1.0,
        style_loss,
        style_regions,
    )
    edges = _tile_edges(tile, stage.layers, max(height, width))
    candidates = _candidates(steps, edges, tile, checkpointing, history_size, history_bfloat16, content_bfloat16)
    plans = [_estimate(stage, *candidate) for candidate in candidates]
    if budget is None:
        return plans[0]
    for index, candidate in enumerate(plans):
        if candidate.total <= usable_share(budget):
            return dataclasses.replace(candidate, budget_limited=index > 0 or bool(candidate.tile_edge))
    raise _refusal(min(plans, key=lambda p: p.total), budget)


def run_budget(options, network) -> int:
    """Bytes a stage of a run with `options` on `network` (nst_ext.model.network) may use: max_memory on
    each of its distinct devices ("cpu,cpu" is one memory), or by default a safe share
    (DEFAULT_BUDGET_SHARE) of the memory free to this process on them now."""
    distinct = set(network.devices)
    if options.max_memory is not None:
        return parse_size(options.max_memory) * len(distinct)
    return int(DEFAULT_BUDGET_SHARE * sum(free_memory_bytes(device) for device in distinct))
