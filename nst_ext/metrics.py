"""How far a picture is from its content and its style, as the quality panel, the benchmarks and
the tests judge it: VGG19 feature distances measured with the reference ops in float32.

content distance: mean over the content layers of ``mean((F(x) − F(c))²) / mean(F(c)²)``; 0 is the
content itself. style distance: mean over the style layers of ``mean((G(x) − G(s))²) / mean(G(s)²)``
with ``G`` the Gram matrix; 0 is the style's own statistics.
"""

from typing import Sequence, Tuple

import torch

from nst_ext.ops import reference
from nst_ext.io.images import resize, resize_to_long_side, resize_to_width

DEFAULT_JUDGE_CONTENT_LAYERS = ("relu4_2",)
DEFAULT_JUDGE_STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
# The independent style measure (issue 24's definition, kept apart from the panel's figure and from
# the optimiser's loss): every picture scaled to this width, Frobenius norms, not mean squares.
INDEPENDENT_WIDTH = 256


@torch.no_grad()
def distances(
    vgg,
    image: torch.Tensor,
    content: torch.Tensor,
    style: torch.Tensor,
    content_layers: Sequence[str] = DEFAULT_JUDGE_CONTENT_LAYERS,
    style_layers: Sequence[str] = DEFAULT_JUDGE_STYLE_LAYERS,
) -> Tuple[float, float]:
    """(content distance, style distance) of `image` ``(3, H, W)`` in [0, 1]; the content is resized
    to the image's long side, the style too (as a run with ``style_scale=1`` sees them). `vgg` is a
    :class:`nst_ext.model.vgg.VGG19Features` reaching the deepest layer; all on its device, float32."""
    device = next(vgg.parameters()).device
    long_side = max(image.shape[-2:])
    image = image.to(device).unsqueeze(0)
    content = resize_to_long_side(content, long_side).to(device).unsqueeze(0)
    style = resize_to_long_side(style, long_side).to(device).unsqueeze(0)
    layers = list(dict.fromkeys(list(content_layers) + list(style_layers)))
    out, target_content, target_style = vgg(image, layers), vgg(content, content_layers), vgg(style, style_layers)
    content_distance = sum(
        ((out[n] - target_content[n]).square().mean() / target_content[n].square().mean()).item()
        for n in content_layers
    ) / max(1, len(content_layers))
    style_distance = 0.0
    for name in style_layers:
        target_gram = reference.gram_matrix(target_style[name].float())
        style_distance += (reference.style_loss(out[name].float(), target_gram) / target_gram.square().mean()).item()
    return content_distance, style_distance / max(1, len(style_layers))


def subject_and_style(vgg, image: torch.Tensor, content: torch.Tensor, style: torch.Tensor) -> Tuple[float, float]:
    """The quality panel's two figures for a result `image` ``(3, H, W)``:

    subject: its content distance ÷ the style image's own content distance (the style stretched
    to the image's shape): 0 is the content unchanged, 1 as far from the content as the style is.
    style: its style distance ÷ the content image's own style distance: 1 is no style taken on,
    0 the style's own statistics.
    """
    shape = tuple(image.shape[-2:])
    content_distance, style_distance = distances(vgg, image, content, style)
    style_as_picture, _ = distances(vgg, resize(style, shape), content, style)
    _, content_as_picture = distances(vgg, resize(content, shape), content, style)
    return content_distance / style_as_picture, style_distance / content_as_picture


@torch.no_grad()
def independent_style(
    vgg,
    image: torch.Tensor,
    content: torch.Tensor,
    style: torch.Tensor,
    layers: Sequence[str] = DEFAULT_JUDGE_STYLE_LAYERS,
    width: int = INDEPENDENT_WIDTH,
) -> float:
    """How much of the style a result `image` has not taken on, by a measure built apart from the
    optimiser's loss and the panel's figure: each picture (result, style, content; ``(3, H, W)`` in
    [0, 1]) scaled to `width` pixels wide; per layer ``‖G(x) − G(s)‖ / ‖G(s)‖`` (Frobenius norms of
    the Gram matrices), summed over the layers; the result's sum divided by the content image's.
    1: no style taken on; 0: the style's own statistics. float32 on `vgg`'s device."""
    device = next(vgg.parameters()).device

    def grams(picture):
        features = vgg(resize_to_width(picture, width).to(device).unsqueeze(0), list(layers))
        return [reference.gram_matrix(features[name].float())[0] for name in layers]

    targets = grams(style)

    def distance(picture):
        return sum(float((gram - target).norm() / target.norm()) for gram, target in zip(grams(picture), targets))

    return distance(image) / distance(content)
