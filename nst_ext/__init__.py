"""nst_ext: neural style transfer (Gatys, Ecker & Bethge) with compiled Gram
and fused style-loss kernels for the CPU (C++) and the GPU (CUDA).

The ops ``gram_matrix`` and ``style_loss`` run the compiled kernels when
``nst_ext._C`` is built and fall back, with one warning, to the pure-PyTorch
``nst_ext.ops.reference`` otherwise; ``backend_info()`` says which is in use.
``stylize`` / ``Stylizer`` run the whole style transfer.

Names are imported on first use (PEP 562), so ``import nst_ext`` and the
``nst-ext`` command start without torch until something needs it.
"""

import importlib

# Public name -> the module that defines it.
_EXPORTS = {
    "backend_info": "nst_ext.ops.dispatch",
    "clear_gram_algorithm_choices": "nst_ext.ops.dispatch",
    "get_gram_algorithm": "nst_ext.ops.dispatch",
    "gram_algorithm": "nst_ext.ops.dispatch",
    "gram_algorithm_choices": "nst_ext.ops.dispatch",
    "gram_matrix": "nst_ext.ops.dispatch",
    "reference_backend": "nst_ext.ops.dispatch",
    "set_gram_algorithm": "nst_ext.ops.dispatch",
    "style_loss": "nst_ext.ops.dispatch",
    "masked_gram_matrix": "nst_ext.ops.dispatch",
    "masked_style_loss": "nst_ext.ops.dispatch",
    "ImageError": "nst_ext.errors",
    "InputError": "nst_ext.errors",
    "OptionError": "nst_ext.errors",
    "OutputError": "nst_ext.errors",
    "UnknownLayerError": "nst_ext.errors",
    "WeightsError": "nst_ext.errors",
    "load_image": "nst_ext.io.images",
    "save_image": "nst_ext.io.images",
    "StyleOptions": "nst_ext.plan.options",
    "Progress": "nst_ext.stylizer",
    "Stylizer": "nst_ext.stylizer",
    "StylizeResult": "nst_ext.stylizer",
    "stylize": "nst_ext.stylizer",
    "resolve_weights": "nst_ext.model.weights",
    "ProcessEffects": "nst_ext.plan.effects",
    "allow_process_effects": "nst_ext.plan.effects",
}
__all__ = sorted(list(_EXPORTS) + ["reference"])
__version__ = "0.1.0"


def __getattr__(name):
    if name == "reference":
        return importlib.import_module("nst_ext.ops.reference")
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nst_ext' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
