"""nst_ext: neural style transfer (Gatys, Ecker & Bethge) with compiled Gram
and fused style-loss kernels for the CPU (C++) and the GPU (CUDA).

The ops ``gram_matrix`` and ``style_loss`` run the compiled kernels when
``nst_ext._C`` is built and fall back, with one warning, to the pure-PyTorch
``nst_ext.reference`` otherwise; ``backend_info()`` says which is in use.
``stylize`` / ``Stylizer`` run the whole style transfer.
"""

from nst_ext import reference
from nst_ext._ops import (
    backend_info, clear_gram_algorithm_choices, get_gram_algorithm, gram_algorithm, gram_algorithm_choices,
    gram_matrix, reference_backend, set_gram_algorithm, style_loss,
)
from nst_ext.images import ImageError, load_image, save_image
from nst_ext.options import OptionError, StyleOptions
from nst_ext.stylizer import Progress, Stylizer, StylizeResult, stylize
from nst_ext.weights import WeightsError, resolve_weights

__all__ = [
    "ImageError", "OptionError", "Progress", "StyleOptions", "Stylizer", "StylizeResult", "WeightsError",
    "backend_info", "clear_gram_algorithm_choices", "get_gram_algorithm", "gram_algorithm",
    "gram_algorithm_choices", "gram_matrix", "load_image", "reference", "reference_backend", "resolve_weights",
    "save_image", "set_gram_algorithm", "style_loss", "stylize",
]
__version__ = "0.1.0"
