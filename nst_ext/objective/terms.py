"""The terms of one evaluation, and what every way of evaluating a stage's loss gives the
:class:`~nst_ext.objective.stage.Objective` (:class:`Evaluation`): the whole picture in one pass
(:mod:`nst_ext.objective.whole`) or tile by tile (:mod:`nst_ext.objective.tiled`)."""

from typing import Dict, List, Protocol, Sequence, Tuple

import torch

# The loss terms of one evaluation, in the order of the (5,) tensors that hold them.
TERMS = ("content", "style", "tv", "temporal", "total")


def with_total(terms: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """`terms` (each weighted, ``(B,)``) with their sum as ``total``: the one place the terms are added."""
    terms["total"] = terms["content"] + terms["style"] + terms["tv"] + terms["temporal"]
    return terms


class Evaluation(Protocol):
    """How an objective's loss is evaluated at its pictures ``(B, 3, H, W)``; each term ``(B,)`` float32."""

    graphable: bool  # whether one evaluation may be captured as a CUDA graph (fixed work, one pass)

    def content_pass(
        self, contents: torch.Tensor, content_layers: Sequence[str], style_terms: Sequence, dtype: torch.dtype
    ) -> Tuple[Dict[str, torch.Tensor], List[torch.Tensor]]:
        """Without gradients: the contents' features at `content_layers` (the content targets) and the
        value of each ``(name, weight, loss)`` of `style_terms` at the contents, ``(B,)`` each."""
        ...

    def values(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The terms at `images`, by name (with a graph where one is being made and the evaluation
        makes one)."""
        ...

    def evaluate(self, leaves: Sequence[torch.Tensor]) -> Dict[str, torch.Tensor]:
        """The terms at the pictures `leaves` (each ``(1, 3, H, W)``, requires_grad), detached, by
        name, each leaf's ``grad`` filled."""
        ...
