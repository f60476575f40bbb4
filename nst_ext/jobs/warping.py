"""Reading a picture where a flow points: each pixel p of the result is the picture at p + flow(p)
(the flow as in nst_ext.jobs.flow: ``(2, H, W)`` float32 (x, y) pixels, read backward), by a cubic
B-spline (the default), bicubic or bilinear interpolation; whether that read lies inside the frame;
and a warped stylized frame given the light of the current input frame (:func:`relit`). Torch
operations, on the picture's device: the video job warps stylized frames where it optimises them.
"""

import torch
import torch.nn.functional as F


def _read_at(flow: torch.Tensor):
    """(x, y), each ``(H, W)`` in the flow's dtype: where each pixel p reads, p + flow(p) in pixels."""
    _, height, width = flow.shape
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=flow.dtype, device=flow.device),
        torch.arange(width, dtype=flow.dtype, device=flow.device),
        indexing="ij",
    )
    return xs + flow[0], ys + flow[1]


def sampling_grid(flow: torch.Tensor) -> torch.Tensor:
    """(1, H, W, 2) grid for grid_sample (align_corners=True) reading each pixel p at p + flow(p)."""
    _, height, width = flow.shape
    x, y = _read_at(flow)
    return torch.stack([x * (2.0 / max(1, width - 1)) - 1.0, y * (2.0 / max(1, height - 1)) - 1.0], dim=-1)[None]


def inside(flow: torch.Tensor) -> torch.Tensor:
    """(H, W) bool: whether p + flow(p) lies inside the frame (the warped value exists)."""
    _, height, width = flow.shape
    x, y = _read_at(flow)
    return (x >= -0.5) & (x <= width - 0.5) & (y >= -0.5) & (y <= height - 0.5)


# The cubic B-spline's interpolating prefilter: the inverse of its sampled kernel (1, 4, 1) / 6,
# SPLINE_SCALE · SPLINE_POLE^|k|, cut where its taps fall below 1e-7 of the centre: an integer
# shift (a pan) then copies pixels to float32's precision.
SPLINE_POLE = 3**0.5 - 2
SPLINE_SCALE = 3**0.5
SPLINE_TAPS = 12
WARP_MODES = ("spline", "bicubic", "bilinear")


def _spline_coefficients(image: torch.Tensor) -> torch.Tensor:
    """The cubic B-spline coefficients ``(C, H, W)`` float32 of `image` ``(C, H, W)``: the spline
    through them passes through every pixel (the border mirrored beyond the picture)."""
    coefficients = image.float()
    for axis in (2, 1):
        side = coefficients.shape[axis]
        if side == 1:  # one pixel across: its own coefficient
            continue
        padded = _mirror(coefficients, axis, SPLINE_TAPS)
        filtered = SPLINE_SCALE * coefficients
        for tap in range(1, SPLINE_TAPS + 1):  # the filter is symmetric: both sides of each tap at once
            pair = padded.narrow(axis, SPLINE_TAPS - tap, side) + padded.narrow(axis, SPLINE_TAPS + tap, side)
            filtered.add_(pair, alpha=SPLINE_SCALE * SPLINE_POLE**tap)
        coefficients = filtered
    return coefficients


def _mirrored(index: torch.Tensor, side: int) -> torch.Tensor:
    """Integer pixel `index` (any shape, int64) reflected into 0 … `side` − 1 about the end pixels,
    repeatedly where it lies far outside: the spline's boundary."""
    if side == 1:
        return torch.zeros_like(index)
    period = 2 * (side - 1)
    index = index.remainder(period)
    return torch.where(index >= side, period - index, index)


def _mirror(image: torch.Tensor, axis: int, width: int) -> torch.Tensor:
    """`image` extended by `width` pixels at both ends of `axis`, mirrored about its end pixels."""
    side = image.shape[axis]
    return image.index_select(axis, _mirrored(torch.arange(-width, side + width, device=image.device), side))


