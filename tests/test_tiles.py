"""Any size, exactly: the tiles' geometry (nst_ext.plan.tiles), one evaluation tile by tile against the
untiled picture's in float64 (nst_ext.objective.tiled), a short run tiled and untiled, and the
memory plan's choice of tiles."""

import pytest
import torch

from nst_ext.plan import tiles
from nst_ext.plan.budget import parse_size
from nst_ext.errors import OptionError
from nst_ext.plan.layers import LAYER_INDEX, LAYERS, layer_shape
from nst_ext.objective.masks import StageMasks
from nst_ext.plan.memory import MemoryPlan, budget_for, plan_stage, usable_share
from nst_ext.objective import Objective
from nst_ext.objective import tiled as tiled_evaluation
from nst_ext.plan.options import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS
from nst_ext.stylizer import Stylizer

LAYERS_USED = list(DEFAULT_CONTENT_LAYERS) + list(DEFAULT_STYLE_LAYERS)


def test_the_halo_covers_the_receptive_field():
    # VGG19's receptive field at relu5_1 is 156 px wide; a cell of 16 px sees 70 px to each side.
    assert tiles.alignment(["relu5_1"]) == 16 and tiles.halo(["relu5_1"]) == 80
    assert tiles.halo(["relu1_1"]) == 1 and tiles.halo(["relu1_2"]) == 2
    assert tiles.halo(["relu2_1", "relu1_1"]) == 4  # 4 px of reach each side of a 2 px cell
    assert tiles.tile_edge(100, ["relu5_1"]) == 96 and tiles.tile_edge(3, ["relu5_1"]) == 16


@pytest.mark.parametrize("height, width, edge", [(150, 115, 32), (100, 100, 48), (37, 211, 16), (64, 64, 64)])
def test_the_tiles_own_cells_partition_every_layer(height, width, edge):
    split = tiles.split(height, width, edge, LAYERS_USED)
    for index in sorted({LAYER_INDEX[name] for name in LAYERS_USED}):
        _, rows, columns = layer_shape(LAYERS[index].name, height, width)
        owned = torch.zeros(rows, columns, dtype=torch.int64)
        for tile in split:
            top, bottom, left, right = tile.read
            assert top % 16 == 0 and left % 16 == 0  # tiles start on the pooling grid
            here_rows, here_columns, picture_rows, picture_columns = tile.own_cells(LAYERS[index].pools_before)
            read_rows = (bottom - top) // 2 ** LAYERS[index].pools_before
            assert 0 <= here_rows.start <= here_rows.stop <= read_rows
            owned[picture_rows, picture_columns] += 1
        assert bool((owned == 1).all()), LAYERS[index].name


def test_a_tile_edge_off_the_grid_is_refused():
    with pytest.raises(ValueError, match="pooling grid"):
        tiles.split(100, 100, 40, LAYERS_USED)


