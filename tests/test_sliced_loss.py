"""The sliced Wasserstein style loss (nst_ext.objective.distribution_losses.SlicedWassersteinLoss, style_loss "sliced"):
zero at any rearrangement of the style's own features, its gradient checked in float64, the target of
a blend the weighted mixture's quantiles; over a style mask's region the loss of the region's cells
alone (the style's over its source region); in a run it moves the picture towards the style, with several
styles and a batch; and what it cannot do yet is refused in one line before any work."""

import pytest
import torch

import nst_ext
from nst_ext.io.images import load_image
from nst_ext.objective.distribution_losses import SlicedWassersteinLoss, _weighted_quantiles, random_directions
from nst_ext.plan.options import OptionError
from nst_ext.stylizer import Stylizer

CONTENT = "nst_ext/data/astronaut.jpg"
STYLE = "nst_ext/data/swirls.jpg"


def test_any_rearrangement_of_the_styles_features_scores_zero_and_others_do_not(seed):
    channels, height, width = 7, 5, 9
    style = torch.randn(channels, height * width, dtype=torch.float64)
    loss = SlicedWassersteinLoss([style], [1.0], random_directions(channels, 2 * channels, seed), height * width)
    rearranged = style[:, torch.randperm(height * width)].reshape(1, channels, height, width)
    assert float(loss(rearranged)) < 1e-10
    other = torch.randn(2, channels, height, width, dtype=torch.float64) * 2 + 1
    values = loss(other)
    assert values.shape == (2,) and bool((values > 0.1).all())


def test_the_gradient_is_checked_in_float64(seed):
    channels, height, width = 4, 3, 5
    style = torch.randn(channels, 23, dtype=torch.float64)  # another number of cells than the picture's
    loss = SlicedWassersteinLoss([style], [1.0], random_directions(channels, channels, seed), height * width)
    features = torch.randn(2, channels, height, width, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: loss(x), (features,))
    # Non-contiguous (channels-last) features give the same values.
    last = features.detach().contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(loss(last), loss(features.detach()))


def test_a_blends_target_is_the_weighted_mixtures_quantiles(seed):
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(3, 40, generator=generator, dtype=torch.float64)
    # Equal weights at as many ranks as samples: the samples themselves, sorted.
    torch.testing.assert_close(
        _weighted_quantiles(values, torch.ones(40, dtype=torch.float64), 40), values.sort(1).values
    )
    # The same style twice, in any shares, is that style.
    style = torch.randn(6, 30, generator=generator, dtype=torch.float64)
    directions = random_directions(6, 6, seed)
    alone = SlicedWassersteinLoss([style], [1.0], directions, 24)
    twice = SlicedWassersteinLoss([style, style], [0.3, 0.7], directions, 24)
    torch.testing.assert_close(twice.target, alone.target)
    # A blend of a style and the style shifted lies between them along every direction, rank by rank
    # (along each direction one of the two is the other moved one way).
    shifted = style + 3
    blend = SlicedWassersteinLoss([style, shifted], [0.5, 0.5], directions, 24).target
    one = SlicedWassersteinLoss([style], [1.0], directions, 24).target
    other = SlicedWassersteinLoss([shifted], [1.0], directions, 24).target
    assert bool((blend >= torch.minimum(one, other) - 1e-6).all() and (blend <= torch.maximum(one, other) + 1e-6).all())
    assert not torch.allclose(blend, one) and not torch.allclose(blend, other)


def _sliced(style, cells, seed, sources=None, weights=None):
    return SlicedWassersteinLoss(
        [style], [1.0], random_directions(style.shape[0], style.shape[0], seed), cells, sources, weights
    )


