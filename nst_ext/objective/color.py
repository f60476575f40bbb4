"""Colour control from Gatys et al. 2017, "Controlling Perceptual Factors in Neural Style
Transfer": luminance-only transfer (in a choice of colour spaces) and colour transfer of the style
image to the content's colours before stylizing (linear, by the pixels' mean and covariance, or
channel by channel by their histograms). Images are float ``(3, H, W)`` RGB in [0, 1].
"""

import torch

from nst_ext.plan.validation import COLOR_TRANSFERS

# RGB -> YUV (BT.601). Y is the luminance; YIQ, the space of the paper, has the same Y and its
# chroma axes only rotated, so a luminance transfer in either gives the same picture (tested).
_RGB_TO_YUV = torch.tensor(
    [[0.299, 0.587, 0.114], [-0.14713, -0.28886, 0.436], [0.615, -0.51499, -0.10001]], dtype=torch.float64
)
# Linear sRGB -> CIE XYZ (D65), and the D65 white point.
_LINEAR_RGB_TO_XYZ = torch.tensor(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]],
    dtype=torch.float64,
)
_D65 = torch.tensor([0.95047, 1.0, 1.08883], dtype=torch.float64)
_LAB_EPSILON, _LAB_KAPPA = 216 / 24389, 24389 / 27


def _apply(matrix: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,jhw->ihw", matrix.to(image), image)


def rgb_to_yuv(image: torch.Tensor) -> torch.Tensor:
    return _apply(_RGB_TO_YUV, image)


def yuv_to_rgb(image: torch.Tensor) -> torch.Tensor:
    return _apply(torch.linalg.inv(_RGB_TO_YUV), image)


def rgb_to_lab(image: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] -> CIE L*a*b* (D65): L* in [0, 100]."""
    x = image.double()
    linear = torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)
    xyz = _apply(_LINEAR_RGB_TO_XYZ, linear) / _D65[:, None, None]
    f = torch.where(xyz > _LAB_EPSILON, xyz.clamp_min(1e-12) ** (1 / 3), (_LAB_KAPPA * xyz + 16) / 116)
    lab = torch.stack([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])
    return lab.to(image.dtype)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIE L*a*b* (D65) -> sRGB, not clamped."""
    L, a, b = lab.double()
    fy = (L + 16) / 116
    f = torch.stack([fy + a / 500, fy, fy - b / 200])
    xyz = torch.where(f**3 > _LAB_EPSILON, f**3, (116 * f - 16) / _LAB_KAPPA) * _D65[:, None, None]
    linear = _apply(torch.linalg.inv(_LINEAR_RGB_TO_XYZ), xyz)
    rgb = torch.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear.clamp_min(0) ** (1 / 2.4) - 0.055)
    return rgb.to(lab.dtype)


def luminance(image: torch.Tensor, space: str = "yuv") -> torch.Tensor:
    """The luminance ``(H, W)`` in [0, 1]: Y of YUV, or L*/100 of L*a*b*."""
    if space == "lab":
        return rgb_to_lab(image)[0] / 100
    return rgb_to_yuv(image)[0]


def as_gray_rgb(luma: torch.Tensor, space: str = "yuv") -> torch.Tensor:
    """A gray RGB image whose luminance (in `space`) is `luma` ``(H, W)``."""
    if space == "lab":
        lab = torch.stack([luma.clamp(0, 1) * 100, torch.zeros_like(luma), torch.zeros_like(luma)])
        return lab_to_rgb(lab).clamp(0, 1)
    return luma.clamp(0, 1).unsqueeze(0).repeat(3, 1, 1)


def match_luminance(style: torch.Tensor, content: torch.Tensor, space: str = "yuv") -> torch.Tensor:
    """The style's luminance, shifted and scaled to the content luminance's mean
    and standard deviation, as a gray RGB image (Gatys et al. 2017, eq. 5)."""
    style_luma, content_luma = luminance(style, space), luminance(content, space)
    scale = content_luma.std() / style_luma.std().clamp_min(1e-6)
    return as_gray_rgb((style_luma - style_luma.mean()) * scale + content_luma.mean(), space)


def combine_luminance(stylized: torch.Tensor, content: torch.Tensor, space: str = "yuv") -> torch.Tensor:
    """The stylized image's luminance with the content's colour (U, V or a*, b*)."""
    if space == "lab":
        lab = rgb_to_lab(content)
        lab[0] = rgb_to_lab(stylized)[0]
        return lab_to_rgb(lab).clamp(0, 1)
    yuv = rgb_to_yuv(content)
    yuv[0] = luminance(stylized)
    return yuv_to_rgb(yuv).clamp(0, 1)


def _symmetric_power(matrix: torch.Tensor, power: float) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return vectors @ torch.diag(values.clamp_min(1e-8) ** power) @ vectors.T


def transfer_color(style: torch.Tensor, content: torch.Tensor, mode: str = "pca") -> torch.Tensor:
    """The style image recoloured to the content's colours (Gatys et al. 2017, colour matching):

    - ``pca``: x' = Σc^½ Σs^-½ (x − μs) + μc, symmetric matrix square roots (the paper's choice);
    - ``cholesky``: x' = Lc Ls⁻¹ (x − μs) + μc with the Cholesky factors Σ = L Lᵀ;
    - ``histogram``: each channel's values mapped onto the content's by rank (exact histogram
      matching; the channels' correlations are not matched).

    The linear modes make the pixels' mean and covariance the content's; they differ in the
    rotation they allow. Returns ``(3, H, W)`` in [0, 1] of the style's dtype.
    """
    if mode not in COLOR_TRANSFERS:
        raise ValueError(f"colour transfer must be one of {', '.join(COLOR_TRANSFERS)}, got {mode!r}")
    style_pixels = style.reshape(3, -1).double()
    content_pixels = content.reshape(3, -1).double()
    if mode == "histogram":
        ranks = style_pixels.argsort(dim=1).argsort(dim=1).double()
        # Rank r of n style pixels takes the content's quantile (r + ½) / n.
        quantiles = (ranks + 0.5) / style_pixels.shape[1]
        content_sorted = content_pixels.sort(dim=1).values
        positions = quantiles * content_sorted.shape[1] - 0.5
        low = positions.floor().clamp(0, content_sorted.shape[1] - 1).long()
        high = (low + 1).clamp(max=content_sorted.shape[1] - 1)
        fraction = (positions - low.double()).clamp(0, 1)
        matched = (
            torch.gather(content_sorted, 1, low) * (1 - fraction) + torch.gather(content_sorted, 1, high) * fraction
        )
        return matched.reshape(style.shape).to(style.dtype).clamp(0, 1)
    identity = 1e-5 * torch.eye(3, dtype=torch.float64)
    style_mean, content_mean = style_pixels.mean(1, keepdim=True), content_pixels.mean(1, keepdim=True)
    style_cov = torch.cov(style_pixels) + identity
    content_cov = torch.cov(content_pixels) + identity
    if mode == "pca":
        transform = _symmetric_power(content_cov, 0.5) @ _symmetric_power(style_cov, -0.5)
    else:
        transform = torch.linalg.cholesky(content_cov) @ torch.linalg.inv(torch.linalg.cholesky(style_cov))
    matched = transform @ (style_pixels - style_mean) + content_mean
    return matched.reshape(style.shape).to(style.dtype).clamp(0, 1)
