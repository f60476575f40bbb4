"""The Wasserstein-2 style loss between Gaussians (nst_ext.objective.distribution_losses.GaussianW2Loss, style_loss
"w2"): the closed form computed apart in float64 by eigenvalues, on fresh random features of odd
shapes, batched, channels-last and non-contiguous; zero at any rearrangement of the style's own
features; the diagonal case by hand; Newton–Schulz's square root and its fallback; the gradient in
float64; and a run, a batch, the command line and its record, and the refusals."""

import json
import subprocess
import sys

import pytest
import torch

import nst_ext
from nst_ext.io.images import load_image, read_record
from nst_ext.objective.distribution_losses import GaussianW2Loss, _trace_sqrt, newton_schulz_sqrt
from nst_ext.plan.options import OptionError
from nst_ext.stylizer import Stylizer

CONTENT = "nst_ext/data/astronaut.jpg"
STYLE = "nst_ext/data/swirls.jpg"


def _psd_root(matrix):
    values, vectors = torch.linalg.eigh(0.5 * (matrix + matrix.t()))
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.t()


def closed_form(features, styles, blend):
    """W2² between the Gaussians of `features` (C, H, W) and of the styles' mixture, ÷ the style's
    tr E[ffᵀ]: float64, eigenvalues, written apart from the module."""
    flat = features.double().flatten(1)
    mean = flat.mean(1)
    covariance = flat @ flat.t() / flat.shape[1] - torch.outer(mean, mean)
    shares = [b / sum(blend) for b in blend]
    style_mean = sum(s * style.double().mean(1) for style, s in zip(styles, shares))
    second = sum(s * style.double() @ style.double().t() / style.shape[1] for style, s in zip(styles, shares))
    style_covariance = second - torch.outer(style_mean, style_mean)
    root = _psd_root(style_covariance)
    distance = (
        (mean - style_mean).square().sum()
        + covariance.trace()
        + style_covariance.trace()
        - 2 * _psd_root(root @ covariance @ root).trace()
    )
    return float(distance / second.trace())


@pytest.mark.parametrize("channels, height, width", [(5, 3, 7), (64, 11, 13), (256, 9, 17)])
def test_the_loss_is_the_closed_form_for_every_picture_of_a_batch(seed, channels, height, width):
    generator = torch.Generator().manual_seed(seed)
    styles = [
        torch.randn(channels, 97, generator=generator) * torch.rand(channels, 1, generator=generator) * 3,
        torch.relu(torch.randn(channels, 61, generator=generator) + 0.5),
    ]
    blend = [0.25, 0.75]
    loss = GaussianW2Loss(styles, blend)
    features = torch.relu(torch.randn(3, channels, height, width, generator=generator))
    expected = [closed_form(picture, styles, blend) for picture in features]
    torch.testing.assert_close(loss(features).tolist(), expected, rtol=2e-4, atol=1e-6)
    # Channels-last and a non-contiguous slice give the same values.
    torch.testing.assert_close(
        loss(features.contiguous(memory_format=torch.channels_last)).tolist(), expected, rtol=2e-4, atol=1e-6
    )
    wide = torch.relu(torch.randn(3, channels, height, 2 * width, generator=generator))
    torch.testing.assert_close(
        loss(wide[..., ::2]).tolist(), [closed_form(p, styles, blend) for p in wide[..., ::2]], rtol=2e-4, atol=1e-6
    )
    # float64 features are scored in float64.
    doubled = loss(features.double())
    assert doubled.dtype == torch.float64
    torch.testing.assert_close(doubled.tolist(), expected, rtol=1e-7, atol=1e-9)


def test_any_rearrangement_of_the_styles_features_scores_zero_and_others_do_not(seed):
    generator = torch.Generator().manual_seed(seed)
    channels, height, width = 9, 5, 8
    style = torch.randn(channels, height * width, dtype=torch.float64, generator=generator)
    loss = GaussianW2Loss([style], [1.0])
    rearranged = style[:, torch.randperm(height * width, generator=generator)].reshape(1, channels, height, width)
    assert float(loss(rearranged)) < 1e-9
    other = torch.randn(2, channels, height, width, dtype=torch.float64, generator=generator) * 2 + 1
    assert bool((loss(other) > 0.1).all())


