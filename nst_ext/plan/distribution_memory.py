"""What the distribution-matching style losses (nst_ext.objective.distribution_losses) hold, for
the memory plan (nst_ext.plan.memory): their targets and step memory beside VGG's, and the peak of
making their targets. `stage` is the plan's description of a stage (nst_ext.plan.memory._Stage:
its size, pictures, layers, style shapes, style loss and style regions)."""

from nst_ext.plan.layers import LAYER_INDEX, LAYERS, layer_elements

# Bytes per feature value of the sliced loss in a step besides the target (4): its sort's int64
# indices, kept for the backward, and the float32 difference to the target.
SLICED_STEP_BYTES = 12
# The w2 loss in a step, fitted to its measured peaks above Gram's at 256 and 384 px (BENCHMARKS.md,
# "The frontier"): bytes per feature value of a picture (the float32 copy of bfloat16 features and
# the products kept for the backward), and float64 C × C matrices per layer (the Newton–Schulz
# iterates kept for the backward).
W2_STEP_BYTES = 8
W2_STEP_MATRICES = 16
# A masked sliced loss (one per style mask's region) keeps its style's projections sorted (float32)
# and their cumulative weights (float64): bytes per style feature value; in a step, besides
# SLICED_STEP_BYTES, the float64 weights of the region's cells in sorted order, for the backward.
SLICED_REGION_STYLE_BYTES = 12
SLICED_REGION_STEP_BYTES = 8
# Bytes per style feature value while the sliced target of one layer is made (float64, nst_ext.
# objective.distribution_losses._sorted_with_cumulative): the projections, the sort's int64 order,
# the sorted values, the weights in that order, their cumulative sum and its normalised copy.
SLICED_MAKING_BYTES = 48


def distribution_target_bytes(stage) -> int:
    """What a distribution loss keeps during the steps: sliced, a float32 target of the picture's
    features' size per style layer (shared by a batch; with style masks, one per region, and each
    region's style quantile function) and, per picture, SLICED_STEP_BYTES a value; w2, two float64
    C × C target matrices a layer and, per picture, W2_STEP_BYTES a value and W2_STEP_MATRICES
    C × C matrices a layer."""
    indices = [LAYER_INDEX[name] for name in stage.style_layers]
    elements = sum(layer_elements(index, stage.height, stage.width) for index in indices)
    if stage.style_loss == "w2":
        matrices = sum(8 * LAYERS[index].channels ** 2 for index in indices)
        return 2 * matrices + stage.pictures * (W2_STEP_BYTES * elements + W2_STEP_MATRICES * matrices)
    if not stage.style_regions:
        return (4 + SLICED_STEP_BYTES * stage.pictures) * elements
    style_elements = sum(layer_elements(index, h, w) for index in indices for h, w in stage.style_shapes)
    per_picture = (SLICED_STEP_BYTES + SLICED_REGION_STEP_BYTES) * elements
    return (
        4 * stage.style_regions * elements + SLICED_REGION_STYLE_BYTES * style_elements + stage.pictures * per_picture
    )


def distribution_making_bytes(stage) -> int:
    """The peak of making a distribution loss's targets: each style image's features at every style
    layer are held until the losses are built, so the passes over the style images add up (where
    Gram's keep only a Gram each); for sliced, plus the largest layer's projections being sorted."""
    passes = sum(stage.making_targets([(1, shape)]) for shape in stage.style_shapes)
    per_layer = [
        sum(layer_elements(LAYER_INDEX[name], h, w) for h, w in stage.style_shapes) for name in stage.style_layers
    ]
    sorting = SLICED_MAKING_BYTES * max(per_layer) if stage.style_loss == "sliced" else 0
    return passes + sorting
