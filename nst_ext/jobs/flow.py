"""Optical flow between video frames, and which pixels a warp by it can be trusted on: what the
video job needs to carry a stylized frame along with the scene (Ruder, Dosovitskiy & Brox, "Artistic
style transfer for videos", 2016, and the 2018 IJCV version); the warp itself is nst_ext.jobs.warping.

Frames are float32 tensors ``(3, H, W)`` in [0, 1]. A flow is a float32 tensor ``(2, H, W)`` of
(x, y) displacements in pixels, read backward: ``flow_between(frame, other)`` is the flow with
``frame(p) ≈ other(p + flow(p))`` for every pixel p of `frame`, so ``warp(other_stylized, flow)``
is `other`'s stylized frame moved onto `frame`. The flow is OpenCV's DIS (dense inverse search,
Kroeger et al. 2016), built into ``opencv-python-headless``: no model weights; where it agrees with
the camera's motion (a similarity fitted to it, then aligned on the frames themselves) it takes that
motion. About a tenth of a second a flow at 512 px (BENCHMARKS.md, "Video: optical flow").
"""

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from nst_ext.jobs.warping import inside, sampling_grid, warp

# DIS preset: "medium" follows known motion far better than "fast" and "ultrafast" at a cost that
# stays small beside a frame's optimisation (BENCHMARKS.md, "Video: optical flow").
DIS_PRESET = "medium"
DIS_MIN_SIDE = 12  # OpenCV's DIS refuses frames with both sides shorter
# A pixel is still when no channel changed by more than this between two input frames (values in
# [0, 1]); still_mask grows the moving ones by MOTION_MARGIN pixels so that the edges of moving
# things are free. For a flow, a still pixel ...
STILL_THRESHOLD = 0.03
MOTION_MARGIN = 2
# ... and its estimated flow lies within this many pixels of the camera's motion (0 for a still
# camera; STILL_FLOW_MOVING for a moving one): such a difference is DIS's noise, and resampling by
# it every frame would make the stylized texture there shimmer. The pixel takes the camera's motion.
# (With a moving camera "did not change" is after moving the other frame by the camera's motion.)
# DIS strays further from a moving camera's motion over flat areas, where any motion fits the
# frames (a zoom out over a sky); the tighter bound for a still camera keeps a small slow object
# its own motion (both measured: BENCHMARKS.md, "Video", and the notes it links).
STILL_FLOW, STILL_FLOW_MOVING = 0.5, 1.0
# The camera's motion: a similarity fitted (RANSAC, CAMERA_TOLERANCE pixels) to a sample of about
# CAMERA_SAMPLES of DIS's vectors, trusted when at least CAMERA_INLIERS of them agree with it. A
# vector within CAMERA_AGREEMENT pixels of it takes it whatever the frames did: DIS is off by a tenth
# of a pixel on zooms, and the stylized texture, far finer than the input's, turns that into shimmer
# (BENCHMARKS.md, "Video: optical flow"). A camera motion under CAMERA_STILL pixels everywhere is
# sensor noise fitted to a still shot (tests/test_flow.py holds one with heavy noise): none.
CAMERA_TOLERANCE, CAMERA_SAMPLES, CAMERA_INLIERS = 0.5, 4000, 0.5
ECC_ITERATIONS, ECC_EPSILON = 50, 1e-5  # the alignment that refines it (camera_motion)
CAMERA_AGREEMENT = 0.25
CAMERA_STILL = 0.25
# The alignment is an affine map, the camera's motion a similarity: an alignment whose departure from
# its nearest similarity moves some corner of the frame more than this many pixels is fitting
# something else (a large still thing on the screen the camera tracks), and the similarity stands.
CAMERA_SHAPE_SLACK = 0.1
# Ruder et al.'s consistency check: a pixel whose forward and backward flows do not cancel, to
# within OCCLUSION_RELATIVE of their squared lengths plus OCCLUSION_ABSOLUTE (pixels²), was hidden
# in the other frame (disoccluded); one where the flow's squared gradient exceeds
# BOUNDARY_RELATIVE of its squared length plus BOUNDARY_ABSOLUTE lies on a motion boundary.
OCCLUSION_RELATIVE, OCCLUSION_ABSOLUTE = 0.01, 0.5
BOUNDARY_RELATIVE, BOUNDARY_ABSOLUTE = 0.01, 0.002
# DIS's flow near a motion edge is chosen again among the motions around it (_sharpened_edges):
# within EDGE_REACH pixels of the edge, from those pixels away, by the frames' match over EDGE_PATCH²
# pixels; another motion must match better by EDGE_TIE (summed channel difference, per pixel).
EDGE_REACH = (3, 6, 9)
EDGE_PATCH = 5
EDGE_TIE = 1e-3
# Beyond Ruder et al.: where the earlier input frame, warped by the flow, differs from the current
# one by more than this in some channel (values in [0, 1]), the flow is wrong there, though the
# two directions may agree (DIS smears an object's motion onto the still background beside it,
# which left a trail along a moving object's path: BENCHMARKS.md, "Video").
PHOTOMETRIC_THRESHOLD = 0.1


