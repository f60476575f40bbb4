"""End-to-end style transfer on small images (CPU, a few steps)."""

import dataclasses
from pathlib import Path

import pytest
import torch

import nst_ext
from nst_ext.io.images import ImageError, load_image, resize, resize_to_long_side
from nst_ext.objective.inputs import starting_image, styles_at_stage
from nst_ext.metrics import distances, subject_and_style
from nst_ext.plan.layers import long_side_shape
from nst_ext.plan.options import OptionError, StyleOptions
from nst_ext.stylizer import Stylizer
from nst_ext.errors import UnknownLayerError

SIZE = 64
CONTENT = "nst_ext/data/astronaut.jpg"
STYLE = "nst_ext/data/swirls.jpg"


@pytest.fixture(scope="module")
def content():
    return load_image(CONTENT)


@pytest.fixture(scope="module")
def style():
    return load_image(STYLE)


@pytest.fixture(scope="module")
def measuring_vgg():
    stylizer = Stylizer(size=SIZE)
    return stylizer.vgg


@pytest.mark.parametrize("backend", ["compiled", "reference"])
def test_stylization_moves_towards_the_style_and_keeps_the_content(backend, content, style, measuring_vgg):
    # The balance these bounds were set for (the defaults' own are tested on the quality panel below).
    with nst_ext.reference_backend(backend == "reference"):
        result = Stylizer(size=SIZE, steps=40, style_weight=5.0).run(content, style)
    assert result.tensor.shape == (3, SIZE, SIZE) and not result.interrupted
    assert 0 <= result.tensor.min() and result.tensor.max() <= 1
    totals = [entry["total"] for entry in result.history]
    assert totals[-1] < 0.2 * totals[0]
    start = resize_to_long_side(content, SIZE)
    content_before, style_before = distances(measuring_vgg, start, content, style)
    content_after, style_after = distances(measuring_vgg, result.tensor, content, style)
    assert style_after < style_before / 10, (style_before, style_after)
    assert content_before == 0.0 and content_after < 0.5, content_after


def test_compiled_and_reference_backends_agree(content, style):
    runs = []
    for use_reference in (False, True):
        with nst_ext.reference_backend(use_reference):
            runs.append(Stylizer(size=SIZE, steps=3, mixed_precision=False).run(content, style).history)
    for compiled, ref in zip(*runs):
        assert compiled["total"] == pytest.approx(ref["total"], rel=1e-3)


def test_adam_optimizer_lowers_the_loss(content, style):
    result = Stylizer(size=SIZE, steps=30, optimizer="adam", learning_rate=0.03).run(content, style)
    assert result.history[-1]["total"] < 0.5 * result.history[0]["total"]


def test_seed_makes_noise_runs_reproducible(content, style, device, monkeypatch):
    """Bit-equal on the CPU; on a GPU with cuDNN restricted to deterministic algorithms (its
    benchmark mode, which the stylizer turns on, may otherwise pick non-deterministic ones)."""
    if device == "cuda":
        monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)

    def run(seed):
        return Stylizer(size=SIZE, steps=4, init="noise", seed=seed, device=device).run(content, style).tensor

    first, again, other = run(3), run(3), run(4)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_init_from_a_given_image(content, style):
    gray = torch.full((3, 30, 40), 0.5)
    result = Stylizer(size=SIZE, steps=1, init=gray).run(content, style)
    first_image = result.history[0]
    plain = Stylizer(size=SIZE, steps=1).run(content, style).history[0]
    assert first_image["content"] > 0 and plain["content"] == 0  # started from the gray image, not the content


