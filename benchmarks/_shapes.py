"""Feature shapes of VGG19's style layers, from the one layer registry."""

from nst_ext.vgg import layer_shape

STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


def feature_shape(layer: str, size: int, batch: int):
    """(B, C, H, W) of `layer`'s output for a size x size image."""
    channels, height, width = layer_shape(layer, size, size)
    return batch, channels, height, width
