"""nst_ext.judge, the yardstick with no VGG in it: a picture between content and style is judged
between them; two draws of one random texture are near each other and far from another texture;
texture statistics ignore where things are and layout sees it; and it loads no network."""

import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from nst_ext import judge
from nst_ext.io.images import load_image, resize

PANEL = Path(__file__).resolve().parents[1] / "benchmarks" / "panel"


def random_texture(kind: str, generator: torch.Generator, shape=(96, 128)) -> torch.Tensor:
    """A stationary random texture ``(3, H, W)`` in [0, 1]: "streaks" (noise blurred along rows, warm
    colours) or "blobs" (noise blurred alike both ways, cool colours)."""
    height, width = shape
    noise = torch.randn(1, 1, height + 24, width + 24, generator=generator, dtype=torch.float64)
    axis = torch.arange(-12, 13, dtype=torch.float64)
    along = torch.exp(-axis.square() / (2 * (8.0 if kind == "streaks" else 2.5) ** 2))
    across = torch.exp(-axis.square() / (2 * (0.8 if kind == "streaks" else 2.5) ** 2))
    kernel = (across[:, None] * along[None, :]).view(1, 1, 25, 25)
    field = F.conv2d(noise, kernel / kernel.sum())[0, 0]
    field = (field - field.mean()) / field.std()
    tint = torch.tensor([0.9, 0.5, 0.2] if kind == "streaks" else [0.2, 0.5, 0.9], dtype=torch.float64)
    return (0.5 + 0.18 * field[None] * tint.view(3, 1, 1) + 0.1 * (tint.view(3, 1, 1) - 0.5)).clamp(0, 1).float()


def test_a_picture_between_content_and_style_is_judged_between_them():
    content, style = load_image(PANEL / "hopper.jpg"), resize(load_image(PANEL / "gravel.jpg"), (320, 320))
    content = resize(content, (320, 320))
    gaps, layouts = [], []
    for share in (0.0, 0.25, 0.5, 0.75, 1.0):
        mixed = (1 - share) * content + share * style
        gaps.append(judge.texture_gap(mixed, content, style))
        layouts.append(judge.layout(mixed, content))
    assert gaps[0] == 1.0 and gaps[-1] == 0.0
    assert all(a > b for a, b in zip(gaps, gaps[1:])), gaps
    assert layouts[0] > 0.999 and all(a > b for a, b in zip(layouts, layouts[1:])), layouts


def test_two_draws_of_one_texture_are_near_and_another_texture_is_far(seed):
    generator = torch.Generator().manual_seed(seed)
    streaks, other_streaks = random_texture("streaks", generator), random_texture("streaks", generator)
    blobs = random_texture("blobs", generator)
    # Judged as a run would be: how far is the second draw from the first, as a share of the blobs' distance.
    assert judge.texture_gap(other_streaks, blobs, streaks) < 0.3
    assert judge.colour_gap(other_streaks, blobs, streaks) < 0.3
    assert judge.texture_gap(blobs, other_streaks, streaks) > 0.7  # (1 by definition at the content)
    # A real stationary texture: two halves of the gravel photograph.
    gravel = load_image(PANEL / "gravel.jpg")
    left, right = gravel[..., : gravel.shape[-1] // 2], gravel[..., gravel.shape[-1] // 2 :]
    assert judge.texture_gap(right, load_image(PANEL / "hopper.jpg"), left) < 0.2


def test_texture_ignores_where_things_are_and_layout_sees_it():
    content, style = load_image(PANEL / "chelsea.jpg"), load_image(PANEL / "grass.jpg")
    moved = torch.roll(content, shifts=content.shape[-1] // 2, dims=-1)
    assert abs(judge.texture_gap(moved, content, style) - 1) < 0.1
    assert judge.layout(content, content) > 0.999 and judge.layout(moved, content) < 0.6
    flipped = content.flip(-2)
    assert judge.layout(flipped, content) < judge.layout(content * 0.8 + 0.1, content)


def test_every_picture_gives_one_vector_whatever_its_shape():
    generator = torch.Generator().manual_seed(0)
    shapes = [(96, 128), (20, 300), (300, 20), (9, 9)]
    lengths = {len(judge.statistics(random_texture("blobs", generator, shape)).texture) for shape in shapes}
    assert len(lengths) == 1


def test_the_judge_loads_no_network():
    probe = "import sys, nst_ext.judge; print(sorted(m for m in sys.modules if m.startswith(('nst_ext.model', 'nst_ext.ops', 'nst_ext.metrics'))))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_colour_gap_of_two_grey_pictures_stays_a_share_not_a_blow_up():
    # Content and style both grey (Lab a = b = 0 up to rounding): their colour moments that differ by
    # a hair were once the denominator, and a faint tint on the picture made a gap of 10^5.
    generator = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    content = torch.rand(1, 64, 80, generator=generator).expand(3, -1, -1)
    style = (0.3 + 0.2 * torch.rand(1, 64, 80, generator=generator)).expand(3, -1, -1)
    tinted = (style * torch.tensor([1.0, 0.97, 0.97]).view(3, 1, 1)).clamp(0, 1)
    colour = judge.colour_gap(tinted, content, style)
    assert 0 <= colour < 2, colour
    assert judge.colour_gap(content, content, style) == 1.0 and judge.colour_gap(style, content, style) == 0.0