@pytest.mark.parametrize("init", ["content", "tensor"])
def test_a_run_leaves_its_input_tensors_alone(content, style, init):
    """The stage optimises its starting image in place: at the content's own size that image would
    be the content itself (or the caller's init) unless it is a copy."""
    picture = resize(content, (SIZE, SIZE)).clone()
    start = torch.full((3, SIZE, SIZE), 0.5)
    kept_picture, kept_start = picture.clone(), start.clone()
    stylizer = Stylizer(size=SIZE, scales=[SIZE], steps=3, init=init if init == "content" else start)
    result = stylizer.run(picture, style)
    assert len(result.history) == 3 and not torch.equal(
        result.tensor, kept_picture if init == "content" else kept_start
    )
    assert torch.equal(picture, kept_picture) and torch.equal(start, kept_start)
    initial = starting_image(stylizer.options, picture, None, None, torch.Generator(), None, stylizer.device)
    assert torch.equal(initial[0].cpu(), kept_picture if init == "content" else kept_start)
    assert initial.untyped_storage().data_ptr() not in (
        picture.untyped_storage().data_ptr(),
        start.untyped_storage().data_ptr(),
    )


def test_multiple_styles_blend(content, style, monkeypatch):
    # Runs compared to 1e-5: cuDNN restricted to deterministic algorithms where a GPU runs them.
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    blue = torch.zeros(3, 64, 64)
    blue[2] = 1.0
    only_first = Stylizer(size=SIZE, steps=5, style_blend_weights=[1, 0]).run(content, [style, blue]).tensor
    single = Stylizer(size=SIZE, steps=5).run(content, style).tensor
    mixed = Stylizer(size=SIZE, steps=5, style_blend_weights=[1, 1]).run(content, [style, blue]).tensor
    assert torch.allclose(only_first, single, atol=1e-5)
    assert (mixed - single).abs().mean() > 1e-3


@pytest.mark.parametrize(
    "mode",
    [
        dict(preserve_color="luminance"),
        dict(preserve_color="luminance", color_space="lab"),
        dict(preserve_color="histogram"),
        dict(color_transfer="cholesky"),
        dict(color_transfer="histogram"),
    ],
    ids=lambda mode: "-".join(mode.values()),
)
def test_colour_preservation_follows_the_content(mode, content):
    red_content = content.clone()
    red_content[0] = red_content[0] * 0.5 + 0.5
    red_content[2] *= 0.3
    blue_style = torch.rand(3, 64, 64) * 0.3
    blue_style[2] += 0.7
    plain = Stylizer(size=SIZE, steps=15, style_weight=50).run(red_content, blue_style).tensor
    kept = Stylizer(size=SIZE, steps=15, style_weight=50, **mode).run(red_content, blue_style).tensor
    target_means = resize_to_long_side(red_content, SIZE).mean((1, 2))
    plain_error = (plain.mean((1, 2)) - target_means).abs().max()
    kept_error = (kept.mean((1, 2)) - target_means).abs().max()
    assert kept_error < 0.06 and kept_error < plain_error / 2, (kept_error, plain_error)


def test_multiscale_runs_coarse_to_fine(content, style):
    result = Stylizer(scales=[32, 64], steps=[4, 3]).run(content, style)
    assert result.tensor.shape == (3, 64, 64)
    assert [entry["stage"] for entry in result.history] == [0] * 4 + [1] * 3
    # The fine stage starts from the upscaled coarse result, not from the content: its content loss is not 0.
    assert result.history[4]["content"] > 0


def test_interrupt_keeps_the_best_image(content, style):
    def stop_at_step_three(progress):
        if progress.step == 3:
            raise KeyboardInterrupt

    result = Stylizer(size=SIZE, steps=50).run(content, style, callback=stop_at_step_three)
    assert result.interrupted and len(result.history) == 3
    assert torch.isfinite(result.tensor).all() and result.tensor.shape == (3, SIZE, SIZE)


@pytest.fixture
def effects_restored():
    """The process-wide effects as they were after the test (nst_ext.plan.effects)."""
    before = nst_ext.allow_process_effects()
    yield
    nst_ext.allow_process_effects(**dataclasses.asdict(before))


