"""What a stage's optimiser moves (``StyleOptions.parametrization``): the pixels themselves, or the
picture's Laplacian pyramid, the image STROTSS (Kolkin et al. 2019) and NNST optimise.

The names of the choices (nst_ext.plan.validation.PARAMETRIZATIONS) and the coefficients' count per
pixel (nst_ext.plan.memory.PYRAMID_COEFFICIENTS_PER_PIXEL) live with the plan, which needs no torch.

A pyramid's coefficients are band-pass levels, finest first, each half the previous one's size
(rounded up), and a coarse remainder. The picture is their sum, each level enlarged bilinearly to
the next finer one's size, each coarser level weighed less (PYRAMID_LEVEL_GAIN). The map is
linear, and a step along the coefficients' gradient moves a coarse level's one coefficient for the
whole patch of pixels it covers: the picture's large structures move several times as far as a
step in pixels would move them (once through each level), its fine detail as far. The objective
still sees and differentiates the picture: an evaluation writes the picture from the
coefficients, evaluates it (whole or in tiles), and takes its gradient back through the
synthesis' adjoint.
"""

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F

# The coarsest level keeps at least this many pixels on its shorter side, and a pyramid has at
# most PYRAMID_MAX_LEVELS band-pass levels: a 512 px picture's coarsest level is 16 px.
PYRAMID_MIN_SIDE = 16
PYRAMID_MAX_LEVELS = 5
# Each coarser level's coefficients count this much less in the picture (the synthesis multiplies
# level k by PYRAMID_LEVEL_GAIN ** k). A smooth gradient reaches the picture through level k
# (4 · gain²)^k times as strongly as through the finest, a fine one about equally: 1 favours the
# coarse levels the most (STROTSS's pyramid); 0.5 passes a smooth gradient through every level
# alike. With 1 the held-out pictures lay above Gram's curve; with 0.5 they lie on either side of
# it, pair by pair (BENCHMARKS.md, "The frontier").
PYRAMID_LEVEL_GAIN = 0.5


def pyramid_shapes(height: int, width: int) -> List[Tuple[int, int]]:
    """The levels' (height, width), the picture's first: each half the previous (rounded up),
    while the shorter side stays at least PYRAMID_MIN_SIDE, at most PYRAMID_MAX_LEVELS + 1 shapes."""
    shapes = [(height, width)]
    while len(shapes) <= PYRAMID_MAX_LEVELS:
        h, w = shapes[-1]
        smaller = ((h + 1) // 2, (w + 1) // 2)
        if min(smaller) < PYRAMID_MIN_SIDE:
            break
        shapes.append(smaller)
    return shapes


def _enlarged(level: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    return F.interpolate(level, size=(int(shape[0]), int(shape[1])), mode="bilinear", align_corners=False)


class LaplacianPyramid:
    """The Laplacian pyramid of pictures of `shape` ``(N, C, H, W)``, as one flat tensor of
    coefficients (each level's ``(N, C, h, w)`` flattened, finest first, then the remainder);
    ``numel`` coefficients in all. Any floating dtype; the coefficients keep the picture's."""

    def __init__(self, shape: Sequence[int]):
        self.batch_shape = tuple(shape[:2])
        self.shapes = pyramid_shapes(int(shape[2]), int(shape[3]))
        self.sizes = [self.batch_shape[0] * self.batch_shape[1] * h * w for h, w in self.shapes]
        self.numel = sum(self.sizes)

    def analyse(self, image: torch.Tensor) -> torch.Tensor:
        """The coefficients of `image` (``(N, C, H, W)``): each level the picture less its
        shrunk (antialiased) copy enlarged again, so that :meth:`synthesise` gives `image` back."""
        levels, current = [], image
        for shape in self.shapes[1:]:
            smaller = F.interpolate(current, size=shape, mode="bilinear", align_corners=False, antialias=True)
            levels.append(current - _enlarged(smaller, current.shape[-2:]))
            current = smaller
        levels.append(current)
        return torch.cat([level.reshape(-1) / PYRAMID_LEVEL_GAIN**k for k, level in enumerate(levels)])

    def synthesise(self, coefficients: torch.Tensor) -> torch.Tensor:
        """The picture ``(N, C, H, W)`` of flat `coefficients` (``(numel,)``); differentiable."""
        levels = [
            part.view(*self.batch_shape, *shape) * PYRAMID_LEVEL_GAIN**k
            for k, (part, shape) in enumerate(zip(torch.split(coefficients, self.sizes), self.shapes))
        ]
        image = levels[-1]
        for level in reversed(levels[:-1]):
            image = _enlarged(image, level.shape[-2:]) + level
        return image

    def gradient(self, coefficients: torch.Tensor, image_gradient: torch.Tensor) -> torch.Tensor:
        """The coefficients' gradient from the picture's (the synthesis' adjoint at it)."""
        with torch.enable_grad():
            variable = coefficients.detach().requires_grad_(True)
            (gradient,) = torch.autograd.grad(self.synthesise(variable), variable, image_gradient)
        return gradient


class PyramidVariable:
    """One picture leaf `image` (``(1, 3, H, W)``, requires_grad, the objective's) optimised
    through its pyramid: the optimiser moves ``coefficients``; :meth:`write_image` before an
    evaluation and :meth:`take_gradient` after it keep the two in step."""

    def __init__(self, image: torch.Tensor):
        self.image = image
        self.pyramid = LaplacianPyramid(image.shape)
        self.coefficients = self.pyramid.analyse(image.detach()).contiguous().requires_grad_(True)

    def write_image(self) -> None:
        with torch.no_grad():
            self.image.copy_(self.pyramid.synthesise(self.coefficients))

    def take_gradient(self) -> None:
        if self.image.grad is None:
            raise RuntimeError("the evaluation left the picture without a gradient")
        self.coefficients.grad = self.pyramid.gradient(self.coefficients, self.image.grad)
