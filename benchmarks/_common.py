"""What the benchmark suites share: VGG19 style-layer shapes (from the one layer registry), the demo
images, and one L-BFGS step of nst_ext's objective."""

import os

import torch

import nst_ext
from nst_ext.lbfgs import LBFGS
from nst_ext.plan.memory import LBFGS_HISTORY
from nst_ext.plan.layers import layer_shape

STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
DATA = os.path.join(os.path.dirname(nst_ext.__file__), "data")
CONTENT, STYLE = os.path.join(DATA, "astronaut.jpg"), os.path.join(DATA, "swirls.jpg")


def feature_shape(layer: str, size: int, batch: int):
    """(B, C, H, W) of `layer`'s output for a size x size image."""
    channels, height, width = layer_shape(layer, size, size)
    return batch, channels, height, width


def lbfgs_step(stylizer: nst_ext.Stylizer):
    """A function running one L-BFGS iteration (an update and one evaluation of the loss and its
    gradient) of `stylizer`'s objective on the demo images, from the content image, as a run does
    it (nst_ext's L-BFGS, the objective replayed as a CUDA graph where the options say so),
    synchronised on CUDA."""
    image, objective = stylizer.objective(CONTENT, STYLE)
    image.requires_grad_(True)
    evaluate = objective.evaluator(image, graph=stylizer.options.cuda_graph)
    optimizer = LBFGS(image, lr=1.0, history_size=LBFGS_HISTORY)

    def step():
        optimizer.step(evaluate)
        if stylizer.device.type == "cuda":
            torch.cuda.synchronize()

    return step