def test_diagonal_gaussians_by_hand(seed):
    """Independent channels: W2² = ‖Δμ‖² + Σ (σ − σₛ)²."""
    generator = torch.Generator().manual_seed(seed)
    channels, cells = 4, 20000
    scales, shifts = torch.rand(channels, 1, generator=generator) + 0.5, torch.randn(channels, 1, generator=generator)
    style = torch.randn(channels, cells, dtype=torch.float64, generator=generator)
    style = (style - style.mean(1, keepdim=True)) / style.std(1, unbiased=False, keepdim=True)  # exactly N(0, I)
    picture = torch.randn(channels, cells, dtype=torch.float64, generator=generator)
    picture = (picture - picture.mean(1, keepdim=True)) / picture.std(1, unbiased=False, keepdim=True)
    picture = picture * scales.double() + shifts.double()
    value = float(GaussianW2Loss([style], [1.0])(picture.reshape(1, channels, cells, 1)))
    covariance = picture @ picture.t() / cells - torch.outer(picture.mean(1), picture.mean(1))
    by_hand = (shifts.double().squeeze().square().sum() + (covariance.diagonal().sqrt() - 1).square().sum()) / channels
    assert value == pytest.approx(closed_form(picture.reshape(channels, cells, 1), [style], [1.0]), rel=1e-9)
    # Random draws are uncorrelated only up to their sampling (about 1/√cells): within 2%.
    assert value == pytest.approx(float(by_hand), rel=0.02)


def test_newton_schulz_gives_the_square_root_and_the_fallback_catches_what_it_cannot(seed):
    generator = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(32, 32, dtype=torch.float64, generator=generator))[0]
    well = (basis * torch.linspace(0.5, 2.0, 32, dtype=torch.float64)) @ basis.t()
    root, residual = newton_schulz_sqrt(well.float())
    assert float(residual) < 1e-5
    torch.testing.assert_close(root.double(), _psd_root(well), rtol=1e-4, atol=1e-5)
    # Eigenvalues spread over twelve orders: Newton–Schulz's residual check fails and the trace
    # comes from the eigenvalues instead, still right.
    spread = (basis * torch.logspace(-12, 0, 32, dtype=torch.float64)) @ basis.t()
    _, residual = newton_schulz_sqrt(spread.float(), iterations=3)
    assert float(residual) > 1e-3
    expected = float(_psd_root(spread).trace())
    assert float(_trace_sqrt(spread.float()[None])) == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize("height, width", [(4, 5), (2, 3)], ids=["more cells than channels", "fewer"])
def test_the_gradient_is_checked_in_float64(seed, height, width):
    generator = torch.Generator().manual_seed(seed)
    styles = [torch.randn(8, 40, dtype=torch.float64, generator=generator) + 1]
    loss = GaussianW2Loss(styles, [1.0])
    features = (torch.randn(2, 8, height, width, dtype=torch.float64, generator=generator) * 1.5).requires_grad_(True)
    assert torch.autograd.gradcheck(loss, (features,), eps=1e-6, atol=1e-6)


def test_a_run_moves_towards_the_style_with_several_styles_and_a_batch():
    content, style = load_image(CONTENT), load_image(STYLE)
    stylizer = Stylizer(scales=[32, 48], steps=[8, 6], style_loss="w2", device="cpu")
    result = stylizer.run(content, [style, style.flip(-1)])
    totals = [entry["total"] for entry in result.history]
    assert torch.isfinite(result.tensor).all() and totals[-1] < 0.6 * totals[0]
    pictures = stylizer.run_many([content, content.flip(-1)], style)
    assert len(pictures) == 2 and all(torch.isfinite(picture.tensor).all() for picture in pictures)


def weighted_closed_form(features, weights, style, source):
    """The same with the picture's moments over `weights` (H, W) and the style's over `source` (N,):
    weighted means and covariances in float64, written apart from the module."""
    flat = features.double().flatten(1)
    share = weights.double().flatten() / weights.double().sum()
    mean = flat @ share
    covariance = (flat - mean[:, None]) * share @ (flat - mean[:, None]).t()
    style = style.double()
    style_share = source.double() / source.double().sum()
    style_mean = style @ style_share
    style_covariance = (style - style_mean[:, None]) * style_share @ (style - style_mean[:, None]).t()
    second = (style * style_share) @ style.t()
    root = _psd_root(style_covariance)
    cross = torch.linalg.eigvalsh(root @ covariance @ root).clamp(min=0).sqrt().sum()
    distance = (mean - style_mean).square().sum() + covariance.trace() + style_covariance.trace() - 2 * cross
    return distance / second.trace()