@pytest.mark.parametrize("checkpointing", [False, True])
def test_checkpointing_on_the_cpu_hands_freed_memory_back_at_once(
    content, style, checkpointing, monkeypatch, effects_restored
):
    """The plan estimates a checkpointed step as one whose freed memory goes back to the system at
    once (nst_ext.plan.memory), whether the budget or the caller chose checkpointing: the run must then
    make it so where allowed. Without checkpointing, and with room in the budget, the allocator keeps its default."""
    calls = []
    monkeypatch.setattr("nst_ext.stylizer.release_freed_memory_promptly", lambda: calls.append(True) or True)
    nst_ext.allow_process_effects()
    Stylizer(size=SIZE, scales=[SIZE], steps=1, device="cpu", checkpointing=checkpointing).run(content, style)
    assert calls == ([True] if checkpointing else [])


def test_a_library_caller_gets_no_process_wide_effect_unless_it_asks(content, style, monkeypatch, effects_restored):
    """Imported, nst_ext leaves the allocator and the machine's cache file alone; a plan that counts on
    prompt release says once that it was not allowed. Allowed, the run does both."""
    calls = []
    monkeypatch.setattr("nst_ext.stylizer.release_freed_memory_promptly", lambda: calls.append("release") or True)
    monkeypatch.setattr("nst_ext.stylizer.algorithm_cache.load_once", lambda: calls.append("load"))
    monkeypatch.setattr("nst_ext.stylizer.algorithm_cache.save", lambda: calls.append("save"))
    monkeypatch.setattr("nst_ext.plan.effects._warned_about_memory", False)
    nst_ext.allow_process_effects(algorithm_cache=False, prompt_memory_release=False, cudnn_autotune=False)
    with pytest.warns(RuntimeWarning, match="allow_process_effects"):
        Stylizer(size=SIZE, scales=[SIZE], steps=1, device="cpu", checkpointing=True).run(content, style)
    assert calls == []
    nst_ext.allow_process_effects()
    Stylizer(size=SIZE, scales=[SIZE], steps=1, device="cpu", checkpointing=True).run(content, style)
    assert calls == ["load", "release", "save"]


@pytest.mark.parametrize("draw", [2, 22])
def test_no_step_throws_the_picture_out_of_range(draw):
    """Draws of the source-masked setting (benchmarks/lbfgs_step_bound.py) on which an unbounded
    L-BFGS step moved the picture by 3.6 RMS, most pixels past 0 or 1, and the 64 px stage ended at
    ten times its starting loss; bounded, the stage descends (BENCHMARKS.md, "L-BFGS's longest step")."""
    from lbfgs_step_bound import source_masked_setting

    content, styles, _, options = source_masked_setting(draw)
    totals = [
        entry["total"] for entry in Stylizer(**{**options, "scales": [64], "steps": [30]}).run(content, styles).history
    ]
    assert totals[-1] < 0.5 * totals[0], totals


def test_stylize_returns_pil_for_paths_and_tensor_for_tensors(content):
    image = nst_ext.stylize(CONTENT, STYLE, size=32, steps=1, style_layers=["relu1_1", "relu2_1"])
    assert image.size == (32, 32) and image.mode == "RGB"
    tensor = nst_ext.stylize(content, STYLE, size=32, steps=1, style_layers=["relu1_1", "relu2_1"])
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (3, 32, 32)


def test_image_too_small_for_the_layers(style):
    with pytest.raises(ImageError, match=r"too small for layer relu5_1, which needs at least 16 pixels"):
        Stylizer(size=8, steps=1).run(torch.rand(3, 8, 8), style)