def test_over_a_region_of_equal_weights_it_is_the_loss_of_the_regions_cells_alone(seed):
    generator = torch.Generator().manual_seed(seed)
    channels, height, width = 5, 6, 7
    style = torch.randn(channels, 31, generator=generator, dtype=torch.float64)
    features = torch.randn(2, channels, height, width, generator=generator, dtype=torch.float64)
    region = (torch.rand(height, width, generator=generator) > 0.4).double()
    cells = int(region.sum())
    masked = _sliced(style, height * width, seed, weights=0.25 * region)
    inside = features.flatten(2)[:, :, region.flatten() > 0].reshape(2, channels, 1, cells)
    alone = _sliced(style, cells, seed)
    torch.testing.assert_close(masked(features) / masked.scale, alone(inside) / alone.scale, rtol=1e-12, atol=1e-12)
    # All ones: the unmasked loss itself.
    everywhere = _sliced(style, height * width, seed, weights=torch.ones(height, width, dtype=torch.float64))
    torch.testing.assert_close(everywhere(features), _sliced(style, height * width, seed)(features), rtol=1e-12, atol=0)
    # No weight at this layer: no cost.
    nowhere = _sliced(style, height * width, seed, weights=torch.zeros(height, width, dtype=torch.float64))
    assert nowhere(features).shape == (2,) and float(nowhere(features).abs().sum()) == 0


def test_over_a_soft_region_the_gradient_is_checked_in_float64(seed):
    generator = torch.Generator().manual_seed(seed)
    style = torch.randn(4, 19, generator=generator, dtype=torch.float64)
    weights = torch.rand(3, 5, generator=generator, dtype=torch.float64) * (torch.rand(3, 5, generator=generator) > 0.3)
    loss = _sliced(style, 15, seed, weights=weights)
    features = torch.randn(2, 4, 3, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: loss(x), (features,))
    # The style's cells outside its source region do not count.
    source = (torch.arange(19) % 3 != 0).double()
    picked = _sliced(style[:, source > 0], 15, seed, weights=weights)
    torch.testing.assert_close(_sliced(style, 15, seed, [source], weights)(features), picked(features))


def test_a_run_moves_towards_the_style_with_several_styles_and_a_batch():
    content, style = load_image(CONTENT), load_image(STYLE)
    stylizer = Stylizer(scales=[32, 48], steps=[8, 6], style_loss="sliced", device="cpu")
    result = stylizer.run(content, [style, style.flip(-1)])
    totals = [entry["total"] for entry in result.history]
    assert torch.isfinite(result.tensor).all() and totals[-1] < 0.6 * totals[0]
    pictures = stylizer.run_many([content, content.flip(-1)], style)
    assert len(pictures) == 2 and all(torch.isfinite(picture.tensor).all() for picture in pictures)


def test_what_it_cannot_do_yet_is_refused_in_one_line(tmp_path):
    with pytest.raises(OptionError, match="style_loss must be one of gram, sliced"):
        nst_ext.StyleOptions(style_loss="w3").validate()
    with pytest.raises(OptionError, match="cannot be evaluated in tiles"):
        nst_ext.StyleOptions(style_loss="sliced", tile=64).validate()
    # A budget that only tiles can meet is refused before any step.
    steps = []
    with pytest.raises(
        OptionError, match=r"style_loss .sliced. needs each picture in one pass \(no tiles\), and a \d+x\d+ stage needs"
    ):
        Stylizer(size=512, style_loss="sliced", max_memory="1.1GiB", device="cpu").run(
            load_image(CONTENT), load_image(STYLE), callback=steps.append
        )
    assert steps == []


def test_the_command_line_takes_it_and_records_it(tmp_path):
    import json
    import subprocess
    import sys

    from nst_ext.io.images import read_record

    out = tmp_path / "sliced.png"
    run = [sys.executable, "-m", "nst_ext", "stylize", CONTENT, STYLE, "-o", str(out), "--size", "40", "--steps", "3"]
    result = subprocess.run([*run, "--style-loss", "sliced"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(read_record(out))["settings"]["style_loss"] == "sliced"
    refused = subprocess.run([*run, "--overwrite", "--style-loss", "w9"], capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr and "--style-loss" in refused.stderr


def test_a_video_takes_it(tmp_path):
    """A video job runs with the sliced loss: each frame is a whole picture, the temporal term beside it."""
    import av
    from clips import synthetic_clip

    from nst_ext.cli import main

    clip = synthetic_clip(tmp_path / "clip.mp4", frames=5, size=(54, 72), fps=10)
    output = tmp_path / "out.mp4"
    fast = ["--size", "48", "--steps", "6", "--frame-steps", "4", "--device", "cpu", "--quiet"]
    assert main(["video", str(clip), STYLE, "-o", str(output), *fast, "--style-loss", "sliced"]) == 0
    with av.open(str(output)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 5
