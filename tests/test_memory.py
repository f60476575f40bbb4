"""Large pictures: the memory plan (nst_ext.plan.memory), activation checkpointing
(nst_ext.plan.activations), the L-BFGS history within a budget, and VGG spread over several devices
(two CPU "devices" here)."""

import os

import pytest
import torch

import nst_ext
from nst_ext.errors import InputError, OptionError
from nst_ext.plan.distribution_memory import (
    SLICED_REGION_STEP_BYTES,
    SLICED_REGION_STYLE_BYTES,
    SLICED_STEP_BYTES,
    W2_STEP_BYTES,
    W2_STEP_MATRICES,
)
from nst_ext.plan.layers import LAYER_INDEX, LAYERS, layer_elements
from nst_ext.plan.budget import parse_size
from nst_ext.plan import tiles
from nst_ext.plan.activations import choose_segments, saved_bytes_per_layer, split_layers
from nst_ext.plan.memory import (
    HELD_IMAGES,
    MASKED_GRAM_COPIES_PER_REGION,
    LBFGS_HISTORY,
    MIN_LBFGS_HISTORY,
    TRANSIENT_PER_LARGEST_ACTIVATION,
    budget_for,
    plan_stage,
    run_budget,
    usable_share,
)
from nst_ext.plan.options import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS
from nst_ext.plan.run import fitting_batch_size
from nst_ext.stylizer import Stylizer

DATA = os.path.join(os.path.dirname(nst_ext.__file__), "data")
CONTENT, STYLE = os.path.join(DATA, "astronaut.jpg"), os.path.join(DATA, "swirls.jpg")


def default_plan(size, budget=None, steps=20, **overrides):
    return plan_stage(
        size,
        size,
        DEFAULT_CONTENT_LAYERS,
        DEFAULT_STYLE_LAYERS,
        steps,
        [(size, size)],
        budget,
        "cpu",
        activation_bytes=2,
        **overrides,
    )


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2.5GiB", int(2.5 * 2**30)),
        ("8G", 8 * 2**30),
        ("512MiB", 512 * 2**20),
        ("8GB", 8 * 10**9),
        ("1000", 1000),
        (" 3 gib ", 3 * 2**30),
        ("1.5k", 1536),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "2.5 parsecs", "-1G", "0", "1e999G", "two gigs"])
def test_parse_size_refuses_nonsense(text):
    with pytest.raises(OptionError, match="memory size"):
        parse_size(text)


def test_saved_bytes_follow_the_layers():
    saved = saved_bytes_per_layer(64, 48, "relu2_1", ["relu1_1", "relu2_1"], 2)
    # conv1_1 (the input, 3 channels), relu1_1, conv1_2 (not kept: the ReLU overwrites it), relu1_2,
    # pool1 (kept: conv2_1 reads it), conv2_1, relu2_1
    assert saved == [3 * 64 * 48 * 2, 64 * 64 * 48 * 2, 0, 64 * 64 * 48 * 2, 64 * 32 * 24 * 2, 0, 128 * 32 * 24 * 2]
    tapped_conv = saved_bytes_per_layer(64, 48, "relu2_1", ["conv1_2", "relu2_1"], 2)
    assert tapped_conv[2] == 64 * 64 * 48 * 2  # a loss reads conv1_2: its output stays


def test_checkpoint_segments_cover_the_layers_and_keep_less():
    saved = saved_bytes_per_layer(1024, 1024, "relu5_1", list(DEFAULT_STYLE_LAYERS), 2)
    outputs = [1] * len(saved)
    segments, peak = choose_segments(saved, outputs)
    assert segments[0][0] == 0 and segments[-1][1] == len(saved)
    assert all(a[1] == b[0] for a, b in zip(segments, segments[1:]))
    assert len(segments) > 1 and peak < sum(saved) * 0.7
    forced, _ = choose_segments(saved, outputs, breaks=[LAYER_INDEX["relu3_1"]])
    assert LAYER_INDEX["relu3_1"] in [start for start, _ in forced]
    assert choose_segments([0, 0, 0], [5, 5, 5]) == ([(0, 3)], 0)  # nothing kept: one segment, no peak