@pytest.mark.parametrize(
    "options,error,message",
    [
        (dict(style_layers=["relu9_1"]), UnknownLayerError, r"unknown style layer 'relu9_1'.*nst-ext layers"),
        (dict(content_layers=["conv4_9"]), UnknownLayerError, r"unknown content layer 'conv4_9'"),
        (dict(style_layer_weights=[1, 2]), OptionError, r"2 style layer weights given for 5 style layers"),
        (dict(optimizer="sgd"), OptionError, r"optimizer must be 'lbfgs' or 'adam'"),
        (dict(steps=0), OptionError, r"steps must be a positive whole number"),
        (dict(scales=[64, 32]), OptionError, r"scales must grow from coarse to fine"),
        (dict(scales=[32, 64], steps=[1, 2, 3]), OptionError, r"steps lists 3 values but there are 2 scales"),
        (dict(style_weight=-1), OptionError, r"style_weight must be a non-negative number"),
        (dict(preserve_color="sepia"), OptionError, r"preserve_color must be"),
        (dict(device="tpu"), OptionError, r"device must be 'auto', 'cpu' or 'cuda"),
        (dict(colour=1), OptionError, r"unknown option\(s\) colour"),
    ],
)
def test_bad_options(options, error, message):
    with pytest.raises(error, match=message):
        Stylizer(**options)


def test_style_blend_weights_must_match_the_styles(content, style):
    with pytest.raises(OptionError, match=r"3 style blend weights given for 2 style images"):
        Stylizer(size=SIZE, steps=1, style_blend_weights=[1, 1, 1]).run(content, [style, style])


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_asked_for_without_a_gpu():
    with pytest.raises(OptionError, match=r"no CUDA GPU is available here; use device=cpu"):
        Stylizer(device="cuda")


def test_mixed_precision_keeps_the_picture(content, style, device):
    from nst_ext.plan.options import cpu_has_native_bfloat16

    if device == "cpu" and not cpu_has_native_bfloat16():
        with pytest.raises(OptionError, match=r"needs native bfloat16"):
            Stylizer(size=SIZE, steps=1, mixed_precision=True, device="cpu")
        return
    full = Stylizer(size=SIZE, steps=20, device=device, mixed_precision=False).run(content, style)
    mixed = Stylizer(size=SIZE, steps=20, device=device, mixed_precision=True).run(content, style)
    assert mixed.history[-1]["total"] == pytest.approx(full.history[-1]["total"], rel=0.15)
    assert (mixed.tensor - full.tensor).abs().mean() < 0.05


def test_mixed_precision_default_is_on_where_bfloat16_is_native(device):
    from nst_ext.plan.options import cpu_has_native_bfloat16

    stylizer = Stylizer(size=SIZE, device=device)
    native = torch.cuda.is_bf16_supported() if device == "cuda" else cpu_has_native_bfloat16()
    assert stylizer.mixed_precision == native
    assert Stylizer(size=SIZE, device=device, mixed_precision=False).mixed_precision is False


def test_bfloat16_convolutions_cast_their_weights_once_and_follow_changes(device):
    """Under bfloat16 autocast VGG reads bfloat16 copies of its weights made once (nst_ext.model.vgg):
    the features are bit for bit those of the modules under autocast, which casts the weights at
    every call, and a weight changed in place is copied again. On a GPU, where cuDNN may pick
    another algorithm for another call, to bfloat16's rounding (a stale copy of the changed
    weight would be off by tens of percent)."""
    vgg = Stylizer(size=SIZE, device=device, mixed_precision=False).vgg
    image = torch.rand(2, 3, 21, 26, generator=torch.Generator().manual_seed(3)).to(device)
    wanted = ("relu1_1", "relu3_1", "relu4_2")

    def by_modules():
        x, out = vgg.normalize(image), {}
        for name, layer in zip(vgg.names, vgg.layers):
            x = layer(x)
            if name in wanted:
                out[name] = x
        return out

    for change in range(2):
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
            cast_once, expected = vgg(image, wanted), by_modules()
        for name in wanted:
            assert cast_once[name].dtype == torch.bfloat16
            if device == "cpu":
                assert torch.equal(cast_once[name], expected[name]), (name, change)
            else:
                scale = expected[name].float().abs().max().item()
                torch.testing.assert_close(
                    cast_once[name].float(),
                    expected[name].float(),
                    rtol=2e-2,
                    atol=2e-2 * scale,
                    msg=lambda m: f"{name}, change {change}: {m}",
                )
        with torch.no_grad():
            vgg.layers[2].weight.mul_(1.5)  # conv1_2, in place
    assert vgg(image, ["relu1_1"])["relu1_1"].dtype == torch.float32  # without autocast: the float32 weights