def require_opencv():
    """OpenCV's module; an InputError of one line when it is not installed."""
    try:
        import cv2
    except ImportError:
        from nst_ext.errors import InputError

        raise InputError(
            "video with optical flow needs OpenCV: pip install opencv-python-headless (or use `coherence=still`)"
        ) from None
    return cv2


def _gray8(frame: np.ndarray) -> np.ndarray:
    """(H, W) uint8 luma (Rec. 601) of a ``(3, H, W)`` float frame in [0, 1], as DIS takes it."""
    luma = np.tensordot(np.array([0.299, 0.587, 0.114], dtype=frame.dtype), frame, axes=1)
    return np.rint(np.clip(luma, 0, 1) * 255).astype(np.uint8)


def _luma(frame: np.ndarray) -> np.ndarray:
    """(H, W) float32 luma (Rec. 601) of a ``(3, H, W)`` float frame."""
    return np.tensordot(np.array([0.299, 0.587, 0.114], dtype=np.float32), frame.astype(np.float32), axes=1)


def _as_flow(transform: np.ndarray, height: int, width: int) -> np.ndarray:
    """The flow ``(2, H, W)`` float64 of a 2×3 affine `transform` taking each pixel p to transform(p)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    return np.tensordot(transform.astype(np.float64), np.stack([x, y, np.ones_like(x)]), axes=1) - np.stack([x, y])


def _moved(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """`image` ``(3, H, W)`` float32 read at p + flow(p) (bilinear, the border repeated), in OpenCV;
    `image` itself for a zero flow."""
    if not flow.any():
        return image
    channels_last = np.ascontiguousarray(image.transpose(1, 2, 0), dtype=np.float32)
    return _read_box(channels_last, flow).transpose(2, 0, 1)


def _read_box(channels_last: np.ndarray, flow: np.ndarray, top: int = 0, left: int = 0) -> np.ndarray:
    """`channels_last` ``(H, W, C)`` float32 read at p + flow(p) (bilinear, the border repeated) for
    the pixels p of the box ``flow.shape[1:]`` whose corner is (`top`, `left`); ``(h, w, C)``."""
    cv2 = require_opencv()
    height, width = flow.shape[1:]
    y, x = np.mgrid[top : top + height, left : left + width].astype(np.float32)
    return cv2.remap(channels_last, x + flow[0], y + flow[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _motion_edges(flow: np.ndarray) -> np.ndarray:
    """``(H, W)`` bool: where `flow` ``(2, H, W)`` changes fast for its length, a motion boundary
    (Ruder et al.: its squared gradient over BOUNDARY_RELATIVE of its squared length plus
    BOUNDARY_ABSOLUTE). Sums in `flow`'s own dtype; none on a frame one pixel high or wide."""
    if min(flow.shape[1:]) < 2:
        return np.zeros(flow.shape[1:], dtype=bool)
    gradient = np.zeros(flow.shape[1:], dtype=flow.dtype)
    for component in flow:
        dy, dx = np.gradient(component)
        gradient += np.square(dx) + np.square(dy)
    return gradient > BOUNDARY_RELATIVE * np.square(flow).sum(0) + BOUNDARY_ABSOLUTE


