"""A yardstick built apart from every loss nst_ext optimises: no VGG, no Gram matrix, no network at all.

Every VGG measure (nst_ext.metrics) shares the network the style loss optimises, so it cannot tell
"more style" from "more of what the loss itself counts". This judge describes a picture's texture by
statistics in the manner of Portilla & Simoncelli (2000), on its own filters: the luminance's pixel
moments; per scale of a 4-scale pyramid and per orientation of 4 complex Gabor filters, the local
energy's (the magnitude's) mean, spread and spatial autocorrelation, the real part's kurtosis, the
energies' correlation across orientations and across neighbouring scales; and the colours' moments in
CIE Lab. Layout is the correlation of heavily blurred luminance with the content's.

- :func:`texture_gap`: per statistic, ``|s(x) − s(style)| / |s(content) − s(style)|``, the median over the
  statistics where content and style differ: 1 is the content's texture, 0 the style's.
- :func:`colour_gap`: the same over the Lab moments alone.
- :func:`layout`: 1 is the content's layout, 0 none of it.

Every picture is ``(3, H, W)`` float in [0, 1] and is judged at :data:`WIDTH` pixels wide, float64 on
the CPU: slow enough not to matter beside a run, exact enough to repeat.
"""

from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F

from nst_ext.io.images import resize, resize_to_width

WIDTH = 256  # every picture judged at this width (as nst_ext.metrics.INDEPENDENT_WIDTH)
SCALES = 4
ORIENTATIONS = 4
GABOR_PERIOD = 4.0  # pixels per cycle at each scale: the pyramid halves the picture between scales
GABOR_SIGMA = 2.0
AUTOCORRELATION_LAGS = (2, 4)
LAYOUT_BLUR = 1 / 16  # the layout's blur: this share of the picture's width (sigma)
# A statistic counts toward a gap only where content and style differ by more than this share of
# their magnitudes (two crops of one texture differ by about that much).
DIFFERENCE_FLOOR = 0.05
# ... and, for the colour moments, by more than this much at least: a Lab mean or spread within a
# unit (a just noticeable difference is about 2.3) or a correlation within 0.05 is the same colour.
# Without it two greyish pictures, both near a = b = 0, made that statistic's tiny difference the
# denominator, and a gap of 10^5.
COLOUR_MOMENT_FLOOR, COLOUR_CORRELATION_FLOOR = 1.0, 0.05


@dataclass(frozen=True)
class Statistics:
    """A picture's texture statistics (``texture``, luminance and oriented energy) and colour
    statistics (``colour``, Lab moments), each a float64 vector with named entries (``names``)."""

    texture: torch.Tensor
    colour: torch.Tensor
    texture_names: List[str]
    colour_names: List[str]


def _at_width(image: torch.Tensor, width: int = WIDTH) -> torch.Tensor:
    """`image` as judged: `width` columns (at least 8 rows), float64 on the CPU."""
    return resize_to_width(image.detach().float().cpu().clamp(0, 1), width, shortest=8).double()


def _luminance(rgb: torch.Tensor) -> torch.Tensor:
    """Rec. 709 luma of linear-ish RGB, ``(H, W)``."""
    return 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]


