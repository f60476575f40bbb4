"""Ruder, Dosovitskiy & Brox's multi-pass mode (IJCV 2018, "multi-pass algorithm"), for offline
quality: after the single forward pass (:class:`nst_ext.jobs.coherence.FrameChain`), further passes
run over the whole clip in alternating directions, backward first. In each, every frame but the
pass's first starts from its own picture of the pass before, blended (PASS_BLEND) where the
consistency check trusts it with its neighbour's picture of this pass, warped; the neighbour's is
then its temporal target. A frame so hears from the frames after it, which a single pass never
lets it (what a moving object uncovers, the end of a zoom). Each pass costs about what the first
did (BENCHMARKS.md, "Multi-pass").
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple

from nst_ext.errors import OptionError

if TYPE_CHECKING:
    import torch

# Ruder et al.'s δ: the share of the warped neighbour in a frame's start, where it is trusted.
PASS_BLEND = 0.5
MAX_PASSES = 20  # beyond this a pass changes nothing a viewer sees and a user typed a mistake


def check_passes(passes) -> int:
    """`passes` as a whole number from 1 (the single pass) to MAX_PASSES; OptionError otherwise."""
    if isinstance(passes, bool) or not isinstance(passes, int) or not 1 <= passes <= MAX_PASSES:
        raise OptionError(f"passes must be a whole number from 1 to {MAX_PASSES}, got {passes!r}")
    return passes


def pass_order(frames: int, later_pass: int) -> Tuple[range, int]:
    """For the `later_pass`-th pass after the first (1, 2, …) over `frames` frames: the frames it
    stylizes, in order, and the step to each one's neighbour in the pass (the frame done before it):
    backward for odd passes, forward for even ones; the pass's first frame is kept."""
    if later_pass % 2 == 1:
        return range(frames - 2, -1, -1), 1
    return range(1, frames), -1


class _PairFlows:
    """The flows between neighbouring input frames, made on a worker thread one frame ahead of use
    and kept only for the pass at hand (each pass needs each pair once)."""

    def __init__(self, inputs: Sequence[torch.Tensor]):
        self.inputs = inputs
        self._worker = ThreadPoolExecutor(2, thread_name_prefix="nst-ext-pass-flow")
        self._pending: Dict[Tuple[int, int], Tuple[Future, Future]] = {}

    def prefetch(self, index: int, neighbour: int) -> None:
        from nst_ext.jobs.flow import flow_between

        if (index, neighbour) not in self._pending and 0 <= neighbour < len(self.inputs):
            frame, other = self.inputs[index], self.inputs[neighbour]
            self._pending[(index, neighbour)] = (
                self._worker.submit(flow_between, frame, other),
                self._worker.submit(flow_between, other, frame),
            )

    def take(self, index: int, neighbour: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(backward: `index` → `neighbour`, forward: `neighbour` → `index`)."""
        self.prefetch(index, neighbour)
        backward, forward = self._pending.pop((index, neighbour))
        return backward.result(), forward.result()

    def close(self) -> None:
        self._worker.shutdown(wait=True, cancel_futures=True)


def refine_in_passes(
    following,
    styles: Sequence[torch.Tensor],
    inputs: Sequence[torch.Tensor],
    outputs: List[torch.Tensor],
    passes: int,
    temporal_weight: float,
    callback: Optional[Callable[[int, int], None]] = None,
    done: int = 1,
    on_pass: Optional[Callable[[int], None]] = None,
) -> bool:
    """Runs passes `done` + 1 … `passes` (module docstring) over `outputs`, the stylized frames of
    the passes done (``(3, H, W)`` float32 in [0, 1], one per frame of `inputs`, same size; any
    sequence that takes item assignment, e.g. frames kept on disk), replacing each as it is
    restylized with `following` (a Stylizer: one stage at the output size); `temporal_weight` is for
    the default style weight, as the frame chain's (coherence.temporal_strength scales it to
    `following`'s). `callback(pass, frame)` is called after each frame, `on_pass(pass)` after each
    pass. Returns True when Ctrl-C stopped it (`outputs` then holds the frames done so far, every one
    a finished picture)."""
    import torch

    from nst_ext.jobs.coherence import temporal_strength
    from nst_ext.jobs.flow import consistency
    from nst_ext.jobs.warping import relit, warp
    from nst_ext.objective import TemporalTarget

    check_passes(passes)
    weight = temporal_strength(temporal_weight, following.options.style_weight)
    if len(outputs) != len(inputs):
        raise ValueError(f"{len(outputs)} stylized frames for {len(inputs)} input frames")
    if len(inputs) < 2:
        return False
    flows = _PairFlows(inputs)
    try:
        for later_pass in range(max(1, done), passes):
            order, step = pass_order(len(inputs), later_pass)
            for position, index in enumerate(order):
                neighbour = index + step
                if position + 1 < len(order):
                    flows.prefetch(order[position + 1], order[position + 1] + step)
                backward, forward = flows.take(index, neighbour)
                check = consistency(backward, forward, inputs[index], inputs[neighbour])
                warped = relit(warp(outputs[neighbour], backward), inputs[index], check.earlier_warped, check.reliable)
                trusted = check.reliable[None]
                start = torch.where(trusted, PASS_BLEND * warped + (1 - PASS_BLEND) * outputs[index], outputs[index])
                result = following.run(
                    inputs[index],
                    styles,
                    init=start,
                    temporal=TemporalTarget(warped, check.reliable.float(), weight),
                )
                if result.interrupted:
                    return True
                outputs[index] = result.tensor
                if callback is not None:
                    callback(later_pass + 1, index)
            if on_pass is not None:
                on_pass(later_pass + 1)
    except KeyboardInterrupt:
        return True
    finally:
        flows.close()
    return False
