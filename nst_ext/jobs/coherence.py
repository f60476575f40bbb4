"""How each frame of a video follows the frames before it (``nst-ext video --coherence``), after
Ruder, Dosovitskiy & Brox (2016; IJCV 2018):

- ``flow`` (the default): the previous stylized frame is moved with the scene by the optical flow
  of the input (nst_ext.jobs.flow) and starts the frame, pixels it cannot stand for (disoccluded, or
  moved in from outside the frame) starting from the frame's own content; a temporal term holds
  the frame to the warped earlier frames where the consistency check trusts them, each pixel to
  its most recent visible past among the ``long_term`` frames back (1 = the previous frame).
- ``still``: the previous stylized frame as it lies on the screen starts the frame, and the
  temporal term holds the pixels whose input did not change (a frame difference): right for a
  still camera only, kept for comparison.
- ``none``: every frame gets the full single-picture run on its own (it flickers).

The first frame, and any frame without a stylized previous one, gets the full coarse-to-fine run.

The temporal weight is given for the default style weight and follows the style weight in
proportion (:func:`temporal_strength`): a stronger style pulls each pixel harder every frame, and a
temporal term that did not follow let it repaint still pixels (BENCHMARKS.md, "Still things stay
still at any style strength").
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Callable, Dict, Optional, Sequence, Tuple

from nst_ext.errors import OptionError

if TYPE_CHECKING:
    import torch

COHERENCE_MODES = ("flow", "still", "none")
# Frames back that the temporal term looks at (BENCHMARKS.md, "Video": the long-term frames keep
# what a moving object uncovers the way it looked before it was covered).
LONG_TERM = (1, 2, 4)
# The temporal term's weight at the default style weight; it follows the style weight
# (temporal_strength). Eight times the least that kept still backgrounds under 0.3x the flicker of
# frames stylized one by one (500): under a zoom the style term repaints the whole texture every
# frame as it grows or shrinks, and only a hold this strong keeps a zoom out within 1.5x the
# input's own warping error; the later frames' texture stays the style's as much (BENCHMARKS.md,
# "Video", and the notes it links).
TEMPORAL_WEIGHT = 4000.0


def temporal_strength(temporal_weight: float, style_weight: float) -> float:
    """The temporal term's weight in a frame's loss: `temporal_weight` as given for the default
    style weight, scaled by `style_weight` over it, so that the balance of the two terms, and with
    it the flicker of still pixels, is the same at any style strength."""
    from nst_ext.plan.options import StyleOptions

    return temporal_weight * style_weight / StyleOptions.style_weight


def check_long_term(long_term) -> Tuple[int, ...]:
    """`long_term`, frames back (whole numbers ≥ 1 holding 1, e.g. (1, 2, 4): each frame follows
    the previous one), sorted; OptionError otherwise."""
    values = tuple(long_term) if isinstance(long_term, (list, tuple)) else ()
    if (
        not values
        or 1 not in values
        or len(set(values)) != len(values)
        or any(isinstance(value, bool) or not isinstance(value, int) or value < 1 for value in values)
    ):
        raise OptionError(
            f"long-term frames must be different whole numbers of frames back, one of them 1 "
            f"(e.g. 1,2,4); got {long_term!r}"
        )
    return tuple(sorted(values))


class FrameChain:
    """Stylizes the frames of one clip in order, each after the ones before it (module docstring).

    `opening` stylizes a frame on its own (the full run), `following` a frame that follows others
    (one stage at the output size, its own steps). Frames are ``(3, H, W)`` float32 in [0, 1],
    all one size, given by index in order with :meth:`add_input` (which starts their optical flows
    on worker threads, so the flows of the next frame are made while this one is optimised);
    :meth:`add_output` records a frame stylized before (a stopped run's), :meth:`stylize` makes
    one. Only the frames the long-term terms reach are kept. `temporal_weight` is for the default
    style weight (:func:`temporal_strength` scales it to `following`'s). Use as a context manager
    (the worker stops on exit)."""

    def __init__(
        self,
        opening,
        following,
        styles: Sequence[torch.Tensor],
        coherence: str = "flow",
        long_term: Sequence[int] = LONG_TERM,
        temporal_weight: float = TEMPORAL_WEIGHT,
    ):
        self.check_coherence(coherence)
        self.opening, self.following, self.styles = opening, following, list(styles)
        self.coherence, self.long_term = coherence, check_long_term(long_term)
        self.temporal_weight = temporal_strength(temporal_weight, following.options.style_weight)
        self.inputs: Dict[int, torch.Tensor] = {}
        self.outputs: Dict[int, torch.Tensor] = {}
        self._flows: Dict[int, Dict[int, Tuple[Future, Future]]] = {}
        # Each flow of a frame is its own task: on a many-core machine feeding a GPU they run side by
        # side, so a frame's flows take about as long as one of them (OpenCV releases the GIL).
        workers = min(2 * len(self.long_term), os.cpu_count() or 1)
        self._worker = ThreadPoolExecutor(workers, thread_name_prefix="nst-ext-flow") if coherence == "flow" else None

    @staticmethod
    def check_coherence(coherence: str) -> None:
        if coherence not in COHERENCE_MODES:
            raise OptionError(f"coherence must be one of {', '.join(COHERENCE_MODES)}, got {coherence!r}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=True, cancel_futures=True)

    @property
    def reach(self) -> int:
        """How many frames back a frame looks (the history kept)."""
        return max(self.long_term) if self.coherence == "flow" else 1

    def add_input(self, index: int, frame: torch.Tensor) -> None:
        """The input frame `index`; with flow, its flows to the earlier inputs it reaches start now."""
        self.inputs[index] = frame
        if self._worker is not None:
            from nst_ext.jobs.flow import flow_between

            self._flows[index] = {
                back: (
                    self._worker.submit(flow_between, frame, self.inputs[index - back]),
                    self._worker.submit(flow_between, self.inputs[index - back], frame),
                )
                for back in self.long_term
                if index - back in self.inputs
            }
        self._forget(index)

    def add_output(self, index: int, output: torch.Tensor) -> None:
        """The stylized frame `index`, made before (a stopped run's, another chunk's)."""
        self.outputs[index] = output
        self._forget(index)

    def stylize(self, index: int, callback: Optional[Callable] = None):
        """Stylizes input frame `index` (given by add_input) after the stylized frames before it;
        returns the Stylizer's result (``interrupted`` set on Ctrl-C), recording its picture."""
        from nst_ext.objective import TemporalTarget

        frame = self.inputs[index]
        previous = self.outputs.get(index - 1)
        flows = {
            back: (backward.result(), forward.result())
            for back, (backward, forward) in self._flows.pop(index, {}).items()
        }
        if self.coherence == "none" or previous is None:
            result = self.opening.run(frame, self.styles, callback=callback)
        elif self.coherence == "still":
            from nst_ext.jobs.flow import still_mask

            temporal = TemporalTarget(previous, still_mask(frame, self.inputs[index - 1]), self.temporal_weight)
            result = self.following.run(frame, self.styles, callback=callback, init=previous, temporal=temporal)
        else:
            init, target, mask = self.warped_past(index, flows)
            result = self.following.run(
                frame,
                self.styles,
                callback=callback,
                init=init,
                temporal=TemporalTarget(target, mask, self.temporal_weight),
            )
        if not result.interrupted:
            self.add_output(index, result.tensor)
        return result

    def warped_past(self, index: int, flows: Dict[int, Tuple[torch.Tensor, torch.Tensor]]):
        """For frame `index` and its `flows` (frames back → (backward, forward) flow): the initial
        image ``(3, H, W)``, the temporal target ``(3, H, W)`` and its mask ``(H, W)`` float32 in
        {0, 1}. Each pixel's target is the most recent earlier stylized frame, warped, that the
        consistency check trusts there (Ruder et al.'s long-term masks), in the current frame's light
        (:func:`nst_ext.jobs.warping.relit`); the start is the warped
        previous frame where it is not disoccluded, else the trusted long-term target, else the
        frame's own content (filling it from the stylized neighbourhood instead made a video flicker
        more where the neighbourhood's content differs: the notes BENCHMARKS.md, "Video" links)."""
        import torch

        from nst_ext.jobs.flow import consistency
        from nst_ext.jobs.warping import relit, warp

        frame = self.inputs[index]
        target, covered = torch.zeros_like(frame), torch.zeros(frame.shape[-2:], dtype=torch.bool)
        init = frame.clone()
        for back in self.long_term:
            if index - back not in self.outputs or back not in flows:
                continue
            backward, forward = flows[back]
            earlier = self.inputs.get(index - back)
            check = consistency(backward, forward, frame, earlier)
            warped = warp(self.outputs[index - back], backward)
            if check.earlier_warped is not None:
                warped = relit(warped, frame, check.earlier_warped, check.reliable)
            if back == 1:
                init = torch.where(check.disoccluded[None], frame, warped)
            newly = check.reliable & ~covered
            target = torch.where(newly[None], warped, target)
            covered |= check.reliable
        init = torch.where(covered[None], target, init)
        return init, target, covered.float()

    def _forget(self, index: int) -> None:
        # Inputs run one frame ahead of outputs (add_input(i + 1) comes before stylize(i)).
        for kept in (self.inputs, self.outputs):
            for old in [i for i in kept if i < index - self.reach - 1]:
                del kept[old]
        for old in [i for i in self._flows if i < index - 1]:  # frames kept, never stylized
            del self._flows[old]
