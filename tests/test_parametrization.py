"""nst_ext.parametrization: the Laplacian pyramid a stage may optimise instead of the pixels. Its
analysis and synthesis invert each other in float64 (odd sides, batches, non-contiguous pictures),
its gradient is the synthesis' adjoint (a dot-product test, gradcheck), a step along it moves large
structures more than fine ones; and runs with it (L-BFGS and Adam, batches, tiles, video frames),
the memory the plan counts for it and the option's checks."""

import pytest
import torch

from nst_ext.io.images import load_image
from nst_ext.parametrization import (
    PYRAMID_LEVEL_GAIN,
    PYRAMID_MAX_LEVELS,
    PYRAMID_MIN_SIDE,
    LaplacianPyramid,
    PyramidVariable,
    pyramid_shapes,
)
from nst_ext.plan.memory import PYRAMID_COEFFICIENTS_PER_PIXEL
from nst_ext.plan.options import OptionError
from nst_ext.stylizer import Stylizer

CONTENT = "nst_ext/data/astronaut.jpg"
STYLE = "nst_ext/data/swirls.jpg"


@pytest.mark.parametrize(
    "height, width", [(512, 512), (37, 129), (15, 300), (16, 16), (1001, 67)], ids=lambda v: str(v)
)
def test_each_level_halves_rounding_up_down_to_the_smallest_side(height, width):
    shapes = pyramid_shapes(height, width)
    assert shapes[0] == (height, width) and len(shapes) <= PYRAMID_MAX_LEVELS + 1
    for (h, w), (smaller_h, smaller_w) in zip(shapes, shapes[1:]):
        assert (smaller_h, smaller_w) == ((h + 1) // 2, (w + 1) // 2)
        assert min(smaller_h, smaller_w) >= PYRAMID_MIN_SIDE
    last_h, last_w = shapes[-1]
    assert len(shapes) == PYRAMID_MAX_LEVELS + 1 or min((last_h + 1) // 2, (last_w + 1) // 2) < PYRAMID_MIN_SIDE


@pytest.mark.parametrize("shape", [(1, 3, 64, 64), (2, 3, 37, 53), (1, 3, 97, 20), (3, 1, 130, 131)])
def test_synthesis_gives_back_the_picture_analysed(shape, device):
    generator = torch.Generator().manual_seed(sum(shape))
    image = torch.rand(shape, generator=generator, dtype=torch.float64).to(device)
    pyramid = LaplacianPyramid(shape)
    coefficients = pyramid.analyse(image)
    assert coefficients.shape == (pyramid.numel,) and coefficients.dtype == torch.float64
    assert coefficients.device == image.device
    torch.testing.assert_close(pyramid.synthesise(coefficients), image, rtol=0, atol=1e-12)
    pixels = image.numel()
    assert pixels <= pyramid.numel <= PYRAMID_COEFFICIENTS_PER_PIXEL * pixels * 1.1  # rounding up of odd sides


def test_a_non_contiguous_picture_is_analysed_as_its_contiguous_copy(device):
    image = torch.rand(1, 3, 41, 70, dtype=torch.float64, device=device).transpose(2, 3)
    assert not image.is_contiguous()
    pyramid = LaplacianPyramid(image.shape)
    torch.testing.assert_close(pyramid.analyse(image), pyramid.analyse(image.contiguous()), rtol=0, atol=0)
    torch.testing.assert_close(pyramid.synthesise(pyramid.analyse(image)), image, rtol=0, atol=1e-12)


def test_the_gradient_is_the_synthesis_adjoint(device):
    # <synthesise(c), g> == <c, gradient(c, g)> for any c and g: the synthesis is linear.
    generator = torch.Generator().manual_seed(11)
    shape = (2, 3, 45, 38)
    pyramid = LaplacianPyramid(shape)
    coefficients = torch.randn(pyramid.numel, generator=generator, dtype=torch.float64).to(device)
    image_gradient = torch.randn(shape, generator=generator, dtype=torch.float64).to(device)
    gradient = pyramid.gradient(coefficients, image_gradient)
    assert gradient.shape == coefficients.shape and not gradient.requires_grad
    left = (pyramid.synthesise(coefficients) * image_gradient).sum()
    torch.testing.assert_close(left, (coefficients * gradient).sum(), rtol=1e-12, atol=1e-12)
    small = LaplacianPyramid((1, 2, 33, 35))
    assert len(small.shapes) == 2
    start = torch.randn(small.numel, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(small.synthesise, (start,))


def test_a_step_along_the_coefficients_moves_large_structures_more_than_fine_ones(device):
    # A gradient step in pixels moves every frequency alike; through the pyramid the picture moves by
    # P Pᵀ g, which a smooth gradient (large structures) passes far more strongly than a checkerboard.
    shape = (1, 1, 128, 128)
    pyramid = LaplacianPyramid(shape)
    zero = torch.zeros(pyramid.numel, dtype=torch.float64, device=device)

    def gain(image_gradient):
        moved = pyramid.synthesise(pyramid.gradient(zero, image_gradient))
        return (moved.norm() / image_gradient.norm()).item()

    smooth = torch.ones(shape, dtype=torch.float64, device=device)
    rows, columns = torch.meshgrid(torch.arange(128, device=device), torch.arange(128, device=device), indexing="ij")
    checkerboard = ((rows + columns) % 2 * 2 - 1).to(torch.float64).view(shape)
    assert gain(checkerboard) < 1.5
    # A constant passes each level whole: level k gives it back (4 · gain²)^k times (the constant's docs).
    expected = sum((4 * PYRAMID_LEVEL_GAIN**2) ** k for k in range(len(pyramid.shapes)))
    assert gain(smooth) == pytest.approx(expected, rel=1e-9)
    assert gain(smooth) > 2.5 * gain(checkerboard)


def test_the_variable_writes_its_picture_and_takes_the_picture_s_gradient(device):
    image = torch.rand(1, 3, 40, 52, device=device, requires_grad=True)
    variable = PyramidVariable(image)
    assert variable.coefficients.is_leaf and variable.coefficients.requires_grad
    with torch.no_grad():
        variable.coefficients.mul_(0.5)
        expected = image.detach() * 0.5
    variable.write_image()
    torch.testing.assert_close(image.detach(), expected, rtol=0, atol=1e-6)
    image.grad = torch.randn_like(image)
    variable.take_gradient()
    torch.testing.assert_close(
        variable.coefficients.grad, variable.pyramid.gradient(variable.coefficients, image.grad), rtol=0, atol=0
    )
    image.grad = None
    with pytest.raises(RuntimeError, match="without a gradient"):
        variable.take_gradient()


def _run(**options):
    content, style = load_image(CONTENT), load_image(STYLE)
    stylizer = Stylizer(size=48, scales=[48], steps=12, device="cpu", **options)
    return stylizer.run(content, style)


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_a_run_through_the_pyramid_lowers_the_loss_and_differs_from_one_in_pixels(optimizer):
    extra = {"learning_rate": 0.05} if optimizer == "adam" else {}
    result = _run(parametrization="pyramid", optimizer=optimizer, **extra)
    pixels = _run(optimizer=optimizer, **extra)
    totals = [row["total"] for row in result.history]
    assert min(totals[1:]) < 0.8 * totals[0]
    assert result.tensor.shape == pixels.tensor.shape and torch.isfinite(result.tensor).all()
    assert (result.tensor - pixels.tensor).abs().mean() > 1e-3


def test_pictures_run_together_each_follow_their_own_pyramid():
    content, style = load_image(CONTENT), load_image(STYLE)
    stylizer = Stylizer(size=48, scales=[48], steps=10, device="cpu", parametrization="pyramid")
    together = stylizer.run_many([content, content.flip(-1)], style)
    alone = stylizer.run(content, style)
    assert len(together) == 2
    torch.testing.assert_close(together[0].tensor, alone.tensor, rtol=0, atol=2e-3)
    assert (together[0].tensor - together[1].tensor.flip(-1)).abs().mean() > 0  # their own pictures


def test_a_tiled_run_through_the_pyramid_matches_the_whole_one():
    # As tests/test_tiles.py holds pixels: the same loss evaluated in tiles, the pictures within 1/255.
    content, style = load_image(CONTENT), load_image(STYLE)
    options = dict(scales=[40, 72], steps=[4, 4], device="cpu", parametrization="pyramid")
    whole = Stylizer(**options).run(content, style).tensor
    tiled = Stylizer(tile=32, **options).run(content, style).tensor
    assert (tiled - whole).abs().mean() < 1 / 255
    assert (whole - Stylizer(**{**options, "parametrization": "pixels"}).run(content, style).tensor).abs().mean() > 1e-3


def test_the_plan_counts_the_coefficients_and_the_picture_beside_them():
    shape = (96, 128)
    plain = Stylizer(size=128).plan(shape, [shape]).stages[-1].memory
    pyramid = Stylizer(size=128, parametrization="pyramid").plan(shape, [shape]).stages[-1].memory
    pixels = 3 * 96 * 128
    assert pyramid.held_images - plain.held_images == 2 * pixels * 4
    assert pyramid.history / plain.history == pytest.approx(PYRAMID_COEFFICIENTS_PER_PIXEL, rel=1e-3)


@pytest.mark.parametrize("bad", ["laplacian", None, 1])
def test_parametrization_is_one_of_the_named(bad):
    with pytest.raises(OptionError, match="parametrization must be one of pixels, pyramid"):
        Stylizer(size=48, parametrization=bad)