def test_progress_reads_the_losses_only_when_asked(content, style):
    seen = []

    def callback(progress):
        seen.append(progress)

    result = Stylizer(size=SIZE, steps=3).run(content, style, callback=callback)
    assert [p.step for p in seen] == [1, 2, 3]
    assert all(p._values is None for p in seen)  # nothing was copied to the host yet
    assert [p.total_loss for p in seen] == [entry["total"] for entry in result.history]
    assert seen[0].content_loss == result.history[0]["content"] and seen[0]._values is not None


def test_the_objective_scores_the_picture_as_saved(content, style):
    """L-BFGS moves pixels freely; the loss is that of the picture clamped to [0, 1], as it is saved,
    and a pixel outside gets no gradient."""
    stylizer = Stylizer(size=SIZE)
    start, objective = stylizer.objective(content, style)
    generator = torch.Generator().manual_seed(3)
    image = (start.cpu() + 0.6 * torch.randn(start.shape, generator=generator)).to(start.device)
    outside = (image < 0) | (image > 1)
    assert 0.1 < outside.float().mean() < 0.9
    leaf = image.clone().requires_grad_(True)
    terms = objective(leaf)
    terms["total"].backward()
    with torch.no_grad():
        clamped = objective(image.clamp(0, 1))
    # The same picture twice; the tolerance leaves room for a GPU's bfloat16 convolutions choosing
    # another algorithm between the calls (unclamped, the total is twice the clamped one).
    for name in ("content", "style", "tv", "total"):
        assert float(terms[name].detach()) == pytest.approx(float(clamped[name]), rel=1e-3), name
    assert torch.all(leaf.grad[outside] == 0) and leaf.grad[~outside].abs().sum() > 0
    # clamp_in_loss=False (runs before 2026-11-29) scores the pixels as they are.
    _, unclamped_objective = Stylizer(size=SIZE, clamp_in_loss=False).objective(content, style)
    leaf = image.clone().requires_grad_(True)
    unclamped = unclamped_objective(leaf)
    unclamped["total"].backward()
    assert float(unclamped["total"].detach()) > 1.5 * float(clamped["total"]) and leaf.grad[outside].abs().sum() > 0


def test_a_run_returns_the_picture_whose_loss_it_reports(content, style):
    # A strong style pushes pixels outside [0, 1]; the picture returned (clamped) is the best one
    # the run scored, so its loss is the lowest of the history.
    stylizer = Stylizer(size=SIZE, steps=30, style_weight=20.0)
    result = stylizer.run(content, style)
    _, objective = stylizer.objective(content, style)
    with torch.no_grad():
        saved = float(objective(result.tensor.unsqueeze(0).to(stylizer.device))["total"])
    # On a GPU the run replays a CUDA graph and bfloat16 sums may differ in order: a looser bound there
    # (a picture scored unclamped is 9% off).
    tolerance = 1e-3 if stylizer.device.type == "cpu" else 5e-3
    assert saved == pytest.approx(min(entry["total"] for entry in result.history), rel=tolerance)