def _lab(rgb: torch.Tensor) -> torch.Tensor:
    """CIE Lab (D65) of sRGB ``(3, H, W)`` in [0, 1]: ``(3, H, W)``, L in [0, 100]."""
    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    matrix = rgb.new_tensor(
        [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]
    )
    xyz = torch.einsum("ij,jhw->ihw", matrix, linear) / rgb.new_tensor([0.95047, 1.0, 1.08883]).view(3, 1, 1)
    f = torch.where(xyz > (6 / 29) ** 3, xyz ** (1 / 3), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return torch.stack([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def _moments(values: torch.Tensor) -> List[float]:
    """Mean, standard deviation, skewness and excess kurtosis of `values` (any shape)."""
    flat = values.flatten()
    mean = flat.mean()
    centred = flat - mean
    std = centred.square().mean().sqrt()
    if std < 1e-12:
        return [float(mean), 0.0, 0.0, 0.0]
    return [
        float(mean),
        float(std),
        float((centred / std).pow(3).mean()),
        float((centred / std).pow(4).mean() - 3),
    ]


def _gabor_bank(dtype: torch.dtype) -> torch.Tensor:
    """``ORIENTATIONS`` complex Gabor filters as ``(2·ORIENTATIONS, 1, k, k)`` (real parts, then
    imaginary), each real part of zero mean (no response to flat areas)."""
    radius = int(3 * GABOR_SIGMA)
    axis = torch.arange(-radius, radius + 1, dtype=dtype)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    envelope = torch.exp(-(x.square() + y.square()) / (2 * GABOR_SIGMA**2))
    real, imaginary = [], []
    for index in range(ORIENTATIONS):
        angle = torch.tensor(torch.pi * index / ORIENTATIONS, dtype=dtype)
        phase = 2 * torch.pi * (x * torch.cos(angle) + y * torch.sin(angle)) / GABOR_PERIOD
        even, odd = envelope * torch.cos(phase), envelope * torch.sin(phase)
        even = even - envelope * (even.sum() / envelope.sum())
        norm = (even.square().sum() + odd.square().sum()).sqrt()
        real.append(even / norm)
        imaginary.append(odd / norm)
    return torch.stack(real + imaginary).unsqueeze(1)


def _downsample(image: torch.Tensor) -> torch.Tensor:
    """`image` ``(1, 1, H, W)`` blurred (binomial 5-tap) and halved."""
    taps = image.new_tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16
    kernel = (taps[:, None] * taps[None, :]).view(1, 1, 5, 5)
    return F.conv2d(F.pad(image, (2, 2, 2, 2), mode="replicate"), kernel, stride=2)


def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    denominator = (a.square().sum() * b.square().sum()).sqrt()
    return float((a * b).sum() / denominator) if denominator > 1e-12 else 0.0


def _autocorrelation(values: torch.Tensor, lag: int, dimension: int) -> float:
    """The correlation of `values` ``(H, W)`` with itself shifted by `lag` along `dimension`."""
    length = values.shape[dimension]
    if lag >= length:
        return 0.0
    return _correlation(values.narrow(dimension, 0, length - lag), values.narrow(dimension, lag, length - lag))


def statistics(image: torch.Tensor) -> Statistics:
    """The texture and colour statistics of `image` ``(3, H, W)`` in [0, 1] (judged at WIDTH)."""
    rgb = _at_width(image)
    luminance = _luminance(rgb)
    texture: Dict[str, float] = {}
    for name, value in zip(("mean", "std", "skew", "kurtosis"), _moments(luminance)):
        texture[f"luminance {name}"] = value
    bank = _gabor_bank(rgb.dtype)
    level = luminance[None, None]
    previous = None
    for scale in range(SCALES):
        # Replicated edges work at any size, so every picture has every scale (and one vector length).
        padded = F.pad(level, (bank.shape[-1] // 2,) * 4, mode="replicate")
        response = F.conv2d(padded, bank)[0]
        real, imaginary = response[:ORIENTATIONS], response[ORIENTATIONS:]
        magnitude = (real.square() + imaginary.square()).sqrt()
        level_energy = float(magnitude.mean()) + 1e-12
        for orientation in range(ORIENTATIONS):
            band, where = magnitude[orientation], f"scale {scale} orientation {orientation}"
            mean, std, _, _ = _moments(band)
            texture[f"{where} energy"] = mean
            texture[f"{where} energy spread"] = std / (mean + 1e-12)
            texture[f"{where} kurtosis"] = _moments(real[orientation])[3]
            texture[f"{where} share"] = mean / (ORIENTATIONS * level_energy)
        energy = magnitude.mean(0)
        for lag in AUTOCORRELATION_LAGS:
            texture[f"scale {scale} autocorrelation x{lag}"] = _autocorrelation(energy, lag, 1)
            texture[f"scale {scale} autocorrelation y{lag}"] = _autocorrelation(energy, lag, 0)
        for first in range(ORIENTATIONS):
            for second in range(first + 1, ORIENTATIONS):
                texture[f"scale {scale} orientations {first}-{second}"] = _correlation(
                    magnitude[first], magnitude[second]
                )
        if previous is not None:
            coarse = F.interpolate(magnitude[None], size=previous.shape[-2:], mode="bilinear", align_corners=False)[0]
            for orientation in range(ORIENTATIONS):
                texture[f"scales {scale - 1}-{scale} orientation {orientation}"] = _correlation(
                    previous[orientation], coarse[orientation]
                )
        previous = magnitude
        level = _downsample(level)
    lab = _lab(rgb)
    colour: Dict[str, float] = {}
    for channel, name in enumerate("Lab"):
        colour[f"{name} mean"], colour[f"{name} std"] = _moments(lab[channel])[:2]
    for first, second in ((0, 1), (0, 2), (1, 2)):
        colour[f"{'Lab'[first]}{'Lab'[second]} correlation"] = _correlation(lab[first], lab[second])
    return Statistics(
        texture=torch.tensor(list(texture.values()), dtype=torch.float64),
        colour=torch.tensor(list(colour.values()), dtype=torch.float64),
        texture_names=list(texture),
        colour_names=list(colour),
    )


def _gap(picture: torch.Tensor, content: torch.Tensor, style: torch.Tensor, floor=0.0) -> float:
    """The median over the statistics where content and style differ (by DIFFERENCE_FLOOR of their
    magnitudes, and by `floor`: a number or a tensor like them) of ``|picture − style| /
    |content − style|``: 1 at the content, 0 at the style."""
    spread = (content - style).abs()
    differ = (spread > DIFFERENCE_FLOOR * (content.abs() + style.abs()) / 2 + 1e-9) & (spread > floor)
    if not bool(differ.any()):
        return 0.0
    return float(((picture - style).abs()[differ] / spread[differ]).median())


def gaps(image: torch.Tensor, content: torch.Tensor, style: torch.Tensor) -> Tuple[float, float]:
    """(:func:`texture_gap`, :func:`colour_gap`) from one pass of :func:`statistics` per picture."""
    own, of_content, of_style = statistics(image), statistics(content), statistics(style)
    colour_floor = torch.tensor(
        [
            COLOUR_CORRELATION_FLOOR if name.endswith("correlation") else COLOUR_MOMENT_FLOOR
            for name in own.colour_names
        ],
        dtype=torch.float64,
    )
    return (
        _gap(own.texture, of_content.texture, of_style.texture),
        _gap(own.colour, of_content.colour, of_style.colour, colour_floor),
    )


def texture_gap(image: torch.Tensor, content: torch.Tensor, style: torch.Tensor) -> float:
    """How far `image`'s texture is from the style's, as a share of the content's distance from it
    (1: the content's texture; 0: the style's). Each ``(3, H, W)`` in [0, 1]."""
    return gaps(image, content, style)[0]


def colour_gap(image: torch.Tensor, content: torch.Tensor, style: torch.Tensor) -> float:
    """:func:`texture_gap` over the colours' Lab moments alone."""
    return gaps(image, content, style)[1]


def layout(image: torch.Tensor, content: torch.Tensor) -> float:
    """How much of the content's layout `image` keeps: the correlation of their luminances blurred by
    a Gaussian of LAYOUT_BLUR of the width (texture averages out, the arrangement of light and dark
    stays), at the content's aspect ratio. 1: the content's layout; 0: none of it."""
    reference = _at_width(content)
    picture = resize(_at_width(image).float(), tuple(reference.shape[-2:])).double()
    sigma = LAYOUT_BLUR * reference.shape[-1]
    radius = int(3 * sigma)
    axis = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-axis.square() / (2 * sigma**2))
    taps = taps / taps.sum()

    def blurred(rgb: torch.Tensor) -> torch.Tensor:
        y = _luminance(rgb)[None, None]
        y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="replicate"), taps.view(1, 1, 1, -1))
        return F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"), taps.view(1, 1, -1, 1))[0, 0]

    return _correlation(blurred(picture), blurred(reference))