def camera_motion(flow: np.ndarray, frame: np.ndarray, other: np.ndarray) -> np.ndarray:
    """The camera's part of `flow` ``(2, H, W)`` float32 from `frame` to `other` (``(3, H, W)``
    float arrays in [0, 1]), as a flow of the same shape:

    1. a similarity (pan, zoom, roll: few enough parameters that sensor noise does not fit one)
       found by RANSAC in a sample of DIS's vectors; none when fewer than CAMERA_INLIERS of them
       agree with any (a scene of independent motions), or when it moves no pixel CAMERA_STILL or
       more (a still camera);
    2. refined as an affine map by aligning the frames themselves (OpenCV's ECC) over the pixels
       that agree with it: DIS is biased by a tenth of a pixel and more on zooms and flat
       pictures, the alignment is not (BENCHMARKS.md, "Video: optical flow"). Kept when it
       converges within CAMERA_TOLERANCE of the similarity's motion plus one pixel and stays a
       similarity to within CAMERA_SHAPE_SLACK pixels (:func:`_shape_departure`).

    Zeros for none (module constants). OpenCV and NumPy only; deterministic (OpenCV seeds its
    RANSAC)."""
    cv2 = require_opencv()
    _, height, width = flow.shape
    stride = max(1, int(np.sqrt(height * width / CAMERA_SAMPLES)))
    ys, xs = np.mgrid[0:height:stride, 0:width:stride].astype(np.float32)
    source = np.stack([xs.ravel(), ys.ravel()], 1)
    target = source + flow[:, ::stride, ::stride].reshape(2, -1).T
    none = np.zeros_like(flow)
    if len(source) < 8:
        return none
    similarity, inliers = cv2.estimateAffinePartial2D(
        source, target, method=cv2.RANSAC, ransacReprojThreshold=CAMERA_TOLERANCE
    )
    if similarity is None or inliers.mean() < CAMERA_INLIERS or not np.isfinite(similarity).all():
        return none
    motion = _as_flow(similarity, height, width)
    if np.sqrt((motion**2).sum(0)).max() < CAMERA_STILL:
        return none
    agreeing = (((motion - flow) ** 2).sum(0) < CAMERA_TOLERANCE**2).astype(np.uint8)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, ECC_ITERATIONS, ECC_EPSILON)
    try:
        _, affine = cv2.findTransformECC(
            _luma(frame), _luma(other), similarity.astype(np.float32), cv2.MOTION_AFFINE, criteria, agreeing, 1
        )
    except cv2.error:  # did not converge (a flat picture, too few pixels): the similarity stands
        return motion.astype(np.float32)
    aligned = _as_flow(affine, height, width)
    if (
        np.isfinite(aligned).all()
        and np.abs(aligned - motion).max() < CAMERA_TOLERANCE + 1
        and _shape_departure(affine, height, width) <= CAMERA_SHAPE_SLACK
    ):
        motion = aligned
    return motion.astype(np.float32)


def _shape_departure(affine: np.ndarray, height: int, width: int) -> float:
    """How far (pixels) the 2×3 `affine` map's departure from the nearest similarity (rotation and
    one scale) moves the farthest corner of a `height` × `width` frame from its centre."""
    linear = affine[:, :2].astype(np.float64)
    scale, turn = (linear[0, 0] + linear[1, 1]) / 2, (linear[1, 0] - linear[0, 1]) / 2
    residual = linear - np.array([[scale, -turn], [turn, scale]])
    corners = np.array([[-1, -1], [1, -1], [-1, 1], [1, 1]]) * np.array([(width - 1) / 2, (height - 1) / 2])
    return float(np.sqrt(((corners @ residual.T) ** 2).sum(1)).max())


