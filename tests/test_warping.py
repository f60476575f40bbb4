"""nst_ext.jobs.warping: a known shift warps exactly by every kernel and dtype, the spline reads a
smooth picture between pixels closer than bicubic and passes through every pixel, sharp kernels
stay in the picture's range."""

import pytest
import torch

from nst_ext.jobs import warping


def constant_flow(dx, dy, height, width):
    return torch.tensor([dx, dy], dtype=torch.float32)[:, None, None].expand(2, height, width).clone()


@pytest.mark.parametrize("mode", warping.WARP_MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_known_shift_warps_exactly(mode, dtype):
    image = torch.rand(3, 13, 17, dtype=dtype)
    warped = warping.warp(image, constant_flow(2, -1, 13, 17), mode=mode)
    assert warped.dtype == dtype and warped.shape == image.shape
    # warped(y, x) = image(y - 1, x + 2) wherever that pixel exists
    torch.testing.assert_close(warped[:, 1:, :-2], image[:, :-1, 2:], atol=1e-5, rtol=0)
    inside = warping.inside(constant_flow(2, -1, 13, 17))
    assert inside[1:, :-2].all() and not inside[0].any() and not inside[:, -2:].any()


def test_a_zero_flow_copies_the_image_and_a_half_pixel_shift_interpolates():
    image = torch.rand(3, 9, 11)
    assert torch.equal(warping.warp(image, torch.zeros(2, 9, 11)), image)
    half = warping.warp(image, constant_flow(0.5, 0, 9, 11), mode="bilinear")
    torch.testing.assert_close(half[:, :, :-1], (image[:, :, :-1] + image[:, :, 1:]) / 2)


@pytest.mark.parametrize("mode", ["spline", "bicubic"])
def test_sharp_kernels_stay_in_the_image_range(mode):
    image = (torch.rand(3, 20, 20) > 0.5).float()  # hard edges: both kernels would overshoot
    warped = warping.warp(image, constant_flow(0.3, 0.7, 20, 20), mode=mode)
    assert warped.min() >= 0 and warped.max() <= 1


def smooth_pattern(x, y):
    return torch.stack([torch.sin(0.35 * x) * torch.cos(0.2 * y), torch.cos(0.25 * x + 0.3 * y), torch.sin(0.4 * y)])


@pytest.mark.parametrize("height, width", [(31, 45), (40, 27)])
def test_the_spline_warp_reads_a_smooth_picture_between_pixels_closer_than_bicubic(height, width):
    # A picture sampled from a smooth function, read at fresh random sub-pixel positions (a zoom's
    # flow): the spline's values lie within a few thousandths of the function, several times closer
    # than bicubic's (which blurs; BENCHMARKS.md, "Video"). The border's 3 pixels are left out
    # (the kernels' supports reach past it).
    generator = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij"
    )
    image = (smooth_pattern(xs, ys) + 1) / 2
    moved = torch.rand(2, height, width, generator=generator, dtype=torch.float64) * 2 - 1
    truth = (smooth_pattern(xs + moved[0], ys + moved[1]) + 1) / 2
    inner = (slice(None), slice(3, -3), slice(3, -3))
    error = {
        mode: float((warping.warp(image, moved, mode=mode) - truth)[inner].abs().max()) for mode in warping.WARP_MODES
    }
    assert error["spline"] < 0.005 and error["spline"] < error["bicubic"] / 3, error


def test_the_spline_passes_through_every_pixel_of_a_non_contiguous_picture_with_a_one_pixel_side():
    image = torch.rand(5, 3, 9, dtype=torch.float64).permute(1, 0, 2)  # (3, 5, 9), not contiguous
    tiny = 1e-7  # a flow that is not exactly 0, so the spline is read
    torch.testing.assert_close(warping.warp(image, torch.full((2, 5, 9), tiny)), image, atol=1e-5, rtol=0)
    row = torch.rand(3, 1, 7)
    torch.testing.assert_close(
        warping.warp(row, constant_flow(1, 0, 1, 7))[:, :, :-1], row[:, :, 1:], atol=1e-5, rtol=0
    )


def test_an_unknown_warp_mode_is_refused():
    with pytest.raises(ValueError, match="warp mode"):
        warping.warp(torch.rand(3, 4, 4), torch.zeros(2, 4, 4), mode="nearest")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_warped_frame_takes_the_input_s_change_of_light_and_nothing_of_its_texture(dtype):
    # The input darkened by a smooth ramp (a passing shadow) over a fresh random texture: the warped
    # stylized frame takes the ramp where it is trusted and spread from there where it is not, not
    # the input's texture; an input that did not change leaves it exactly as it was.
    generator = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    height, width = 23, 31
    stylized = 0.2 + 0.6 * torch.rand(3, height, width, generator=generator, dtype=dtype)
    earlier = torch.rand(3, height, width, generator=generator, dtype=dtype)
    shadow = -0.1 * torch.linspace(0, 1, width, dtype=dtype).expand(3, height, width)
    trusted = torch.ones(height, width, dtype=torch.bool)
    trusted[8:14, 10:16] = False  # uncovered: its own change is not light
    current = earlier + shadow
    current[:, 8:14, 10:16] = torch.rand(3, 6, 6, generator=generator, dtype=dtype)
    lit = warping.relit(stylized, current, earlier, trusted)
    assert lit.shape == (3, height, width) and lit.dtype == torch.float32
    change = lit - stylized.float()
    inner = (slice(None), slice(None), slice(12, -12))  # the Gaussian reads the shadow's ends lopsidedly
    torch.testing.assert_close(
        change[inner][:, trusted[:, 12:-12]], shadow.float()[inner][:, trusted[:, 12:-12]], atol=4e-3, rtol=0
    )
    assert (change[:, 8:14, 10:16] - shadow.float()[:, 8:14, 10:16]).abs().max() < 0.01  # spread, not the texture
    assert warping.relit(stylized, earlier, earlier, trusted) is stylized
