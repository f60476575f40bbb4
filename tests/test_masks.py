"""Spatial control (nst_ext.objective.masks): masks at each layer's resolution, loaded and checked, and
pictures whose regions take on their own styles."""

import subprocess
import sys

import pytest
import torch
from PIL import Image

import nst_ext
from nst_ext.errors import ImageError
from nst_ext.plan.layers import layer_shape
from nst_ext.objective.masks import StageMasks, layer_masks, load_mask
from nst_ext.objective import Objective
from nst_ext.plan.options import OptionError
from nst_ext.stylizer import Stylizer
from lbfgs_step_bound import STRONG_STYLE_WEIGHT, source_masked_setting, texture  # benchmarks/ (conftest)

LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


@pytest.mark.parametrize("height,width", [(37, 53), (64, 64), (17, 200)])
def test_layer_masks_follow_the_network_geometry(seed, height, width):
    mask = (torch.rand(height, width) > 0.5).float()
    for name, cells in layer_masks(mask, LAYERS).items():
        assert tuple(cells.shape) == layer_shape(name, height, width)[1:], name
        assert 0 <= float(cells.min()) and float(cells.max()) <= 1
    # A cell's weight is the share of its pixels inside (relu2_1: 2×2 pixels per cell).
    cells = layer_masks(mask, ["relu2_1"])["relu2_1"]
    assert torch.allclose(cells[0, 0], mask[:2, :2].mean())


def test_dilation_grows_the_region_by_cells():
    mask = torch.zeros(64, 64)
    mask[:, :32] = 1  # the left half
    plain = layer_masks(mask, ["relu3_1"])["relu3_1"]  # 16 columns, 8 inside
    grown = layer_masks(mask, ["relu3_1"], dilation=2)["relu3_1"]
    assert (plain[0] > 0).sum() == 8 and (grown[0] > 0).sum() == 10
    assert torch.equal(grown[:, :8], plain[:, :8])


@pytest.mark.parametrize("dilation", [60, 61, 1000, 4611686018427387904])
def test_dilation_past_the_layers_side_fills_it_and_any_size_is_taken(seed, dilation):
    """A dilation as wide as the layer or wider grows the region over the whole layer; an absurd one
    (2**62) overflowed the pooling's filter size (a traceback) and now gives that same result."""
    mask = torch.zeros(61, 37)
    mask[5, 7] = torch.rand(()).item() + 0.1
    whole = layer_masks(mask, ["relu1_1", "relu3_1"], dilation=dilation)
    exact = {name: cells.max().expand_as(cells) for name, cells in layer_masks(mask, ["relu1_1", "relu3_1"]).items()}
    for name in exact:
        assert torch.equal(whole[name], exact[name]), name


def test_load_mask_from_files(tmp_path):
    gray = tmp_path / "gray.png"
    Image.new("L", (30, 20), 128).save(gray)
    rgb = tmp_path / "rgb.png"
    Image.new("RGB", (30, 20), (255, 255, 255)).save(rgb)
    assert load_mask(gray, "mask", 10**6).shape == (20, 30)
    assert torch.allclose(load_mask(gray, "mask", 10**6), torch.full((20, 30), 128 / 255))
    assert torch.allclose(load_mask(rgb, "mask", 10**6), torch.ones(20, 30))
    with pytest.raises(ImageError, match="mask"):
        load_mask(tmp_path / "missing.png", "style mask 1", 10**6)


@pytest.fixture(scope="module")
def stylizer_64():
    return Stylizer(size=64, steps=2, mixed_precision=False, device="cpu")


def test_full_masks_give_the_unmasked_loss(seed, stylizer_64):
    """With one style, a style mask and a content mask of ones everywhere are the unmasked
    objective: same loss, same gradient (the masked kernels with w ≡ 1, the per-style normaliser
    equal to the whole-term one)."""
    content, style = torch.rand(3, 48, 64), torch.rand(3, 40, 40)
    network, options = stylizer_64.network, stylizer_64.options
    masks = StageMasks(style=[torch.ones(48, 64)], content=torch.ones(48, 64))
    plain = Objective(network, options, content, [style], [1.0])
    masked = Objective(network, options, content, [style], [1.0], masks=masks)
    image = torch.rand(1, 3, 48, 64)
    results = []
    for objective in (plain, masked):
        leaf = image.clone().requires_grad_(True)
        terms = objective(leaf)
        terms["total"].backward()
        results.append((terms, leaf.grad))
    for name in ("content", "style", "total"):
        assert results[1][0][name].item() == pytest.approx(results[0][0][name].item(), rel=1e-4)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-3, atol=1e-6)


