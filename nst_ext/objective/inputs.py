"""A run's pictures made ready for its stages: the content and style images loaded, the style
blend weights normalised, the style colours matched to the content (colour control), and each
stage's images at their size, checked against the layers. Images are float32 ``(3, H, W)`` in
[0, 1] on the CPU."""

import math
from typing import List, Optional, Sequence, Tuple, Union

import torch

from nst_ext.objective import color
from nst_ext.errors import ImageError, OptionError
from nst_ext.io.images import ImageSource, load_image, resize
from nst_ext.plan.layers import LAYER_INDEX, LAYERS, min_image_side
from nst_ext.objective.masks import StageMasks, at_size, check_aspect, load_mask
from nst_ext.plan.options import StyleOptions


def prepare_inputs(
    options: StyleOptions, contents: Sequence[ImageSource], styles: Union[ImageSource, Sequence[ImageSource]]
) -> Tuple[List[torch.Tensor], List[torch.Tensor], List[float]]:
    """The content images (a list), the style images and the normalised blend weights. Style
    colours follow the content under colour control, so that needs one content image."""
    if isinstance(styles, (str, bytes)) or not isinstance(styles, Sequence):
        styles = [styles]
    if not styles:
        raise OptionError("give at least one style image")
    blend = options.style_blend_weights
    if blend is None:
        blend = [1.0] * len(styles)
    if len(blend) != len(styles):
        raise OptionError(
            f"{len(blend)} style blend weights given for {len(styles)} style images; give one weight per style image"
        )
    if any(not math.isfinite(w) or w < 0 for w in blend) or sum(blend) <= 0:
        raise OptionError(f"style blend weights must be non-negative with a positive sum, got {list(blend)}")
    blend = [w / sum(blend) for w in blend]
    limit = options.max_input_pixels
    content_images = [load_image(content, "content image", limit) for content in contents]
    style_images = [
        load_image(style, f"style image {i + 1}" if len(styles) > 1 else "style image", limit)
        for i, style in enumerate(styles)
    ]
    assert not options.colors_follow_content or len(content_images) == 1
    if options.style_recoloring is not None:
        style_images = [
            color.transfer_color(style, content_images[0], options.style_recoloring) for style in style_images
        ]
    if options.preserve_color == "luminance":
        style_images = [color.match_luminance(style, content_images[0], options.color_space) for style in style_images]
    return content_images, style_images, blend


def check_size(options: StyleOptions, image: torch.Tensor, what: str) -> None:
    """Raises ImageError where `image` is too small for the deepest layer the options use."""
    layers = list(options.content_layers) + list(options.style_layers)
    needed = min_image_side(layers)
    height, width = image.shape[-2:]
    if min(height, width) < needed:
        deepest = max(layers, key=lambda name: LAYERS[LAYER_INDEX[name]].pools_before)
        raise ImageError(
            f"{what} is {width}x{height} pixels at this stage, too small for layer {deepest}, which "
            f"needs at least {needed} pixels on the short side; use a larger `size`/`style_scale` "
            "or shallower layers"
        )


def content_at_stage(options: StyleOptions, content_image: torch.Tensor, shape: Tuple[int, int]) -> torch.Tensor:
    """The content image resized to a stage's `shape` (height, width; nst_ext.plan.run.StagePlan),
    its luminance only under preserve_color="luminance", its size checked against the layers."""
    resized = resize(content_image, shape)
    if options.preserve_color == "luminance":
        resized = color.as_gray_rgb(color.luminance(resized, options.color_space), options.color_space)
    check_size(options, resized, "the content image")
    return resized


def styles_at_stage(
    options: StyleOptions, style_images: Sequence[torch.Tensor], shapes: Sequence[Tuple[int, int]]
) -> List[torch.Tensor]:
    """The style images resized to a stage's style `shapes` (nst_ext.plan.run.StagePlan), their
    sizes checked against the layers."""
    resized = [resize(style, shape) for style, shape in zip(style_images, shapes)]
    for i, style in enumerate(resized):
        check_size(options, style, f"style image {i + 1}")
    return resized


