"""The plan of a run (nst_ext.plan.run): computed once from the options, the shapes and the devices,
and what the run then does, stage by stage."""

import pytest
import torch

from nst_ext.errors import OptionError
from nst_ext.plan.layers import long_side_shape
from nst_ext.plan.memory import budget_for
from nst_ext.plan.run import plan_run, stage_shapes
from nst_ext.stylizer import Stylizer

SHALLOW = dict(content_layers=["relu2_1"], style_layers=["relu1_1", "relu2_1"])


def test_the_plan_gives_each_stages_sizes_steps_and_memory():
    stylizer = Stylizer(size=512, style_scale=0.5, device="cpu", max_memory="64GiB")
    plan = stylizer.plan((300, 400), [(600, 500), (90, 120)])
    assert [stage.long_side for stage in plan.stages] == stylizer.options.stage_sizes() == [128, 320, 512]
    assert [stage.steps for stage in plan.stages] == stylizer.options.stage_steps()
    assert plan.steps == sum(stylizer.options.stage_steps())
    assert tuple(stage.shape for stage in plan.stages) == stage_shapes(stylizer.options, (300, 400))
    assert [stage.index for stage in plan.stages] == [0, 1, 2]
    for stage in plan.stages:
        side = round(stage.long_side * 0.5)
        assert stage.style_shapes == (long_side_shape(600, 500, side), long_side_shape(90, 120, side))
        assert (stage.memory.height, stage.memory.width) == stage.shape
        assert stage.evaluator == "whole" and not stage.memory.budget_limited
    assert plan.pictures == 1 and plan.budget == 64 * 2**30


def test_a_run_does_what_its_plan_says(seed):
    """Each evaluation's stage size and memory plan are the plan's, on fresh random pictures of odd shapes."""
    generator = torch.Generator().manual_seed(seed)
    height, width = (int(n) for n in torch.randint(40, 90, (2,), generator=generator))
    content, style = torch.rand(3, height, width, generator=generator), torch.rand(3, 57, 43, generator=generator)
    stylizer = Stylizer(scales=[40, 64], steps=[2, 3], device="cpu", cuda_graph=False, **SHALLOW)
    plan = stylizer.plan((height, width), [(57, 43)])
    seen = {}
    result = stylizer.run(content, style, callback=lambda p: seen.setdefault(p.stage, (p.size, p.steps, p.memory_plan)))
    assert seen == {stage.index: (stage.shape, stage.steps, stage.memory) for stage in plan.stages}
    assert tuple(result.tensor.shape[-2:]) == plan.stages[-1].shape


def test_a_forced_tile_is_evaluated_in_tiles_and_a_picture_below_it_whole():
    stylizer = Stylizer(scales=[64, 160], steps=1, tile=64, device="cpu", **SHALLOW)
    first, second = stylizer.plan((120, 160), [(100, 100)]).stages
    assert first.evaluator == "whole"  # no larger than one tile
    assert second.evaluator == "tiles" and second.memory.tile_edge == 64


def test_a_loss_that_cannot_be_tiled_is_refused_where_only_tiles_fit():
    """Just below the checkpointed whole picture's need, the plan tiles (the levers' order); the
    sliced loss, which needs each picture in one pass, is then refused before any image is made."""
    settings = dict(size=320, scales=[320], steps=2, device="cpu", **SHALLOW)
    forced = Stylizer(checkpointing=True, **settings)
    (stage,) = plan_run(forced.options, forced.network, (320, 240), [(100, 100)], budget=10**12).stages
    budget = budget_for(stage.memory.total - 2**20)
    gram = Stylizer(**settings)
    assert plan_run(gram.options, gram.network, (320, 240), [(100, 100)], budget=budget).stages[0].evaluator == "tiles"
    # The sliced loss keeps more (its target and sort indices): just below its own checkpointed need.
    forced_sliced = Stylizer(checkpointing=True, style_loss="sliced", **settings)
    (stage,) = plan_run(forced_sliced.options, forced_sliced.network, (320, 240), [(100, 100)], budget=10**12).stages
    sliced = Stylizer(style_loss="sliced", **settings)
    with pytest.raises(
        OptionError, match=r"style_loss .sliced. needs each picture in one pass \(no tiles\), and a \d+x\d+ stage needs"
    ):
        plan_run(
            sliced.options, sliced.network, (320, 240), [(100, 100)], budget=budget_for(stage.memory.total - 2**20)
        )


def test_batches_plan_for_all_their_pictures():
    stylizer = Stylizer(scales=[64], steps=2, device="cpu", **SHALLOW)
    one, three = (stylizer.plan((64, 48), [(64, 64)], pictures=n) for n in (1, 3))
    assert three.pictures == 3 and three.stages[0].memory.history == 3 * one.stages[0].memory.history


@pytest.mark.parametrize(
    "content_shape, style_shapes, pictures",
    [((0, 5), [(5, 5)], 1), ((-3, 5), [(5, 5)], 1), ((5, 5), [(5, 2.5)], 1), ((5, 5, 5), [], 1), ((9, 9), [], 0)],
)
def test_absurd_shapes_are_refused_in_one_line(content_shape, style_shapes, pictures):
    stylizer = Stylizer(scales=[64], steps=2, device="cpu", **SHALLOW)
    with pytest.raises(OptionError, match="whole"):
        stylizer.plan(content_shape, style_shapes, pictures)