def plan(edge, deepest="relu5_1", content_bfloat16=False, checkpointing=False):
    """A plan with VGG up to `deepest`, tiled with `edge` (0: untiled); in one segment, or in two
    checkpointed ones."""
    stop = LAYER_INDEX[deepest] + 1
    segments = ((0, stop // 2), (stop // 2, stop)) if checkpointing else ((0, stop),)
    return MemoryPlan(
        1, 1, checkpointing, 5, segments, 0, 0, 0, 0, 0, tile_edge=edge, content_bfloat16=content_bfloat16
    )


@pytest.fixture(scope="module")
def float64_stylizer():
    stylizer = Stylizer(size=64, scales=[64], steps=1, device="cpu", cuda_graph=False, mixed_precision=False)
    stylizer.network.vgg.double()
    return stylizer


def evaluation(objective, image):
    leaf = image.clone().requires_grad_(True)
    terms = objective.evaluator(leaf)()
    return terms, leaf.grad


def odd_inputs(seed, height=150, width=115):
    generator = torch.Generator().manual_seed(seed)
    content = torch.rand(3, height, width, generator=generator, dtype=torch.float64)
    style = torch.rand(3, 130, 140, generator=generator, dtype=torch.float64)
    # Some pixels outside [0, 1]: the clamp's gradient is crossed too.
    image = content + 0.15 * torch.randn(1, 3, height, width, generator=generator, dtype=torch.float64)
    return content, style, image


SHALLOW = {"content_layers": ["relu2_2"], "style_layers": ["relu1_1", "relu2_1", "relu3_1"]}


@pytest.mark.parametrize(
    "edge, layers, checkpointing",
    [(48, {}, False), (96, {}, False), (8, SHALLOW, False), (48, {}, True)],
    ids=["48", "96", "8-shallow", "48-checkpointed"],
)
def test_a_tiled_evaluation_is_the_untiled_one_in_float64(float64_stylizer, edge, layers, checkpointing, monkeypatch):
    """Loss and gradient of one evaluation, tiled against untiled, in float64, on a 150 x 115
    picture: halos clipped at the borders, a last row and column of tiles narrower than a deep
    layer's cell (150 = 3 x 48 + 6: the last row owns no relu5_1 cell), odd sizes, a non-square
    picture; with shallow layers (a 12 px halo), tiles of 8 px, 285 of them; with checkpointed
    segments inside each tile. Total variation over strips of 7 rows (the last one shorter). Each
    tile goes through VGG twice, but the one whose graph the first pass keeps (none when
    checkpointed)."""
    import dataclasses

    monkeypatch.setattr(tiled_evaluation, "STRIP_ROWS", 7)

    options = dataclasses.replace(float64_stylizer.options, **layers)
    deepest = "relu3_1" if layers else "relu5_1"
    content, style, image = odd_inputs(edge)
    untiled = Objective(float64_stylizer.network, options, content, [style], [1.0], plan(0, deepest))
    tiled = Objective(
        float64_stylizer.network, options, content, [style], [1.0], plan(edge, deepest, checkpointing=checkpointing)
    )
    assert len(tiled.tiles) > 1 and not untiled.tiles
    for name, gram in untiled.style_grams.items():  # the style image's Grams, made in tiles too
        torch.testing.assert_close(tiled.style_grams[name], gram, rtol=1e-6, atol=0)
    expected_terms, expected_gradient = evaluation(untiled, image)
    passes = []
    through_network = tiled.through_network
    monkeypatch.setattr(
        tiled, "through_network", lambda image, score: passes.append(1) or through_network(image, score)
    )
    terms, gradient = evaluation(tiled, image)
    assert len(passes) == 2 * len(tiled.tiles) - (not checkpointing)
    torch.testing.assert_close(terms, expected_terms, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(gradient, expected_gradient, rtol=1e-9, atol=1e-14)
    assert expected_gradient.abs().max() > 1e-3
    with torch.no_grad():
        values = tiled(image)
    torch.testing.assert_close(values["total"].float(), expected_terms[-1])


def test_bfloat16_content_targets_are_the_rounded_targets_tiled_or_not(float64_stylizer):
    """Content targets kept in bfloat16 (the plan's lever): the loss and gradient of the float32
    targets rounded to bfloat16, tiled as untiled (the tiled targets are put together in bfloat16)."""
    from nst_ext.objective.losses import ContentLoss

    options = float64_stylizer.options
    content, style, image = odd_inputs(3, 100, 90)
    untiled, tiled, full = (
        Objective(float64_stylizer.network, options, content, [style], [1.0], plan(edge, **kind))
        for edge, kind in ((0, dict(content_bfloat16=True)), (48, dict(content_bfloat16=True)), (0, {}))
    )
    oracle = Objective(
        float64_stylizer.network, options, content, [style], [1.0], plan(0), style_grams=full.style_grams
    )
    oracle.content_terms = [
        (name, weight, ContentLoss(term.target.to(torch.bfloat16).float(), None))
        for name, weight, term in full.content_terms
    ]
    for objective in (untiled, tiled):
        assert {term.target.dtype for _, _, term in objective.content_terms} == {torch.bfloat16}
    assert {term.target.dtype for _, _, term in full.content_terms} == {torch.float32}
    expected_terms, expected_gradient = evaluation(oracle, image)
    for objective in (untiled, tiled):
        terms, gradient = evaluation(objective, image)
        torch.testing.assert_close(terms, expected_terms, rtol=1e-6, atol=1e-12)
        torch.testing.assert_close(gradient, expected_gradient, rtol=1e-9, atol=1e-14)
    # The rounding moves the content term, by little.
    full_terms, _ = evaluation(full, image)
    assert full_terms[0] != expected_terms[0]
    torch.testing.assert_close(expected_terms[0], full_terms[0], rtol=1e-2, atol=0)


def test_a_halo_narrower_than_the_receptive_field_is_not_exact(float64_stylizer, monkeypatch):
    """The exactness above rests on the halo: one grid cell short of it, the gradient is wrong."""
    import dataclasses

    options = dataclasses.replace(float64_stylizer.options, **SHALLOW)
    content, style, image = odd_inputs(1)
    untiled = Objective(float64_stylizer.network, options, content, [style], [1.0], plan(0, "relu3_1"))
    expected_terms, expected_gradient = evaluation(untiled, image)
    assert tiles.halo(untiled.layers) == 12
    monkeypatch.setattr(tiles, "halo", lambda names: 8)
    short = Objective(
        float64_stylizer.network, options, content, [style], [1.0], plan(16, "relu3_1"), style_grams=untiled.style_grams
    )
    _, gradient = evaluation(short, image)
    assert (gradient - expected_gradient).abs().max() > 1e-6 * expected_gradient.abs().max()


def test_every_term_tiled_in_float64(float64_stylizer, monkeypatch):
    """Two styles blended, layer weights, content and style masks, a style-image mask, the temporal
    term, and a batch of two pictures: tiled as untiled."""
    import dataclasses

    from nst_ext.objective import TemporalTarget

    monkeypatch.setattr(tiled_evaluation, "STRIP_ROWS", 16)
    generator = torch.Generator().manual_seed(7)
    height, width = 90, 70
    options = dataclasses.replace(
        float64_stylizer.options, style_layer_weights=[0.1, 0.2, 0.3, 0.2, 0.2], content_weight=2.0, tv_weight=3.0
    )
    contents = torch.rand(2, 3, height, width, generator=generator, dtype=torch.float64)
    styles = [torch.rand(3, 60, 80, generator=generator, dtype=torch.float64) for _ in range(2)]
    left = torch.zeros(height, width)
    left[:, : width // 2] = 1
    masks = StageMasks(
        style=[left, 1 - left],
        content=(torch.rand(height, width, generator=generator) > 0.3).float(),
        sources=[None, (torch.rand(60, 80, generator=generator) > 0.5).float()],
        dilation=1,
    )
    temporal = TemporalTarget(
        torch.rand(3, height, width, dtype=torch.float64, generator=generator),
        torch.rand(height, width, dtype=torch.float64, generator=generator),
        5.0,
    )
    images = contents + 0.1 * torch.randn(contents.shape, generator=generator, dtype=torch.float64)
    results = []
    for edge in (0, 32):
        objective = Objective(
            float64_stylizer.network, options, contents, styles, [0.3, 0.7], plan(edge), temporal=temporal, masks=masks
        )
        leaves = [image[None].clone().requires_grad_(True) for image in images]
        terms = objective.evaluator(leaves)()
        results.append((terms, torch.cat([leaf.grad for leaf in leaves])))
    (expected_terms, expected_gradient), (terms, gradient) = results
    assert terms.shape == (2, 5) and (expected_terms[:, 3] > 0).all()
    torch.testing.assert_close(terms, expected_terms, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(gradient, expected_gradient, rtol=1e-9, atol=1e-14)


def test_a_short_run_tiled_is_the_untiled_picture():
    """float32, two stages: tiled with two tile edges and untiled, the pictures within 1/255."""
    generator = torch.Generator().manual_seed(5)
    content, style = torch.rand(3, 80, 104, generator=generator), torch.rand(3, 90, 70, generator=generator)
    pictures = {
        tile: Stylizer(scales=[48, 104], steps=[4, 4], device="cpu", tile=tile).run(content, style).tensor
        for tile in (0, 32, 64)
    }
    for tile in (32, 64):
        assert (pictures[tile] - pictures[0]).abs().mean() < 1 / 255, tile
    assert (pictures[0] - torch.nn.functional.interpolate(content[None], size=(80, 104))[0]).abs().mean() > 0.01


def test_the_plan_tiles_only_when_nothing_else_fits():
    def planned(size, budget=None, **overrides):
        return plan_stage(
            size,
            size,
            DEFAULT_CONTENT_LAYERS,
            DEFAULT_STYLE_LAYERS,
            20,
            [(size, size)],
            budget,
            "cpu",
            activation_bytes=4,
            **overrides,
        )

    free, checkpointed = planned(2048), planned(2048, checkpointing=True)
    assert not free.tile_edge and not checkpointed.tile_edge
    tiled = planned(2048, budget_for(checkpointed.total - 2**20))
    assert tiled.tile_edge % 16 == 0 and tiled.history_size == free.history_size
    # It fits where checkpointing does not (its tile may keep more activations than checkpointing:
    # the largest tile that fits is taken, fewer halos).
    assert tiled.total <= usable_share(budget_for(checkpointed.total - 2**20)) < checkpointed.total
    smaller = planned(2048, budget_for(tiled.total - 2**20))
    assert smaller.tile_edge < tiled.tile_edge  # less room: smaller tiles
    assert planned(2048, budget_for(free.total), tile=512).tile_edge == 512  # forced
    assert planned(2048, tile=500).tile_edge == 496  # on the grid
    assert not planned(512, tile=1024).tile_edge  # a picture no larger than one tile is not tiled
    with pytest.raises(OptionError, match=r"tiles of \d+ px"):
        planned(8192, parse_size("6GiB"))  # the picture-sized state alone is over the budget
    assert planned(8192, parse_size("20GiB")).tile_edge  # 67 megapixels in 20 GiB, in tiles
    with pytest.raises(OptionError, match="checkpointing and an L-BFGS history"):
        planned(8192, parse_size("20GiB"), tile=0)  # never tiled: refused


def test_a_budget_that_forces_tiles_completes():
    """The plan itself chooses tiles under a budget just below the checkpointed plan's (the
    progress line says so) and the run completes. Shallow layers keep the run short."""
    from nst_ext.plan.run import plan_run

    settings = dict(size=320, scales=[320], steps=2, device="cpu", **SHALLOW)
    shapes, content_shape = [(100, 100)], (320, 240)
    forced = Stylizer(checkpointing=True, **settings)
    (stage,) = plan_run(forced.options, forced.network, content_shape, shapes, budget=10**12).stages
    checkpointed = stage.memory
    assert checkpointed.checkpointing and not checkpointed.tile_edge
    tight = Stylizer(max_memory=budget_for(checkpointed.total - 2**20), **settings)
    seen = []
    result = tight.run(
        torch.rand(3, *content_shape),
        torch.rand(3, *shapes[0]),
        callback=lambda progress: seen.append(progress.memory_plan),
    )
    assert seen and seen[0].tile_edge and "in tiles of" in seen[0].describe()
    assert result.improved and result.tensor.shape == (3, *content_shape)
