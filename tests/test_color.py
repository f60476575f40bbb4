"""Colour control (nst_ext.objective.color): the colour spaces against known values, the luminance
transfer, and each colour transfer's promise about the recoloured style."""

import pytest
import torch

from nst_ext.objective import color


def test_lab_known_values_and_round_trip(seed):
    white, red = torch.ones(3, 1, 1), torch.tensor([1.0, 0.0, 0.0]).reshape(3, 1, 1)
    torch.testing.assert_close(
        color.rgb_to_lab(white.double()).flatten(),
        torch.tensor([100.0, 0.0, 0.0], dtype=torch.float64),
        atol=1e-3,
        rtol=0,
    )
    # sRGB red in CIE L*a*b* (D65), as colour references give it.
    torch.testing.assert_close(
        color.rgb_to_lab(red.double()).flatten(),
        torch.tensor([53.24, 80.09, 67.20], dtype=torch.float64),
        atol=0.02,
        rtol=0,
    )
    image = torch.rand(3, 17, 23, dtype=torch.float64)
    torch.testing.assert_close(color.lab_to_rgb(color.rgb_to_lab(image)), image, atol=1e-9, rtol=0)
    torch.testing.assert_close(color.yuv_to_rgb(color.rgb_to_yuv(image)), image, atol=1e-12, rtol=0)


def test_yuv_luminance_transfer_is_the_papers_yiq(seed):
    """YIQ (the paper's space) has YUV's Y and rotated chroma axes: replacing Y in either gives the
    same picture, which is why `yuv` is the default and keeps the earlier behaviour."""
    stylized, content = torch.rand(3, 9, 11, dtype=torch.float64), torch.rand(3, 9, 11, dtype=torch.float64)
    rgb_to_yiq = torch.tensor(
        [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float64
    )
    yiq = torch.einsum("ij,jhw->ihw", rgb_to_yiq, content)
    yiq[0] = torch.einsum("j,jhw->hw", rgb_to_yiq[0], stylized)
    expected = torch.einsum("ij,jhw->ihw", torch.linalg.inv(rgb_to_yiq), yiq).clamp(0, 1)
    torch.testing.assert_close(color.combine_luminance(stylized, content, "yuv"), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("space", ["yuv", "lab"])
def test_combine_luminance_keeps_the_content_colour(seed, space):
    # Muted colours and mid luminances: every combination stays inside sRGB's gamut (outside it, the
    # clamp to [0, 1] moves the colour, as it must).
    stylized = torch.rand(3, 12, 10, dtype=torch.float64) * 0.2 + 0.4
    content = torch.rand(3, 12, 10, dtype=torch.float64) * 0.2 + 0.4
    combined = color.combine_luminance(stylized, content, space)
    torch.testing.assert_close(color.luminance(combined, space), color.luminance(stylized, space), atol=1e-6, rtol=0)
    if space == "lab":
        torch.testing.assert_close(color.rgb_to_lab(combined)[1:], color.rgb_to_lab(content)[1:], atol=1e-6, rtol=0)
    gray = color.as_gray_rgb(torch.full((4, 4), 0.3, dtype=torch.float64), space)
    torch.testing.assert_close(
        color.luminance(gray, space), torch.full((4, 4), 0.3, dtype=torch.float64), atol=1e-6, rtol=0
    )


@pytest.mark.parametrize("mode", ["pca", "cholesky"])
def test_linear_transfers_give_the_contents_mean_and_covariance(seed, mode):
    # Pictures well inside [0, 1], so the final clamp changes nothing.
    style = torch.randn(3, 40, 50, dtype=torch.float64) * 0.05 + torch.tensor([0.3, 0.5, 0.6]).double()[:, None, None]
    mixing = torch.tensor([[1.0, 0.3, 0.0], [0.2, 1.0, 0.1], [0.0, 0.4, 1.0]], dtype=torch.float64)
    content = torch.einsum("ij,jhw->ihw", mixing, torch.randn(3, 30, 20, dtype=torch.float64) * 0.04) + 0.5
    recoloured = color.transfer_color(style, content, mode)
    pixels, target = recoloured.reshape(3, -1), content.reshape(3, -1)
    torch.testing.assert_close(pixels.mean(1), target.mean(1), atol=1e-9, rtol=0)
    torch.testing.assert_close(torch.cov(pixels), torch.cov(target), atol=1e-5, rtol=1e-3)


def test_histogram_transfer_gives_each_channel_the_contents_distribution(seed):
    style, content = torch.rand(3, 40, 40, dtype=torch.float64), torch.rand(3, 40, 40, dtype=torch.float64) ** 3
    recoloured = color.transfer_color(style, content, "histogram")
    torch.testing.assert_close(recoloured.reshape(3, -1).sort(1).values, content.reshape(3, -1).sort(1).values)
    # The order of the style's own values is kept: its texture, the content's colours.
    assert torch.equal(recoloured.reshape(3, -1).argsort(1), style.reshape(3, -1).argsort(1))


def test_unknown_transfer_is_refused():
    with pytest.raises(ValueError, match="colour transfer must be one of pca, cholesky, histogram"):
        color.transfer_color(torch.rand(3, 4, 4), torch.rand(3, 4, 4), "sepia")