def test_plan_chooses_the_cheapest_lever_that_fits():
    free = default_plan(1024)
    assert not free.checkpointing and free.history_size == 20 and not free.budget_limited  # capped at the steps
    assert default_plan(1024, steps=500).history_size == LBFGS_HISTORY
    checkpointed = default_plan(1024, checkpointing=True)
    assert checkpointed.activations < free.activations and checkpointed.total < free.total
    between = default_plan(1024, budget=budget_for((free.total + checkpointed.total) // 2))
    assert between.checkpointing and between.history_size == 20 and between.budget_limited
    below_checkpointed = budget_for(checkpointed.total - 4 * 3 * 1024 * 1024 * 4)
    tiled = default_plan(1024, budget=below_checkpointed)  # tiles keep the whole history
    assert tiled.tile_edge and tiled.history_size == 20 and tiled.budget_limited
    assert tiled.total <= usable_share(below_checkpointed) and "in tiles of" in tiled.describe()
    # Untiled, the pairs go to bfloat16 before there are fewer of them.
    compact = default_plan(1024, budget=below_checkpointed, tile=0)
    assert compact.checkpointing and compact.history_bfloat16 and compact.history_size == 20
    assert not tiled.history_bfloat16 and "L-BFGS history in bfloat16" in compact.describe()
    assert not compact.content_bfloat16  # the pairs before the content targets
    shorter = default_plan(1024, budget=below_checkpointed, tile=0, history_bfloat16=False, content_bfloat16=False)
    assert shorter.checkpointing and MIN_LBFGS_HISTORY <= shorter.history_size < 20 and not shorter.tile_edge
    assert not shorter.history_bfloat16 and not shorter.content_bfloat16
    below_compact = budget_for(compact.total - 4 * 3 * 1024 * 1024 * 2)
    shorter_compact = default_plan(1024, budget=below_compact, tile=0)
    assert shorter_compact.history_bfloat16 and MIN_LBFGS_HISTORY <= shorter_compact.history_size < 20
    assert default_plan(1024, budget=budget_for(free.total)) == free  # fits: nothing changes
    # A budget equal to the estimate does not fit it: a whole run's peak can be above the estimate
    # (a default 1024 px run planned to the edge of 2.5 GiB peaked 28 MiB over it).
    assert default_plan(1024, budget=free.total).budget_limited
    assert usable_share(budget_for(free.total)) >= free.total > usable_share(budget_for(free.total) - 1)
    with pytest.raises(OptionError, match=r"1024x1024 stage needs at least .* more than the 100 MiB budget"):
        default_plan(1024, budget=100 * 2**20)


@pytest.mark.parametrize("checkpointing, tile", [(False, 0), (True, 0), (False, 256), (True, 256)])
def test_the_estimate_counts_the_held_images_and_the_transient_of_its_allocator(checkpointing, tile):
    plan = default_plan(1024, checkpointing=checkpointing, tile=tile)
    assert plan.held_images == HELD_IMAGES * 3 * 1024 * 1024 * 4  # the best image, the content image
    assert plan.total == (
        plan.activations + plan.history + plan.targets + plan.transient + plan.runtime + plan.held_images
    )
    # Under checkpointing or tiles freed memory is released promptly (nst_ext.stylizer): the smaller
    # transient, per the largest activation VGG keeps at once (one tile's with its halo).
    layers = [*DEFAULT_CONTENT_LAYERS, *DEFAULT_STYLE_LAYERS]
    seen = min(1024, plan.tile_edge + 2 * tiles.halo(layers)) if tile else 1024
    saved = saved_bytes_per_layer(seen, seen, "relu5_1", layers, 2)
    largest = max(max(saved[start:stop]) for start, stop in plan.segments)
    assert plan.transient == int(TRANSIENT_PER_LARGEST_ACTIVATION[checkpointing or bool(tile)] * largest)
    assert plan.releases_freed_memory_promptly == (checkpointing or bool(tile))  # the run does so (test_stylizer)


def test_bfloat16_pairs_take_half_the_pairs_memory_and_can_be_forced():
    pixels = 3 * 1024 * 1024
    full, compact = default_plan(1024), default_plan(1024, history_bfloat16=True)
    assert not full.history_bfloat16 and compact.history_bfloat16 and compact.history_size == full.history_size
    # 20 pairs of two vectors in 2 bytes instead of 4, and one pair vector widened at a time
    assert full.history - compact.history == 2 * 20 * pixels * 2 - pixels * 4
    with pytest.raises(OptionError, match="in bfloat16"):
        default_plan(1024, budget=100 * 2**20, history_bfloat16=True)


@pytest.mark.parametrize("tile", [0, 256])
def test_bfloat16_content_targets_take_half_their_memory_and_can_be_forced(tile):
    elements = sum(layer_elements(LAYER_INDEX[name], 1024, 1024) for name in DEFAULT_CONTENT_LAYERS)
    full = default_plan(1024, tile=tile)
    compact = default_plan(1024, tile=tile, content_bfloat16=True)
    assert not full.content_bfloat16 and compact.content_bfloat16 and not compact.history_bfloat16
    # Stored in 2 bytes instead of 4; untiled, a step also widens the whole target to float32.
    assert full.targets - compact.targets == (2 if tile else -2) * elements
    with pytest.raises(OptionError, match="content targets in bfloat16"):
        default_plan(1024, budget=100 * 2**20, content_bfloat16=True)
    if not tile:  # untiled the lever saves nothing: never chosen, down to the fewest pairs
        squeezed = default_plan(
            1024,
            tile=0,
            budget=budget_for(default_plan(1024, tile=0, history_bfloat16=True, checkpointing=True).total - 1),
        )
        assert squeezed.history_size < full.history_size and not squeezed.content_bfloat16
        return
    # In tiles: the pairs in bfloat16 first, then the content targets too, then fewer pairs.
    pairs = default_plan(1024, tile=tile, budget=budget_for(full.total - 1))
    assert pairs.history_bfloat16 and not pairs.content_bfloat16 and pairs.history_size == full.history_size
    both = default_plan(1024, tile=tile, budget=budget_for(pairs.total - 1))
    assert both.history_bfloat16 and both.content_bfloat16 and both.history_size == full.history_size
    assert "content targets in bfloat16" in both.describe()
    shorter = default_plan(1024, tile=tile, budget=budget_for(both.total - 1))
    assert shorter.history_bfloat16 and shorter.content_bfloat16 and shorter.history_size < full.history_size
    # Forced off, the plan goes to fewer pairs rather than round the targets.
    squeezed = default_plan(1024, tile=tile, budget=budget_for(pairs.total - 1), content_bfloat16=False)
    assert not squeezed.content_bfloat16 and squeezed.history_size < full.history_size


@pytest.mark.parametrize("forced", [True, False])
@pytest.mark.parametrize(
    "module, name, option, plan_field, stored_dtype",
    [
        ("nst_ext.optimize", "LBFGS", "lbfgs_history_bfloat16", "history_bfloat16", lambda made: made.steps.dtype),
        (
            "nst_ext.objective.stage",
            "ContentLoss",
            "content_target_bfloat16",
            "content_bfloat16",
            lambda made: made.target.dtype,
        ),
    ],
    ids=["pairs", "content-targets"],
)
def test_a_run_keeps_its_state_as_forced(monkeypatch, forced, module, name, option, plan_field, stored_dtype):
    import importlib

    where = importlib.import_module(module)
    stored = []

    class Recording(getattr(where, name)):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            stored.append(stored_dtype(self))

    monkeypatch.setattr(where, name, Recording)
    plans = []
    Stylizer(size=48, steps=3, device="cpu", **{option: forced}).run(
        CONTENT, STYLE, callback=lambda progress: plans.append(progress.memory_plan)
    )
    assert stored and set(stored) == {torch.bfloat16 if forced else torch.float32}
    assert {getattr(plan, plan_field) for plan in plans} == {forced}


def test_split_layers_in_proportion_to_free_memory():
    saved = saved_bytes_per_layer(512, 512, "relu5_1", list(DEFAULT_STYLE_LAYERS), 2)
    (start,) = split_layers(saved, [1, 1])
    assert 0 < start < len(saved)
    assert abs(sum(saved[:start]) - sum(saved[start:])) <= max(saved)
    (early,) = split_layers(saved, [1, 9])  # the second device has nine times the room
    assert early < start and sum(saved[:early]) <= 0.1 * sum(saved) + max(saved)
    three = split_layers(saved, [1, 1, 1])
    assert len(three) == 2 and 0 < three[0] < three[1] < len(saved)


def loss_and_gradient(stylizer, plan=None):
    image, objective = stylizer.objective(CONTENT, STYLE, plan=plan)
    image = image.clone().requires_grad_(True)
    terms = objective.evaluator(image)()
    return terms, image.grad.clone(), objective


@pytest.mark.parametrize(
    "mixed_precision",
    [
        False,
        pytest.param(
            True,
            marks=pytest.mark.skipif(
                not nst_ext.plan.options.cpu_has_native_bfloat16(), reason="this CPU has no native bfloat16"
            ),
        ),
    ],
)
def test_checkpointed_step_gives_the_same_loss_and_gradient(mixed_precision):
    stylizer = Stylizer(size=80, device="cpu", mixed_precision=mixed_precision)
    plain_terms, plain_grad, plain = loss_and_gradient(stylizer)
    plan = plan_stage(
        80,
        80,
        stylizer.options.content_layers,
        stylizer.options.style_layers,
        10,
        [(80, 80)],
        None,
        "cpu",
        2,
        checkpointing=True,
    )
    terms, grad, checkpointed = loss_and_gradient(stylizer, plan)
    assert checkpointed.checkpointing and len(checkpointed.segments) > 1 and not plain.checkpointing
    torch.testing.assert_close(terms, plain_terms, rtol=1e-6, atol=0)
    torch.testing.assert_close(grad, plain_grad, rtol=1e-5, atol=1e-9)
    assert grad.abs().sum() > 0


def test_two_cpu_devices_give_the_same_loss_gradient_and_picture():
    one = Stylizer(size=72, steps=6, device="cpu", mixed_precision=False)
    two = Stylizer(size=72, steps=6, devices=["cpu", "cpu"], device_split=["relu2_1"], mixed_precision=False)
    assert two.network.device_starts == [LAYER_INDEX["relu2_1"]]
    terms_one, grad_one, _ = loss_and_gradient(one)
    terms_two, grad_two, objective = loss_and_gradient(two)
    assert objective.segments[1][0] == LAYER_INDEX["relu2_1"]
    torch.testing.assert_close(terms_two, terms_one, rtol=1e-6, atol=0)
    torch.testing.assert_close(grad_two, grad_one, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(two.run(CONTENT, STYLE).tensor, one.run(CONTENT, STYLE).tensor, rtol=0, atol=1e-5)
    automatic = Stylizer(size=72, devices=["cpu", "cpu"], mixed_precision=False)
    assert (
        len(automatic.network.device_starts) == 1 and 0 < automatic.network.device_starts[0] <= LAYER_INDEX["relu5_1"]
    )


def test_a_budget_that_needs_checkpointing_gives_the_same_picture():
    settings = dict(size=64, steps=5, device="cpu", mixed_precision=False)
    stylizer = Stylizer(**settings)
    content_shape, style_shape = (64, 64), (64, 64)  # both sample images are square
    (free,) = stylizer_plans(Stylizer(**settings, scales=[64]), content_shape, [style_shape])
    (checkpointed,) = stylizer_plans(
        Stylizer(**settings, scales=[64], checkpointing=True), content_shape, [style_shape]
    )
    budget = budget_for((free.total + checkpointed.total) // 2)
    limited = Stylizer(**settings, max_memory=budget)
    plans = []
    result = limited.run(CONTENT, STYLE, callback=lambda p: plans.append(p.memory_plan))
    assert plans and all(plan.checkpointing and plan.budget_limited for plan in plans)
    torch.testing.assert_close(result.tensor, stylizer.run(CONTENT, STYLE).tensor, rtol=0, atol=1e-5)


def test_a_size_that_cannot_fit_is_refused_before_work():
    with pytest.raises(
        OptionError, match=r"needs at least .* more than the 1 MiB budget; use a smaller size, a larger max_memory"
    ):
        Stylizer(size=64, device="cpu", max_memory="1MiB").run(
            CONTENT, STYLE, callback=lambda p: pytest.fail("work started")
        )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(max_memory="lots"), "memory size must be a number"),
        (dict(checkpointing="yes"), "checkpointing must be True, False or None"),
        (dict(lbfgs_history=0), "lbfgs_history must be a positive whole number"),
        (dict(lbfgs_history_bfloat16="yes"), "lbfgs_history_bfloat16 must be True, False or None"),
        (dict(content_target_bfloat16="no"), "content_target_bfloat16 must be True, False or None"),
        (dict(devices="cpu"), "devices must be a list"),
        (dict(devices=["cpu", "cpu"], device="cuda"), "disagree"),
        (dict(devices=["cpu", "cpu"], device_split=["relu2_1", "relu3_1"]), "give 1"),
        (dict(devices=["cpu", "cpu", "cpu"], device_split=["relu3_1", "relu2_1"]), "in network order"),
        (dict(devices=["cpu", "cpu"], device_split=["relu9_9"]), "unknown device split layer"),
        (dict(devices=["cpu", "cpu"], device_split=["relu5_2"]), "past the deepest layer used"),
    ],
)
def test_memory_and_device_options_are_checked(overrides, message):
    with pytest.raises(InputError, match=message):
        Stylizer(size=64, **overrides)


def test_one_memory_named_twice_is_budgeted_once():
    for stylizer in (
        Stylizer(size=64, devices=["cpu", "cpu"], max_memory="1GiB"),
        Stylizer(size=64, device="cpu", max_memory="1GiB"),
    ):
        assert run_budget(stylizer.options, stylizer.network) == 2**30


def test_a_batch_of_pictures_scales_what_each_picture_keeps_but_shares_the_style_targets():
    one, three = default_plan(512), default_plan(512, pictures=3)
    assert three.activations == 3 * one.activations and three.history == 3 * one.history
    grams = sum(4 * channels**2 for channels in (64, 128, 256, 512, 512))  # relu1_1 … relu5_1, float32
    assert three.targets - grams == 3 * (one.targets - grams) > 0  # a content target each, one set of Grams


def test_the_batch_size_that_fits_a_budget():
    stylizer = Stylizer(size=256, device="cpu", max_memory="64GiB")
    shape, styles = (192, 256), [(256, 256)]
    assert fitting_batch_size(stylizer.options, stylizer.network, shape, styles, 8) == 8
    needs = [stylizer_plans(stylizer, shape, styles, pictures=n)[-1].total for n in (2, 3)]
    between = Stylizer(size=256, device="cpu", max_memory=str(budget_for((needs[0] + needs[1]) // 2)))
    assert fitting_batch_size(between.options, between.network, shape, styles, 8) == 2  # three would need checkpointing
    assert fitting_batch_size(between.options, between.network, shape, styles, 1) == 1


def stylizer_plans(stylizer, content_shape, style_shapes, pictures=1):
    """Each stage's memory plan for a run of `stylizer` (its options, on its network)."""
    return [stage.memory for stage in stylizer.plan(content_shape, style_shapes, pictures).stages]


def test_the_plan_counts_the_sliced_target_as_the_loss_keeps_it():
    # The plan's share for the sliced targets is the bytes the objective's losses actually hold.
    content, style = torch.rand(3, 40, 56), torch.rand(3, 48, 48)
    stylizer = Stylizer(size=56, style_loss="sliced", device="cpu")
    image, objective = stylizer.objective(content, style)
    held = sum(loss.target.numel() * loss.target.element_size() for _, _, loss in objective.style_terms)
    shape = tuple(image.shape[-2:])
    plans = {
        loss: Stylizer(size=56, style_loss=loss, device="cpu").plan(shape, [(48, 48)]).stages[-1].memory
        for loss in ("gram", "sliced", "w2")
    }
    elements = held // 4
    per_step = SLICED_STEP_BYTES * elements
    assert plans["sliced"].targets - plans["gram"].targets == held + per_step
    matrices = sum(8 * LAYERS[LAYER_INDEX[name]].channels ** 2 for name in DEFAULT_STYLE_LAYERS)  # float64 C × C
    expected = 2 * matrices + W2_STEP_BYTES * elements + W2_STEP_MATRICES * matrices
    assert plans["w2"].targets - plans["gram"].targets == expected


def test_the_plan_counts_the_style_features_a_distribution_loss_keeps_while_its_targets_are_made():
    # Two large style images: Gram's passes over them peak one at a time; a distribution loss keeps
    # the first one's features through the second pass.
    styles = [(1024, 1024), (768, 768)]

    def planned(loss):
        return plan_stage(
            64, 64, DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS, 10, styles, None, "cpu", 4, style_loss=loss
        )

    second = sum(layer_elements(LAYER_INDEX[name], 768, 768) for name in DEFAULT_STYLE_LAYERS)
    assert planned("w2").total - planned("gram").total >= 4 * second
    assert planned("sliced").total > planned("w2").total


def test_with_style_masks_the_plan_counts_a_sliced_loss_per_region_and_its_styles_quantiles():
    styles = [(96, 96), (64, 80)]

    def targets(regions):
        return plan_stage(
            80,
            80,
            DEFAULT_CONTENT_LAYERS,
            DEFAULT_STYLE_LAYERS,
            10,
            styles,
            None,
            "cpu",
            4,
            style_loss="sliced",
            style_regions=regions,
        ).targets

    picture = sum(layer_elements(LAYER_INDEX[name], 80, 80) for name in DEFAULT_STYLE_LAYERS)
    style = sum(layer_elements(LAYER_INDEX[name], h, w) for name in DEFAULT_STYLE_LAYERS for h, w in styles)
    extra = 4 * picture + SLICED_REGION_STYLE_BYTES * style + SLICED_REGION_STEP_BYTES * picture
    assert targets(2) - targets(0) == extra


@pytest.mark.parametrize("style_loss", ["gram", "w2"])
@pytest.mark.parametrize("tile", [0, 96])
def test_with_style_masks_a_masked_gram_s_transients_are_counted_per_region(style_loss, tile):
    # Each region's masked Gram widens the style layers' features to float32 and weighs them, in the
    # forward and the backward pass (csrc/masked.h): without this, a 3-step stage with three regions
    # peaked 22-25% above its plan at 384 and 512 px (BENCHMARKS.md, "Large pictures").
    def plan(regions):
        return plan_stage(
            320,
            280,
            DEFAULT_CONTENT_LAYERS,
            DEFAULT_STYLE_LAYERS,
            10,
            [(96, 96)] * max(1, regions),
            None,
            "cpu",
            2,
            tile=tile,
            pictures=2,
            style_loss=style_loss,
            style_regions=regions,
        )

    alone, masked = plan(0), plan(3)
    edge = masked.tile_edge
    assert edge == alone.tile_edge and bool(edge) == bool(tile)
    reach = edge + 2 * tiles.halo(list(DEFAULT_CONTENT_LAYERS) + list(DEFAULT_STYLE_LAYERS))
    seen = (min(320, reach), min(280, reach)) if edge else (320, 280)
    largest = max(layer_elements(LAYER_INDEX[name], *seen) for name in DEFAULT_STYLE_LAYERS)
    expected = int(MASKED_GRAM_COPIES_PER_REGION * 3 * 2 * largest * 4)
    assert expected >= 3 * 2 * largest * 4  # at least each region's weighted float32 copy
    assert masked.transient - alone.transient == expected
    assert masked.total - alone.total >= expected