def _spline_sample(coefficients: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The cubic B-spline of `coefficients` ``(C, H, W)`` at pixel positions `x`, `y` ``(H', W')``,
    positions outside the picture clamped to its border: ``(C, H', W')`` float32.

    The B-spline's four weights along an axis are all positive, so each pair of them is one
    bilinear read between the pair's pixels (Sigg & Hadwiger, GPU Gems 2, ch. 20): four bilinear
    reads in 2-D, mirrored at the border as the coefficients were."""
    _, height, width = coefficients.shape

    def pairs(position, side):  # per axis: the two pairs' weights and where each pair is read
        position = position.clamp(0, side - 1)
        start = position.floor()
        t = position - start
        w0, w1, w2, w3 = (
            (1 - t) ** 3 / 6,
            (3 * t**3 - 6 * t**2 + 4) / 6,
            (-3 * t**3 + 3 * t**2 + 3 * t + 1) / 6,
            t**3 / 6,
        )
        near, far = w0 + w1, w2 + w3
        at_near, at_far = start - 1 + w1 / near, start + 1 + w3 / far
        scale = 2.0 / max(1, side - 1)  # to grid_sample's [-1, 1] (align_corners=True)
        return (near, at_near * scale - 1), (far, at_far * scale - 1)

    result = torch.zeros(coefficients.shape[0], *x.shape, device=coefficients.device, dtype=torch.float32)
    for row_weight, row_at in pairs(y, height):
        for column_weight, column_at in pairs(x, width):
            grid = torch.stack([column_at, row_at], dim=-1)[None]
            read = F.grid_sample(
                coefficients[None], grid, mode="bilinear", padding_mode="reflection", align_corners=True
            )[0]
            result += (row_weight * column_weight) * read
    return result


def warp(image: torch.Tensor, flow: torch.Tensor, mode: str = "spline") -> torch.Tensor:
    """`image` ``(C, H, W)`` read at p + flow(p) for every pixel p (flow ``(2, H, W)``, module
    docstring), same dtype and device as `image`. Interpolated by a cubic B-spline by default:
    warping frame after frame softens a video's texture, bilinearly most, bicubically (Keys) still
    enough that the style loss repaints it and zooms shimmer (BENCHMARKS.md, "Video"); the spline
    passes through every pixel and keeps more of the finest texture. The spline and bicubic values
    are clamped to the image's own range (both overshoot at edges). Outside the frame the border is
    repeated (see :func:`inside`). Where the flow is exactly 0 the pixel is copied as it is."""
    if mode not in WARP_MODES:
        raise ValueError(f"warp mode must be one of {', '.join(WARP_MODES)}, got {mode!r}")
    flow = flow.to(device=image.device, dtype=torch.float32)
    if mode == "spline":
        warped = _spline_sample(_spline_coefficients(image), *_read_at(flow))
    else:
        warped = F.grid_sample(
            image[None].float(), sampling_grid(flow), mode=mode, padding_mode="border", align_corners=True
        )[0]
    if mode != "bilinear":
        warped = warped.clamp(float(image.min()), float(image.max()))
    still = (flow == 0).all(0)
    return torch.where(still[None], image.float(), warped).to(image.dtype)


# The input's own change between two frames, seen through the flow (a fade, a passing shadow, the
# exposure), blurred by a Gaussian of this many pixels (sigma) so that it carries light and not
# texture or the sensor's noise, is added to the warped stylized frame (:func:`relit`). Without it
# the temporal term held every trusted pixel to the earlier frame's light, and a fade to dark kept
# the first frame's brightness (BENCHMARKS.md, "Video").
LIGHT_BLUR = 4.0


def _blurred(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """`image` ``(C, H, W)`` blurred by a Gaussian of `sigma` pixels, the border repeated."""
    radius = max(1, int(3 * sigma))
    axis = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
    taps = torch.exp(-axis.square() / (2 * sigma**2))
    taps = taps / taps.sum()
    planes = image[:, None]
    planes = F.conv2d(F.pad(planes, (radius, radius, 0, 0), mode="replicate"), taps.view(1, 1, 1, -1))
    planes = F.conv2d(F.pad(planes, (0, 0, radius, radius), mode="replicate"), taps.view(1, 1, -1, 1))
    return planes[:, 0]


def relit(
    warped: torch.Tensor, current: torch.Tensor, earlier_warped: torch.Tensor, trusted: torch.Tensor
) -> torch.Tensor:
    """The stylized frame `warped` ``(3, H, W)`` (an earlier one, warped onto the current frame)
    given the light of the current input frame: plus the input's change from `earlier_warped` (the
    earlier input frame warped alike: :attr:`Consistency.earlier_warped`) to `current`, averaged
    over the `trusted` pixels ``(H, W)`` bool (the consistency check's: what a moving object
    uncovers is not a change of light) by a Gaussian of LIGHT_BLUR; clamped to [0, 1]. Input frames
    ``(3, H, W)`` in [0, 1]; float32 on `warped`'s device. Where the input did not change, `warped`
    itself."""
    change = current.float().to(warped.device) - earlier_warped.float().to(warped.device)
    weight = trusted.to(device=warped.device, dtype=torch.float32)[None]
    change = change * weight
    if not bool(change.any()):
        return warped
    spread, reach = _blurred(change, LIGHT_BLUR), _blurred(weight, LIGHT_BLUR)
    light = torch.where(reach > 1e-3, spread / reach.clamp_min(1e-3), torch.zeros_like(spread))
    return (warped.float() + light).clamp(0, 1)
