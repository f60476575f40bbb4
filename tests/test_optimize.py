"""nst_ext.optimize: the average of a stage's iterates (``average``), against an average computed
here from the images a run reports; its memory counted by the plan; its option checked."""

import pytest
import torch

from nst_ext.io.images import load_image
from nst_ext.optimize import AVERAGE_DECAY, AverageImage
from nst_ext.plan.options import OptionError
from nst_ext.stylizer import Stylizer

SIZE = 48
CONTENT = "nst_ext/data/astronaut.jpg"
STYLE = "nst_ext/data/swirls.jpg"


def moving_average(images, losses=None):
    """The bias-corrected exponential moving average of `images` written out as a weighted sum,
    leaving out those whose loss is not finite."""
    kept = [image for k, image in enumerate(images) if losses is None or torch.isfinite(torch.tensor(losses[k]))]
    weights = [(1 - AVERAGE_DECAY) * AVERAGE_DECAY ** (len(kept) - 1 - k) for k in range(len(kept))]
    return sum(w * image.double() for w, image in zip(weights, kept)) / sum(weights)


def test_the_average_weighs_recent_images_most_and_leaves_out_non_finite_losses(device):
    first = torch.zeros(1, 3, 5, 7, device=device)
    average = AverageImage(first)
    generator = torch.Generator().manual_seed(3)
    images = [torch.rand(1, 3, 5, 7, generator=generator).to(device) for _ in range(6)]
    losses = [5.0, 7.0, float("nan"), 4.0, float("inf"), 6.0]
    for loss, image in zip(losses, images):
        average.offer(torch.tensor(loss, device=device), image)
    result = average.image_or(first)
    assert result.device == first.device and result.dtype == first.dtype
    torch.testing.assert_close(result.double(), moving_average(images, losses), rtol=0, atol=1e-6)


def test_with_no_finite_image_the_fallback_stands(device):
    fallback = torch.full((1, 3, 4, 4), 0.5, device=device)
    average = AverageImage(fallback)
    assert torch.equal(average.image_or(fallback), fallback)
    average.offer(torch.tensor(float("nan"), device=device), torch.ones_like(fallback))
    assert torch.equal(average.image_or(fallback), fallback)


def test_a_run_with_average_gives_the_average_of_the_images_it_evaluated():
    # Adam clamps its iterate to [0, 1] after each step, so the images a callback sees are the iterates.
    content, style = load_image(CONTENT), load_image(STYLE)
    seen = []
    stylizer = Stylizer(size=SIZE, scales=[SIZE], steps=7, optimizer="adam", learning_rate=0.05, average=True)
    result = stylizer.run(content, style, callback=lambda progress: seen.append(progress.image()))
    assert len(seen) == 7
    torch.testing.assert_close(result.tensor.double(), moving_average(seen), rtol=0, atol=1e-5)
    plain = Stylizer(size=SIZE, scales=[SIZE], steps=7, optimizer="adam", learning_rate=0.05).run(content, style)
    assert not torch.equal(plain.tensor, result.tensor)
    assert (result.tensor - seen[-1]).abs().max() > 1e-3  # the average is not the last iterate


def test_the_plan_counts_the_average_s_image():
    shape = (96, 128)
    plain = Stylizer(size=128).plan(shape, [shape]).stages[-1].memory
    averaged = Stylizer(size=128, average=True).plan(shape, [shape]).stages[-1].memory
    assert averaged.held_images - plain.held_images == 3 * 96 * 128 * 4


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_average_is_true_or_false(bad):
    with pytest.raises(OptionError, match="average must be True or False"):
        Stylizer(size=SIZE, average=bad)