def test_best_image_is_kept_on_the_device_without_reading_the_loss(device):
    from nst_ext.stylizer import BestImage

    first = torch.zeros(1, 3, 4, 4, device=device)
    best = BestImage(first)
    buffer = best.image.data_ptr()  # kept in place: a print-sized picture has no second copy
    for loss, value in ((5.0, 1.0), (7.0, 2.0), (float("nan"), 3.0), (4.0, 4.0), (6.0, 5.0)):
        best.offer(torch.tensor(loss, device=device), torch.full_like(first, value))
    assert best.image.device == first.device and torch.equal(best.image, torch.full_like(first, 4.0))
    assert best.loss.item() == 4.0 and best.image.data_ptr() == buffer


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_cuda_graph_gives_the_eager_loss_and_gradient(content, style):
    stylizer = Stylizer(size=SIZE, device="cuda")
    start, objective = stylizer.objective(content, style)
    results = {}
    for graph in (False, True):
        image = start.clone().requires_grad_(True)
        evaluate = objective.evaluator(image, graph=graph)
        for _ in range(2):  # a replay after the first gives the same again
            terms = evaluate()
        results[graph] = (terms.cpu(), image.grad.detach().cpu().clone())
    # The same kernels replayed: equal up to cuDNN's choice of algorithms (bfloat16 convolutions).
    torch.testing.assert_close(results[True][0], results[False][0], rtol=1e-3, atol=1e-6)
    grad_scale = results[False][1].abs().max().item()
    torch.testing.assert_close(results[True][1], results[False][1], rtol=1e-2, atol=1e-2 * grad_scale)
    lbfgs = Stylizer(size=SIZE, steps=5, device="cuda", cuda_graph=True).run(content, style).history
    eager = Stylizer(size=SIZE, steps=5, device="cuda", cuda_graph=False).run(content, style).history
    assert [e["total"] for e in lbfgs] == pytest.approx([e["total"] for e in eager], rel=1e-3)


PANEL = Path(__file__).resolve().parents[1] / "benchmarks" / "panel"


@pytest.mark.parametrize("content_name,style_name", [("hopper", "gravel"), ("hubble", "brick"), ("chelsea", "ihc")])
def test_defaults_keep_the_subject_and_take_the_style(content_name, style_name):
    """Quality-panel pairs at a small size, the bounds measured there at 96 px (BENCHMARKS.md,
    "Defaults that take the style"): the subject stays nearer the content than the style is
    (subject < 0.8, the goal at 512 px; 0.44-0.74 measured at style weight 20) while the style
    statistics move nearly all the way (style < 0.15; 0.009-0.093; at the earlier weight 2.9
    0.04-0.15)."""
    content, style = load_image(PANEL / f"{content_name}.jpg"), load_image(PANEL / f"{style_name}.jpg")
    judge = Stylizer(size=96, device="cpu", mixed_precision=False).vgg
    result = Stylizer(size=96, steps=50, device="cpu", mixed_precision=False).run(content, style).tensor
    subject, style_left = subject_and_style(judge, result, content, style)
    assert subject < 0.8 and style_left < 0.15, (subject, style_left)


def test_without_style_normalization_a_far_texture_buries_the_subject():
    """What the normalisation fixes: the photographic gravel texture, far from the portrait in
    Gram terms, takes it over (subject 0.94 measured) when the style term is not normalised."""
    content, style = load_image(PANEL / "hopper.jpg"), load_image(PANEL / "gravel.jpg")
    judge = Stylizer(size=96, device="cpu", mixed_precision=False).vgg
    result = Stylizer(size=96, steps=50, device="cpu", mixed_precision=False, normalize_style=False).run(content, style)
    subject, _ = subject_and_style(judge, result.tensor, content, style)
    assert subject > 0.7, subject


def test_a_finer_stage_starts_with_the_contents_detail():
    """A coarse result equal to the coarse content starts the finer stage at the content itself
    (its detail added back), not at a blurred enlargement; off, or from noise, it is the enlargement."""
    torch.manual_seed(0)
    fine = torch.rand(3, 40, 56)
    coarse = resize_to_long_side(fine, 28)
    generator = torch.Generator().manual_seed(0)
    start = starting_image(StyleOptions(size=56), fine, coarse[None], coarse, generator, None, torch.device("cpu"))
    torch.testing.assert_close(start[0], fine, atol=1e-6, rtol=0)
    enlarged = resize(coarse, (40, 56))
    assert (enlarged - fine).abs().mean() > 0.05  # the enlargement alone is far from the content
    for options in (dict(content_detail=False), dict(init="noise")):
        start = starting_image(
            StyleOptions(size=56, **options), fine, coarse[None], coarse, generator, None, torch.device("cpu")
        )
        torch.testing.assert_close(start[0], enlarged)