def prepare_masks(
    options: StyleOptions, content_image: torch.Tensor, style_images: Sequence[torch.Tensor]
) -> Optional[StageMasks]:
    """The run's masks at their pictures' full size (None without any), loaded and checked: one
    style mask and one style-image mask per style image, each with its picture's aspect ratio;
    a style mask that is black everywhere (its style would apply nowhere) is refused."""
    if options.style_masks is None and options.content_mask is None and options.style_image_masks is None:
        return None
    limit, count = options.max_input_pixels, len(style_images)
    content_shape = tuple(content_image.shape[-2:])

    def masks_for_styles(
        sources: Optional[Sequence], what: str, shapes: Sequence[Tuple[int, ...]], pictures: Sequence[str]
    ) -> Optional[List[torch.Tensor]]:
        if sources is None:
            return None
        if len(sources) != count:
            raise OptionError(f"{len(sources)} {what}s given for {count} style image(s); give one per style image")
        masks = []
        for i, (source, shape, picture) in enumerate(zip(sources, shapes, pictures)):
            name = f"{what} {i + 1}"
            mask = load_mask(source, name, limit)
            check_aspect(mask, shape, name, picture)
            if float(mask.max()) <= 0:
                raise OptionError(
                    f"{name} is black everywhere: its style would apply nowhere; white marks where it applies"
                )
            masks.append(mask)
        return masks

    style = masks_for_styles(options.style_masks, "style mask", [content_shape] * count, ["the content image"] * count)
    sources = masks_for_styles(
        options.style_image_masks,
        "style image mask",
        [tuple(image.shape[-2:]) for image in style_images],
        [f"style image {i + 1}" for i in range(count)],
    )
    content = None
    if options.content_mask is not None:
        content = load_mask(options.content_mask, "content mask", limit)
        check_aspect(content, content_shape, "content mask", "the content image")
    return StageMasks(style=style, content=content, sources=sources, dilation=options.mask_dilation)


def masks_at_stage(masks: Optional[StageMasks], content_shape, style_shapes) -> Optional[StageMasks]:
    """The run's masks at one stage's sizes: the content's ``(H, W)`` and each style image's."""
    if masks is None:
        return None
    return StageMasks(
        style=None if masks.style is None else [at_size(mask, content_shape) for mask in masks.style],
        content=None if masks.content is None else at_size(masks.content, content_shape),
        sources=None
        if masks.sources is None
        else [None if mask is None else at_size(mask, shape) for mask, shape in zip(masks.sources, style_shapes)],
        dilation=masks.dilation,
    )


def starting_image(
    options: StyleOptions,
    stage_content: torch.Tensor,
    previous: Optional[torch.Tensor],
    previous_content: Optional[torch.Tensor],
    generator: torch.Generator,
    init: Optional[ImageSource],
    device: torch.device,
) -> torch.Tensor:
    """The image a stage starts from, ``(1, 3, H, W)`` float32 on `device`: the last stage's result
    (`previous`, made at the size of `previous_content`) enlarged when there is one, with the
    content's detail added back (``content_detail``), else the `init` (None: the option's). A
    tensor of its own: the stage optimises it in place, never the content image or a caller's init."""
    height, width = stage_content.shape[-2:]
    init = options.init if init is None else init
    starts_from_content = isinstance(init, str) and init == "content"
    if previous is not None:  # coarse-to-fine: start from the last stage's result
        start = resize(previous[0].detach().float().cpu().clamp(0, 1), (height, width))
        if options.content_detail and starts_from_content and previous_content is not None:
            # What the enlargement of the content itself loses: the picture's edges at this size.
            start = (start + stage_content - resize(previous_content, (height, width))).clamp(0, 1)
    elif starts_from_content:
        start = stage_content
    elif isinstance(init, str) and init == "noise":
        start = torch.rand((3, height, width), generator=generator)
    else:
        start = resize(load_image(init, "init image", options.max_input_pixels), (height, width))
    image = start.unsqueeze(0).to(device).contiguous()
    may_be_theirs = previous is None and not (isinstance(init, str) and init == "noise")
    return image.clone() if may_be_theirs and image.data_ptr() == start.data_ptr() else image
