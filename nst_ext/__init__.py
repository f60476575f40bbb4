"""nst_ext: neural style transfer (Gatys, Ecker & Bethge) with compiled Gram
and fused style-loss kernels for the CPU (C++) and the GPU (CUDA).

The ops ``gram_matrix`` and ``style_loss`` run the compiled kernels when
``nst_ext._C`` is built and fall back, with one warning, to the pure-PyTorch
``nst_ext.reference`` otherwise; ``backend_info()`` says which is in use.
"""

from nst_ext import reference
from nst_ext._ops import backend_info, gram_matrix, reference_backend, style_loss

__all__ = ["backend_info", "gram_matrix", "reference", "reference_backend", "style_loss"]
__version__ = "0.1.0"