def region_distances(vgg, picture: torch.Tensor, styles):
    """For the left and right thirds of `picture`: the distance of its Gram statistics (relu1_1 and
    relu2_1, relative, summed) to each style's; ``[[left to A, left to B], [right to A, right to B]]``."""
    layers = ["relu1_1", "relu2_1"]
    width = picture.shape[-1]
    crops = [picture[..., : width // 3], picture[..., width - width // 3 :]]
    with torch.no_grad():
        targets = [vgg(style[None], layers) for style in styles]
        table = []
        for crop in crops:
            features = vgg(crop[None], layers)
            row = []
            for target in targets:
                row.append(
                    sum(
                        float(
                            (nst_ext.gram_matrix(features[n]) - nst_ext.gram_matrix(target[n])).norm()
                            / nst_ext.gram_matrix(target[n]).norm()
                        )
                        for n in layers
                    )
                )
            table.append(row)
    return table


@pytest.mark.parametrize(
    "style_loss, parametrization, average",
    [("gram", "pixels", False), ("gram", "pyramid", False), ("sliced", "pixels", False), ("gram", "pixels", True)],
)
def test_two_regions_take_on_their_own_styles(seed, style_loss, parametrization, average):
    """The issue's acceptance test: a picture from two different styles, one on each half (two
    stages, coarse to fine); each half's statistics are closer to its own style than to the
    other's, and swapping the masks swaps the halves. Through the pyramid too (whose coarse levels
    span both halves), with the sliced loss (each region's distribution its style's) and with the
    average of the iterates as each stage's picture."""
    generator = torch.Generator().manual_seed(seed)
    height, width = 72, 96
    content = 0.5 + 0.05 * torch.randn(3, height, width, generator=generator)
    blotches, dots = texture("blotches", 64, 64, generator), texture("dots", 64, 64, generator)
    left = torch.zeros(height, width)
    left[:, : width // 2] = 1
    settings = dict(
        scales=[64, 96],
        steps=[30, 20],
        style_weight=STRONG_STYLE_WEIGHT,
        seed=0,
        device="cpu",
        style_loss=style_loss,
        parametrization=parametrization,
        average=average,
    )
    stylizer = Stylizer(style_masks=[left, 1 - left], **settings)
    picture = stylizer.run(content.clamp(0, 1), [blotches, dots]).tensor
    (left_a, left_b), (right_a, right_b) = region_distances(stylizer.vgg, picture, [blotches, dots])
    assert left_a < left_b and right_b < right_a, (left_a, left_b, right_a, right_b)
    swapped = Stylizer(style_masks=[1 - left, left], **settings)
    picture = swapped.run(content.clamp(0, 1), [blotches, dots]).tensor
    (left_a, left_b), (right_a, right_b) = region_distances(stylizer.vgg, picture, [blotches, dots])
    assert left_b < left_a and right_a < right_b, (left_a, left_b, right_a, right_b)


@pytest.mark.parametrize("style_loss", ["gram", "sliced"])
def test_style_image_masks_choose_the_source(seed, style_loss):
    """One style image holding both textures side by side; its style-image masks pick the part
    that styles each region of the picture (the sky of a painting for the sky of the photo).
    A fresh draw of the textures each time: before L-BFGS's steps were bounded, some draws threw
    the picture out of [0, 1] in the 64 px stage (BENCHMARKS.md, "L-BFGS's longest step")."""
    content, styles, (blotches, dots), options = source_masked_setting(seed)
    stylizer = Stylizer(**options, style_loss=style_loss)
    picture = stylizer.run(content, styles).tensor
    (left_a, left_b), (right_a, right_b) = region_distances(stylizer.vgg, picture, [blotches, dots])
    assert left_b < left_a and right_a < right_b, (left_a, left_b, right_a, right_b)


def test_masks_are_checked_before_any_work():
    content, style = torch.rand(3, 40, 60), torch.rand(3, 32, 32)
    cases = [
        (dict(style_masks=[torch.ones(40, 60)] * 2), OptionError, r"2 style masks given for 1 style image"),
        (dict(style_masks=[torch.zeros(40, 60)]), OptionError, r"style mask 1 is black everywhere"),
        (
            dict(style_masks=[torch.ones(60, 40)]),
            ImageError,
            r"style mask 1 is 40x60 pixels but the content image is 60x40",
        ),
        (dict(content_mask=torch.ones(10, 10)), ImageError, r"content mask is 10x10 pixels"),
        (
            dict(style_image_masks=[torch.ones(40, 60)]),
            ImageError,
            r"style image mask 1 is 60x40 pixels but style image 1",
        ),
        (dict(style_masks="sky.png"), OptionError, r"style_masks must be a list of masks"),
        (dict(mask_dilation=-1), OptionError, r"mask_dilation must be a whole number"),
    ]
    for options, error, message in cases:
        with pytest.raises(error, match=message):
            Stylizer(size=32, steps=1, device="cpu", **options).run(content, style)


def test_command_line_with_masks(tmp_path):
    from nst_ext.io.images import save_image

    content, sky, street = tmp_path / "city.png", tmp_path / "sky_style.png", tmp_path / "street_style.png"
    save_image(torch.rand(3, 48, 64), content)
    save_image(torch.rand(3, 32, 32), sky)
    save_image(torch.rand(3, 32, 32), street)
    top = torch.zeros(3, 48, 64)
    top[:, :24] = 1
    save_image(top, tmp_path / "sky.png")
    save_image(1 - top, tmp_path / "street.png")
    out = tmp_path / "out.png"
    command = [
        sys.executable,
        "-m",
        "nst_ext",
        "stylize",
        str(content),
        str(sky),
        str(street),
        "--style-masks",
        str(tmp_path / "sky.png"),
        str(tmp_path / "street.png"),
        "--content-mask",
        str(tmp_path / "street.png"),
        "--size",
        "48",
        "--steps",
        "2",
        "-o",
        str(out),
        "--quiet",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert Image.open(out).size == (48, 36)
    one_mask = command[: command.index("--style-masks") + 2] + [
        "--size",
        "48",
        "--steps",
        "2",
        "-o",
        str(tmp_path / "o2.png"),
    ]
    result = subprocess.run(one_mask, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "1 style masks given for 2 style image(s)" in result.stderr
    assert "Traceback" not in result.stderr
    onto_a_mask = command[: command.index("-o")] + ["-o", str(tmp_path / "street.png"), "--overwrite"]
    result = subprocess.run(onto_a_mask, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "is one of this run's inputs" in result.stderr  # a mask is never replaced