def test_each_stage_starts_with_a_first_step_of_the_set_size(device, seed):
    """Every stage's first L-BFGS update moves the picture by LBFGS_FIRST_STEP_RMS (root mean
    square), not by torch's 1/‖g‖₁ (1e-6 of a pixel at 512 px, under bfloat16's rounding)."""
    from nst_ext.plan.options import LBFGS_FIRST_STEP_RMS

    content = 0.25 + 0.5 * torch.rand(3, 40, 48)  # mid-grey: the step is not clamped away in the snapshots
    style = torch.rand(3, 36, 36)
    snapshots = {}

    def keep(progress):
        if progress.step <= 2:
            snapshots[(progress.stage, progress.step)] = progress.image()

    Stylizer(scales=[32, 48], steps=[3, 3], device=device).run(content, style, callback=keep)
    for stage in (0, 1):
        moved = (snapshots[(stage, 2)] - snapshots[(stage, 1)]).square().mean().sqrt().item()
        assert moved == pytest.approx(LBFGS_FIRST_STEP_RMS, rel=1e-3), f"stage {stage}"


@pytest.mark.parametrize("pictures", [1, 2])
@pytest.mark.parametrize("mixed_precision", [False, True])
def test_every_gradient_in_vgg_stays_channels_last(pictures, mixed_precision, device, monkeypatch):
    """The network runs channels-last; a loss whose backward hands back an NCHW gradient (an
    indexed slice, a mean over a flattened view) makes every later gradient sum and ReLU
    backward a strided pass (a sixth of a 512 px step on the CPU, BENCHMARKS.md). Every
    gradient reaching a content or style layer must keep the features' layout."""
    from nst_ext.objective import Objective
    from nst_ext.plan.options import cpu_has_native_bfloat16

    if mixed_precision and device == "cpu" and not cpu_has_native_bfloat16():
        pytest.skip("no native bfloat16 on this CPU")
    stylizer = Stylizer(size=40, scales=[40], steps=1, device=device, mixed_precision=mixed_precision, cuda_graph=False)
    torch.manual_seed(pictures)
    contents = torch.rand(pictures, 3, 40, 36)
    styles = styles_at_stage(stylizer.options, [torch.rand(3, 33, 45)], [long_side_shape(33, 45, 40)])
    objective = Objective(stylizer.network, stylizer.options, contents, styles, [1.0])
    layouts = {}
    run_layers = stylizer.vgg.run_layers

    def hooked(x, start, stop, wanted):
        x, outputs = run_layers(x, start, stop, wanted)
        for name, features in outputs.items():
            assert features.is_contiguous(memory_format=torch.channels_last), name
            features.register_hook(
                lambda grad, name=name: layouts.__setitem__(name, grad.is_contiguous(memory_format=torch.channels_last))
            )
        return x, outputs

    monkeypatch.setattr(stylizer.vgg, "run_layers", hooked)
    leaves = [content[None].to(device).requires_grad_(True) for content in contents]
    objective.evaluator(leaves)()
    assert set(layouts) == set(stylizer.options.content_layers) | set(stylizer.options.style_layers)
    assert all(layouts.values()), layouts


def test_per_picture_mean_is_the_mean_and_keeps_the_gradients_layout():
    from nst_ext.objective.losses import per_picture_mean

    torch.manual_seed(7)
    values = torch.randn(3, 5, 7, 9, dtype=torch.float64)
    torch.testing.assert_close(per_picture_mean(values), values.flatten(1).mean(1), rtol=1e-12, atol=0)
    odd = values.transpose(1, 3)  # not contiguous
    torch.testing.assert_close(per_picture_mean(odd), odd.reshape(3, -1).mean(1), rtol=1e-12, atol=0)
    leaf = values.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    per_picture_mean(leaf.square()).sum().backward()
    assert leaf.grad.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(leaf.grad, 2 * values / values[0].numel(), rtol=1e-12, atol=0)
