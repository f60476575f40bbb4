"""One stage's loss evaluated on the whole picture in one pass through VGG (segment by segment, each
segment checkpointed where the plan says so), its gradient by autograd: the
:class:`~nst_ext.objective.terms.Evaluation` of every picture that fits (:mod:`nst_ext.objective.tiled`
is the other)."""

from typing import TYPE_CHECKING, Dict, List, Sequence, Tuple

import torch

from nst_ext.objective.terms import with_total

if TYPE_CHECKING:
    from nst_ext.objective.stage import Objective


class WholePicture:
    """The :class:`~nst_ext.objective.terms.Evaluation` of `objective` on whole pictures."""

    graphable = True

    def __init__(self, objective: "Objective"):
        self.objective = objective

    def content_pass(
        self, contents: torch.Tensor, content_layers: Sequence[str], style_terms: Sequence, dtype: torch.dtype
    ) -> Tuple[Dict[str, torch.Tensor], List[torch.Tensor]]:
        """The features as VGG gives them (the content loss stores its target in `dtype` itself)."""
        network = self.objective.network
        names = list(content_layers) + list(dict.fromkeys(name for name, _, _ in style_terms))
        with torch.no_grad():
            with network.autocast():
                features = network.vgg(contents.to(network.device), names)
            values = [term(features[name]) for name, _, term in style_terms]
        return features, values

    def values(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        objective = self.objective
        options = objective.options
        # The loss of the picture as it will be saved: L-BFGS moves pixels freely, and at 512 px about
        # 7% of them end outside [0, 1] (by up to 0.5); clamped only at the end, the saved picture's
        # style term was 38% above the one optimised (BENCHMARKS.md, "The picture scored as saved").
        # A pixel outside gets no gradient and no longer counts; the clamp's gradient passes at 0 and 1.
        if options.clamp_in_loss:
            images = images.clamp(0, 1)
        content, style = objective.through_network(images, objective.score)
        return with_total(
            {
                "content": options.content_weight * content,
                "style": options.style_weight * style,
                **objective.local_terms(images),
            }
        )

    def evaluate(self, leaves: Sequence[torch.Tensor]) -> Dict[str, torch.Tensor]:
        for leaf in leaves:
            leaf.grad = None
        terms = self.values(leaves[0] if len(leaves) == 1 else torch.cat(list(leaves)))
        terms["total"].sum().backward()
        return {name: value.detach() for name, value in terms.items()}
