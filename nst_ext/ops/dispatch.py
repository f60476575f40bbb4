"""The compiled ops: loading the library ``nst_ext._C``, the controls of its per-shape algorithm
choice, and the public functions that pick the compiled kernel or the reference.

The op schemas are declared once, in ``csrc/ops.cpp``; nst_ext.ops.registrations registers what
torch.compile and autograd need on top of them (as pytorch/extension-cpp does), so
``torch.compile(fullgraph=True)`` traces through the ops.
"""

import contextlib
import json
import os
import warnings
from typing import Iterator, Optional

import torch

from nst_ext.ops import reference
from nst_ext.ops.checks import accumulation_dtype, check_features, check_target_gram, check_weights
from nst_ext.errors import BackendWarning

FORCE_REFERENCE_ENV = "NST_EXT_FORCE_REFERENCE"
# Beside the compiled library, written by its build (setup.py): the torch and CUDA it was built for.
BUILD_INFO_NAME = "_build_info.json"
REBUILD = "pip install --no-build-isolation ."


def _read_build_info(library: str) -> Optional[dict]:
    """The build's record beside `library` (setup.py's build_info), or None where there is none."""
    try:
        with open(os.path.join(os.path.dirname(library), BUILD_INFO_NAME), encoding="utf-8") as stream:
            info = json.load(stream)
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _minor(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


def build_mismatch(built: Optional[dict], torch_version: str, torch_cuda: Optional[str]) -> Optional[str]:
    """Why a library built as `built` says (BUILD_INFO_NAME) cannot be loaded under the torch
    `torch_version` (CUDA `torch_cuda`, None for a CPU build), or None where it can: torch's C++
    ABI changes between minor versions, and CUDA kernels need a CUDA build of torch of the same
    CUDA major version. Loading it anyway fails on a missing symbol, or worse."""
    if not built:
        return None
    built_torch, built_cuda = str(built.get("torch", "?")), built.get("cuda")
    for_what = f"torch {built_torch}" + (f" with CUDA {built_cuda}" if built_cuda else "")
    running = f"torch {torch_version}" + (f" with CUDA {torch_cuda}" if torch_cuda else " without CUDA")
    differs = _minor(built_torch) != _minor(torch_version) or (
        built_cuda is not None and (torch_cuda is None or str(built_cuda).split(".")[0] != torch_cuda.split(".")[0])
    )
    if differs:
        return f"nst_ext._C was built for {for_what}, and this is {running}; rebuild it: {REBUILD}"
    return None


def _load_compiled() -> "tuple[str | None, dict | None]":
    """Loads the compiled library ``nst_ext._C`` (csrc/; its static initialisers register the
    ops and their kernels): it is a plain shared library, loaded with torch.ops.load_library,
    not a Python module. Returns why it could not be loaded (or None) and its build record."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("nst_ext._C")
    except (ImportError, ValueError) as error:
        return f"{type(error).__name__}: {error}", None
    if spec is None or spec.origin is None:
        return "nst_ext._C is not built (a pure-PyTorch install)", None
    built = _read_build_info(spec.origin)
    mismatch = build_mismatch(built, torch.__version__, torch.version.cuda)
    if mismatch:
        return mismatch, built
    try:
        torch.ops.load_library(spec.origin)
    except (OSError, RuntimeError) as error:  # an unloadable build (another torch, a missing symbol)
        return f"{type(error).__name__}: {error}", built
    return None, built


LOAD_ERROR, BUILD_INFO = _load_compiled()

_force_reference = os.environ.get(FORCE_REFERENCE_ENV, "").strip().lower() in ("1", "true", "yes", "on")
_warned_devices = set()


# Which device types the build has kernels for; fixed once the library is loaded.
_COMPILED_DEVICE_TYPES = frozenset(
    device_type
    for device_type in ("cpu", "cuda")
    if LOAD_ERROR is None and torch._C._dispatch_has_kernel_for_dispatch_key("nst_ext::gram", device_type.upper())
)


def _has_kernel(device_type: str) -> bool:
    return device_type in _COMPILED_DEVICE_TYPES


def _uses_compiled(device: torch.device) -> bool:
    if _force_reference:
        return False
    if _has_kernel(device.type):
        return True
    if device.type == "meta":  # shapes only: the reference computes them, nothing to warn about
        return False
    if device.type not in _warned_devices:
        _warned_devices.add(device.type)
        why = LOAD_ERROR or f"nst_ext._C was built without {device.type.upper()} kernels"
        warnings.warn(
            f"nst_ext: using the slow pure-PyTorch reference for {device.type} tensors because the "
            f"compiled kernels are unavailable ({why}). Rebuild with `{REBUILD}`; "
            "`nst-ext info` shows the backends.",
            BackendWarning,
            stacklevel=3,
        )
    return False


@contextlib.contextmanager
def reference_backend(enabled: bool = True) -> Iterator[None]:
    """Within this block the public ops use the pure-PyTorch reference
    (``enabled=True``) or the compiled kernels where available (``False``).
    Setting the environment variable ``NST_EXT_FORCE_REFERENCE=1`` does the
    former for a whole process."""
    global _force_reference
    previous = _force_reference
    _force_reference = enabled
    try:
        yield
    finally:
        _force_reference = previous


GRAM_ALGORITHMS = ("auto", "own", "blas")


def set_gram_algorithm(algorithm: str) -> None:
    """How the compiled forward (Gram and style loss) computes ``F Fᵀ``.

    ``"auto"`` (the default): on the first call for a device, op, dtype, shape
    and layout, our own kernel and the BLAS library's product (cuBLAS on tensor
    cores, MKL/oneDNN on the CPU) are both timed and the faster is kept, like
    cuDNN's benchmark mode; results stay bit-identical from then on within a
    process. ``"own"`` or ``"blas"`` forces one (also reproducible across
    processes). The environment variable ``NST_EXT_GRAM_ALGORITHM`` sets the
    starting value.
    """
    if algorithm not in GRAM_ALGORITHMS:
        raise ValueError(f"gram algorithm must be one of {', '.join(GRAM_ALGORITHMS)}, got {algorithm!r}")
    if LOAD_ERROR is None:
        torch.ops.nst_ext.set_gram_algorithm(algorithm)


def get_gram_algorithm() -> str:
    """The mode set by :func:`set_gram_algorithm` ("auto" without the compiled kernels)."""
    return torch.ops.nst_ext.get_gram_algorithm() if LOAD_ERROR is None else "auto"


@contextlib.contextmanager
def gram_algorithm(algorithm: str) -> Iterator[None]:
    """Within this block the compiled forward uses `algorithm` (see :func:`set_gram_algorithm`)."""
    previous = get_gram_algorithm()
    set_gram_algorithm(algorithm)
    try:
        yield
    finally:
        set_gram_algorithm(previous)


# A choice of "auto", as the compiled library lists it (one tab-separated row each): the fields
# that name a shape, and last the algorithm chosen for it; which of them are whole numbers.
CHOICE_FIELDS = ("device", "device_index", "op", "dtype", "batch", "channels", "spatial", "layout", "algorithm")
CHOICE_NUMBERS = ("device_index", "batch", "channels", "spatial")


def is_algorithm_choice(choice) -> bool:
    """Whether `choice` (read from a file: the cache, a picture's record) is a choice as
    :func:`gram_algorithm_choices` gives it: every field there, a whole number or one line of text."""
    if not isinstance(choice, dict) or not set(CHOICE_FIELDS) <= set(choice):
        return False
    return all(
        isinstance(choice[name], int) and not isinstance(choice[name], bool)
        if name in CHOICE_NUMBERS
        else isinstance(choice[name], str) and choice[name].isprintable()
        for name in CHOICE_FIELDS
    )


def gram_algorithm_choices(used_only: bool = False) -> list:
    """The choices ``"auto"`` has made or been given so far: one dict per device, op, dtype, shape
    and layout, with the key ``algorithm`` ("own" or "blas"). `used_only`: only those a forward
    has met in this process (not the restored ones it has not needed)."""
    if LOAD_ERROR is not None:
        return []
    choices = [dict(zip(CHOICE_FIELDS, row.split("\t"))) for row in torch.ops.nst_ext.gram_algorithm_choices(used_only)]
    return [
        {name: int(value) if name in CHOICE_NUMBERS else value for name, value in choice.items()} for choice in choices
    ]


def restore_gram_algorithm_choices(choices: list) -> None:
    """Adds choices as :func:`gram_algorithm_choices` lists them (a run's, recorded in its
    picture), so that ``"auto"`` takes the same algorithm for those shapes without timing: the
    same picture again, bit for bit. Without the compiled kernels there is nothing to choose.
    ValueError where one is not a choice (:func:`is_algorithm_choice`)."""
    wrong = next((choice for choice in choices if not is_algorithm_choice(choice)), None)
    if wrong is not None:
        raise ValueError(f"not an algorithm choice: {str(wrong)[:120]}")
    if LOAD_ERROR is None:
        torch.ops.nst_ext.restore_gram_algorithm_choices(
            ["\t".join(str(choice[name]) for name in CHOICE_FIELDS) for choice in choices]
        )


def clear_gram_algorithm_choices() -> None:
    """Forget the choices of ``"auto"``, so the next call of each shape checks and times both again."""
    if LOAD_ERROR is None:
        torch.ops.nst_ext.clear_gram_algorithm_choices()
    _met.clear()
    _said_failures.clear()


def backend_info() -> dict:
    """Which implementation serves tensors on each device type.

    Returns a dict with keys ``cpu`` and ``cuda`` (``"compiled C++"``,
    ``"compiled CUDA"`` or ``"reference"``), ``cuda_available`` (a GPU is
    visible), ``forced_reference`` (the reference was forced) and
    ``load_error`` (why ``nst_ext._C`` failed to load, or ``None``),
    ``gram_algorithm`` (see :func:`set_gram_algorithm`) and ``built_for``
    (the torch, CUDA and GPU architectures the library was built for, as its
    build recorded them, or ``None``).
    """

    def describe(device_type: str, compiled_name: str) -> str:
        if _force_reference or not _has_kernel(device_type):
            return "reference"
        return compiled_name

    return {
        "cpu": describe("cpu", "compiled C++"),
        "cuda": describe("cuda", "compiled CUDA"),
        "cuda_available": torch.cuda.is_available(),
        "forced_reference": _force_reference,
        "load_error": LOAD_ERROR,
        "gram_algorithm": get_gram_algorithm(),
        "built_for": BUILD_INFO,
    }


if LOAD_ERROR is None:
    # The fake kernels and autograd formulas of the loaded ops.
    from nst_ext.ops import registrations  # noqa: F401


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """Gram matrix ``G = F Fᵀ / (H·W)``, ``F`` the features flattened to ``(C, H·W)``.

    features: ``(B, C, H, W)`` or ``(C, H, W)``; float16, bfloat16, float32 or
    float64; any strides; CPU or CUDA.
    Returns ``(B, C, C)`` or ``(C, C)``. float16 and bfloat16 accumulate and
    return float32 (a Gram of VGG activations overflows half precision);
    float32 and float64 return their own dtype. Differentiable.
    """
    check_features(features)
    if not _uses_compiled(features.device):
        return reference.gram_matrix(features)
    batched = features if features.dim() == 4 else features.unsqueeze(0)
    gram = torch.ops.nst_ext.gram(batched)
    _after_the_first_call("gram", batched)
    return gram if features.dim() == 4 else gram.squeeze(0)


def style_loss(features: torch.Tensor, target_gram: torch.Tensor) -> torch.Tensor:
    """Mean over all elements of ``(gram_matrix(features) − target_gram)²``.

    features: as for :func:`gram_matrix`. target_gram: ``(C, C)``, broadcast
    over the batch, or ``(1, C, C)`` / ``(B, C, C)``, on the features' device.
    Returns a 0-d tensor of the accumulation dtype (float32, or float64 for
    float64 features). Differentiable with respect to both inputs; the compiled
    kernel never materialises the Gram as a tensor of its own. The gradient has
    the features' dtype (and layout, when channels-last): float16 gradients past
    65504 overflow to inf like any float16 value, so use bfloat16 or float32
    features where they can be that large.
    """
    check_features(features)
    check_target_gram(target_gram, features)
    if not _uses_compiled(features.device):
        return reference.style_loss(features, target_gram)
    batched = features if features.dim() == 4 else features.unsqueeze(0)
    target = target_gram.to(accumulation_dtype(features.dtype))
    loss, _ = torch.ops.nst_ext.style_loss(batched, target)
    _after_the_first_call("style_loss", batched)
    return loss


# The (op, device, dtype, shape, strides) the compiled forward has met in this process, and the
# failures of our kernel's check already said: the check runs on a shape's first call (csrc/ops.cpp).
_met = set()
_said_failures = set()


def _after_the_first_call(op: str, features: torch.Tensor) -> None:
    """After the first call of a shape, one warning for each new failure of our kernel's check
    (BackendWarning; the BLAS product then serves the shape): the library records them, and it has
    no way to raise a Python warning itself."""
    key = (op, features.device, features.dtype, features.shape, features.stride())
    if key in _met:
        return
    _met.add(key)
    for line in torch.ops.nst_ext.candidate_failures():
        if line not in _said_failures:
            _said_failures.add(line)
            warnings.warn(line, BackendWarning, stacklevel=3)


def _weights_for_kernel(weights: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Per-position weights as the kernels take them: ``(1|B, H, W)``, the accumulation dtype,
    contiguous, detached (not differentiated)."""
    return weights.detach().to(accumulation_dtype(features.dtype)).reshape(-1, *features.shape[-2:]).contiguous()


def masked_gram_matrix(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The Gram matrix over a region: ``G = F diag(w) Fᵀ / Σw`` with per-position weights
    ``w ≥ 0`` (a soft mask; Gatys et al. 2017, spatial control); 0 where ``Σw = 0``. With
    ``w ≡ 1`` it is :func:`gram_matrix`.

    features: as for :func:`gram_matrix`. weights: ``(H, W)``, ``(1, H, W)`` (shared by the
    batch) or ``(B, H, W)``, any float dtype, on the features' device; they are not
    differentiated, and a negative weight gives NaN. Returns what :func:`gram_matrix` returns.
    Differentiable with respect to the features.
    """
    check_features(features)
    check_weights(weights, features)
    if not _uses_compiled(features.device):
        return reference.masked_gram_matrix(features, weights)
    batched = features if features.dim() == 4 else features.unsqueeze(0)
    gram = torch.ops.nst_ext.masked_gram(batched, _weights_for_kernel(weights, features))
    return gram if features.dim() == 4 else gram.squeeze(0)


def masked_style_loss(features: torch.Tensor, weights: torch.Tensor, target_gram: torch.Tensor) -> torch.Tensor:
    """Mean over all elements of ``(masked_gram_matrix(features, weights) − target_gram)²``: the
    style loss over a region. features and weights as for :func:`masked_gram_matrix`, target_gram
    as for :func:`style_loss`. Returns a 0-d tensor of the accumulation dtype; differentiable
    with respect to the features and the target."""
    check_features(features)
    check_weights(weights, features)
    check_target_gram(target_gram, features)
    if not _uses_compiled(features.device):
        return reference.masked_style_loss(features, weights, target_gram)
    batched = features if features.dim() == 4 else features.unsqueeze(0)
    target = target_gram.to(accumulation_dtype(features.dtype))
    loss, _ = torch.ops.nst_ext.masked_style_loss(batched, _weights_for_kernel(weights, features), target)
    return loss