def flow_between(frame: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``(2, H, W)`` float32 (x, y) flow with ``frame(p) ≈ other(p + flow(p))``; both frames
    ``(3, H, W)`` in [0, 1], the same size. DIS's flow, where it agrees with the camera's motion
    (:func:`camera_motion`) to within CAMERA_AGREEMENT pixels, or to within STILL_FLOW (a moving
    camera: STILL_FLOW_MOVING) where `frame` did not change from `other`, is replaced by the
    camera's motion (0 for a still camera; module constants). Under a moving camera, what stays put
    on the screen (a subject the camera tracks, a caption, a logo) takes a motion of exactly 0: where
    DIS is within CAMERA_AGREEMENT of 0, or within STILL_FLOW where `frame` did not change from
    `other` but did from `other` moved by the camera, in both cases nearer 0 than the camera's
    motion, which moves the pixel STILL_FLOW_MOVING or more (a slower camera's is too near 0 to tell
    apart). Near a moving thing's edges, where DIS blends its motion with what is behind it, what
    does not follow the camera takes the motion around it that the frames match best
    (:func:`_sharpened_edges`), the pixels found still too: a blend of motions either side of 0
    passes through 0 (a flat object crossing against a pan; BENCHMARKS.md, "Video"). Runs
    on the CPU in OpenCV and NumPy, no torch operation: on a worker thread it overlaps the
    optimisation without contending for torch's intra-op threads (OpenCV releases the GIL). The
    result is on the CPU."""
    cv2 = require_opencv()
    if frame.shape != other.shape or frame.dim() != 3 or frame.shape[0] != 3:
        raise ValueError(f"frames must both be (3, H, W), got {tuple(frame.shape)} and {tuple(other.shape)}")
    frame, other = frame.detach().cpu().numpy(), other.detach().cpu().numpy()
    if max(frame.shape[1:]) < DIS_MIN_SIDE:  # too small for DIS: no motion found (the frames' check still runs)
        return torch.zeros(2, *frame.shape[1:])
    preset = getattr(cv2, f"DISOPTICAL_FLOW_PRESET_{DIS_PRESET.upper()}")
    flow = cv2.DISOpticalFlow_create(preset).calc(_gray8(frame), _gray8(other), None).transpose(2, 0, 1)
    camera = camera_motion(flow, frame, other)
    apart = ((flow - camera) ** 2).sum(0)
    unchanged = np.abs(frame - _moved(other, camera)).max(0) <= STILL_THRESHOLD
    still_flow = STILL_FLOW_MOVING if camera.any() else STILL_FLOW
    follows_camera = (apart < CAMERA_AGREEMENT**2) | (unchanged & (apart < still_flow**2))
    stays = np.zeros_like(follows_camera)
    if camera.any():  # the screen's own still things (docstring): 0 where that fits better
        length = (flow**2).sum(0)
        unchanged_on_screen = np.abs(frame - other).max(0) <= STILL_THRESHOLD
        # Where both fit (a flat area), the frames cannot tell 0 from the camera's motion: there only
        # DIS's own agreement with 0 counts (a flat sky stays with the camera).
        stays = (length < CAMERA_AGREEMENT**2) | (unchanged_on_screen & ~unchanged & (length < STILL_FLOW**2))
        stays &= (length < apart) & ((camera**2).sum(0) >= STILL_FLOW_MOVING**2)
        follows_camera &= ~stays
        flow = np.where(stays[None], 0.0, flow)
    flow = np.where(follows_camera[None], camera, flow)
    flow = _sharpened_edges(flow, frame, other, camera, settled=follows_camera)
    return torch.from_numpy(np.ascontiguousarray(flow, dtype=np.float32))


def _sharpened_edges(
    flow: np.ndarray, frame: np.ndarray, other: np.ndarray, camera: np.ndarray, settled: np.ndarray
) -> np.ndarray:
    """`flow` ``(2, H, W)`` with its motion edges made sharp: DIS smooths the flow across the edge
    of a moving thing, so a band on both sides takes a blend of the two motions (and a flat object
    the camera's behind it). Within EDGE_REACH pixels of where the flow changes fast, each pixel not
    `settled` (``(H, W)`` bool: it follows the camera) takes whichever of its own
    motion, the camera's and the motions EDGE_REACH pixels away on either side, across and along,
    makes `other`, moved by it, match `frame` best over EDGE_PATCH² pixels: the motion of the
    side the pixel belongs to. Ties keep the pixel's own."""
    cv2 = require_opencv()
    height, width = flow.shape[1:]
    if not EDGE_REACH or min(height, width) < 2:
        return flow
    near = cv2.dilate(np.asarray(_motion_edges(flow), np.uint8), np.ones((2 * max(EDGE_REACH) + 1,) * 2, np.uint8)) > 0
    free = near & ~settled
    if not free.any():
        return flow
    # Only the box round the free pixels is matched, with the patch's reach: their costs are the same.
    free_rows, free_columns = np.flatnonzero(free.any(1)), np.flatnonzero(free.any(0))
    margin = EDGE_PATCH // 2
    top, bottom = max(free_rows[0] - margin, 0), min(free_rows[-1] + margin + 1, height)
    left, right = max(free_columns[0] - margin, 0), min(free_columns[-1] + margin + 1, width)
    rows, columns = np.arange(top, bottom), np.arange(left, right)
    other_channels_last = np.ascontiguousarray(other.transpose(1, 2, 0), dtype=np.float32)
    box = np.ascontiguousarray(frame[:, top:bottom, left:right].transpose(1, 2, 0), dtype=np.float32)
    shifts = [(dx, dy) for reach in EDGE_REACH for dx, dy in ((reach, 0), (-reach, 0), (0, reach), (0, -reach))]
    neighbours = (
        flow[:, np.clip(rows + dy, 0, height - 1)][:, :, np.clip(columns + dx, 0, width - 1)] for dx, dy in shifts
    )
    best, lowest = None, None
    own = flow[:, top:bottom, left:right]
    for candidate in (own, camera[:, top:bottom, left:right], *neighbours):  # one at a time: a 4K frame's are large
        candidate = candidate.astype(np.float32)
        moved = _read_box(other_channels_last, candidate, top, left)
        cost = cv2.blur(np.abs(box - moved).sum(2), (EDGE_PATCH, EDGE_PATCH))
        if best is None:  # the pixel's own motion, which a tie keeps
            best, lowest = candidate, cost - EDGE_TIE
            continue
        better = cost < lowest
        best, lowest = np.where(better[None], candidate, best), np.where(better, cost, lowest)
    sharpened = flow.copy()
    inside_box = free[top:bottom, left:right]
    sharpened[:, top:bottom, left:right] = np.where(inside_box[None], best, flow[:, top:bottom, left:right])
    return sharpened


def still_mask(current: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """(H, W) float32: 1 where the input frame did not change (both ``(3, H, W)`` in [0, 1]), 0
    where it moved and within MOTION_MARGIN pixels of that: the frame-difference mask of
    ``--coherence still``, which knows nothing of motion (a panned texture counts as moved)."""
    moved = ((current.float() - previous.float()).abs().amax(0) > STILL_THRESHOLD).float()[None, None]
    moved = F.max_pool2d(moved, 2 * MOTION_MARGIN + 1, stride=1, padding=MOTION_MARGIN)
    return 1.0 - moved[0, 0]


@dataclass(frozen=True)
class Consistency:
    """Which pixels of the current frame a warped earlier frame can stand for (each ``(H, W)`` bool):
    ``disoccluded``: hidden in the earlier frame or moved in from outside it (a warp has nothing
    true to give there); ``reliable``: neither disoccluded nor on a motion boundary, where the
    temporal term holds the stylized frame to the warped one. ``earlier_warped``: the earlier input
    frame ``(3, H, W)`` float32 (CPU) warped onto the current one, as the photometric check compared
    them (None without the input frames); :func:`relit` reads the change of light from it."""

    disoccluded: torch.Tensor
    reliable: torch.Tensor
    earlier_warped: Optional[torch.Tensor] = None


def consistency(
    backward: torch.Tensor,
    forward: torch.Tensor,
    current: Optional[torch.Tensor] = None,
    earlier: Optional[torch.Tensor] = None,
) -> Consistency:
    """Ruder et al.'s check of the `backward` flow (current → earlier frame, as flow_between(current,
    earlier)) against the `forward` one (flow_between(earlier, current)), both ``(2, H, W)``: a pixel
    whose two flows do not cancel is disoccluded, one where the backward flow changes fast is a
    motion boundary. Given the input frames `current` and `earlier` ``(3, H, W)``, a pixel that the
    warped earlier frame does not match (PHOTOMETRIC_THRESHOLD) counts as disoccluded too
    (thresholds: module constants)."""
    backward, forward = backward.float(), forward.float()
    forward_there = F.grid_sample(
        forward[None], sampling_grid(backward), mode="bilinear", padding_mode="border", align_corners=True
    )[0]
    length = backward.square().sum(0) + forward_there.square().sum(0)
    mismatch = (backward + forward_there).square().sum(0)
    disoccluded = (mismatch > OCCLUSION_RELATIVE * length + OCCLUSION_ABSOLUTE) | ~inside(backward)
    earlier_warped = None
    if current is not None and earlier is not None:
        earlier_warped = warp(earlier.float().cpu(), backward, mode="bicubic")
        disoccluded |= (earlier_warped - current.float().cpu()).abs().amax(0) > PHOTOMETRIC_THRESHOLD
    boundary = torch.from_numpy(_motion_edges(backward.cpu().numpy())).to(backward.device)
    return Consistency(disoccluded=disoccluded, reliable=~(disoccluded | boundary), earlier_warped=earlier_warped)
