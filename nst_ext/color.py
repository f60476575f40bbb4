"""Colour control from Gatys et al. 2017, "Controlling Perceptual Factors in
Neural Style Transfer": luminance-only transfer and colour-histogram matching.
Images are float ``(3, H, W)`` RGB in [0, 1].
"""

import torch

# RGB -> YIQ (NTSC); Y is luminance, I and Q carry the colour.
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def rgb_to_yiq(image: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,jhw->ihw", _RGB_TO_YIQ.to(image), image)


def yiq_to_rgb(image: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,jhw->ihw", torch.linalg.inv(_RGB_TO_YIQ.double()).to(image), image)


def luminance(image: torch.Tensor) -> torch.Tensor:
    """Luminance ``(H, W)``."""
    return rgb_to_yiq(image)[0]


def as_gray_rgb(luma: torch.Tensor) -> torch.Tensor:
    return luma.clamp(0, 1).unsqueeze(0).repeat(3, 1, 1)


def match_luminance(style: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """The style's luminance, shifted and scaled to the content luminance's mean
    and standard deviation, as a gray RGB image (Gatys et al. 2017, eq. 5)."""
    style_luma, content_luma = luminance(style), luminance(content)
    scale = content_luma.std() / style_luma.std().clamp_min(1e-6)
    return as_gray_rgb((style_luma - style_luma.mean()) * scale + content_luma.mean())


def combine_luminance(stylized: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """The stylized image's luminance with the content's colour (I, Q channels)."""
    yiq = rgb_to_yiq(content)
    yiq[0] = luminance(stylized)
    return yiq_to_rgb(yiq).clamp(0, 1)


def _symmetric_power(matrix: torch.Tensor, power: float) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return vectors @ torch.diag(values.clamp_min(1e-8) ** power) @ vectors.T


def match_color_histogram(style: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """The style image recoloured so its pixels' mean and covariance equal the
    content's: x' = Σc^½ Σs^-½ (x − μs) + μc (Gatys et al. 2017, colour
    histogram matching with the symmetric matrix square root)."""
    style_pixels = style.reshape(3, -1).double()
    content_pixels = content.reshape(3, -1).double()
    style_mean, content_mean = style_pixels.mean(1, keepdim=True), content_pixels.mean(1, keepdim=True)
    style_cov = torch.cov(style_pixels) + 1e-5 * torch.eye(3, dtype=torch.float64)
    content_cov = torch.cov(content_pixels) + 1e-5 * torch.eye(3, dtype=torch.float64)
    transform = _symmetric_power(content_cov, 0.5) @ _symmetric_power(style_cov, -0.5)
    matched = transform @ (style_pixels - style_mean) + content_mean
    return matched.reshape(style.shape).to(style.dtype).clamp(0, 1)