@pytest.mark.parametrize("channels, height, width", [(6, 5, 7), (24, 3, 4)])  # the second: fewer cells than channels
def test_over_regions_it_is_the_weighted_closed_form(channels, height, width):
    generator = torch.Generator().manual_seed(channels * 11 + width)
    features = torch.randn(2, channels, height, width, dtype=torch.float64, generator=generator)
    style = torch.randn(channels, 40, dtype=torch.float64, generator=generator) * 0.7 + 0.3
    weights = torch.rand(height, width, dtype=torch.float64, generator=generator)
    weights[0] = 0  # soft, with a part left out
    source = torch.rand(40, dtype=torch.float64, generator=generator)
    source[:5] = 0
    loss = GaussianW2Loss([style], [1.0], [source], weights)
    got = loss(features)
    for picture in range(2):
        expected = weighted_closed_form(features[picture], weights, style, source)
        torch.testing.assert_close(got[picture], expected, rtol=1e-6, atol=1e-9)
    everywhere = GaussianW2Loss([style], [1.0], [torch.ones(40, dtype=torch.float64)], torch.ones(height, width))
    torch.testing.assert_close(everywhere(features), GaussianW2Loss([style], [1.0])(features), rtol=1e-9, atol=1e-12)
    empty = GaussianW2Loss([style], [1.0], None, torch.zeros(height, width))
    assert torch.equal(empty(features), torch.zeros(2, dtype=torch.float64))
    features.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f: loss(f), (features,), eps=1e-6, atol=1e-6)


def test_style_masks_put_each_style_where_its_mask_says():
    content, style = load_image(CONTENT), load_image(STYLE)
    dark = torch.zeros_like(style) + torch.tensor([0.1, 0.1, 0.4])[:, None, None] * torch.rand(1, *style.shape[1:])
    left = torch.zeros(content.shape[1:])
    left[:, : content.shape[2] // 2] = 1
    options = dict(scales=[40, 56], steps=[8, 8], style_loss="w2", device="cpu", seed=0)
    darker_right = []
    for masks in ([left, 1 - left], [1 - left, left]):
        result = Stylizer(**options, style_masks=masks).run(content, [style, dark]).tensor
        half = result.shape[2] // 2
        darker_right.append(float(result[:, :, : half - 2].mean() - result[:, :, half + 2 :].mean()))
    # The dark style's half is the darker one, whichever half its mask gives it.
    assert darker_right[0] > darker_right[1] + 0.04, darker_right  # ignoring the masks gives equal figures
    sources = Stylizer(**options, style_image_masks=[torch.ones(style.shape[1:])]).run(content, style)
    assert torch.isfinite(sources.tensor).all()


def test_what_it_cannot_do_yet_is_refused_in_one_line():
    with pytest.raises(OptionError, match="'w2' takes each layer's features over the whole picture"):
        nst_ext.StyleOptions(style_loss="w2", tile=64).validate()


def test_the_command_line_takes_it_and_records_it(tmp_path):
    out = tmp_path / "w2.png"
    run = [sys.executable, "-m", "nst_ext", "stylize", CONTENT, STYLE, "-o", str(out), "--size", "40", "--steps", "3"]
    result = subprocess.run([*run, "--style-loss", "w2"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(read_record(out))["settings"]["style_loss"] == "w2"


@pytest.mark.parametrize("name", ["w2", "sliced"])
def test_the_distribution_losses_keep_float32_under_vggs_bfloat16_autocast(name, seed):
    """A run with bfloat16 convolutions scores its features inside autocast: the losses' own
    products (the square root's, the projections) stay float32, the values those of float32."""
    from nst_ext.objective.distribution_losses import SlicedWassersteinLoss, random_directions

    generator = torch.Generator().manual_seed(seed)
    style = torch.relu(torch.randn(16, 300, generator=generator))
    loss = (
        GaussianW2Loss([style], [1.0])
        if name == "w2"
        else SlicedWassersteinLoss([style], [1.0], random_directions(16, 16, seed), 12 * 10)
    )
    features = torch.relu(torch.randn(2, 16, 12, 10, generator=generator))
    plain = loss(features)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = loss(features)
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, plain, rtol=1e-5, atol=1e-7)
