"""Input validation shared by the compiled and the reference ops.

Every public entry point checks its arguments here, so a bad call gets a
``TypeError``/``ValueError`` that names the argument, what was expected and
what was given, instead of a traceback from deep inside a kernel.
"""

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; float16, bfloat16 and float32 accumulate in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def is_channels_last(features: torch.Tensor) -> bool:
    """Whether 4-D features lie channels-last (what channels-last convolutions hand the losses)
    and not also NCHW-contiguous (C == 1 or H·W == 1 counts as NCHW): the layout the kernels
    (csrc/common.h) and the reference keep for the gradient."""
    return (
        features.dim() == 4
        and not features.is_contiguous()
        and features.is_contiguous(memory_format=torch.channels_last)
    )


def _check_float_tensor(tensor, name: str) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be float16, bfloat16, float32 or float64, got {tensor.dtype}; "
            f"convert it first, e.g. {name}.float()"
        )


def check_features(features, name: str = "features") -> None:
    """features: (B, C, H, W) or (C, H, W), floating point, non-empty."""
    _check_float_tensor(features, name)
    if features.dim() not in (3, 4):
        raise ValueError(
            f"{name} must have shape (B, C, H, W) or (C, H, W), got a {features.dim()}-D tensor "
            f"of shape {tuple(features.shape)}"
        )
    if features.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(features.shape)}")


def _check_per_picture(tensor, features, name: str, per_picture: tuple, verb: str) -> None:
    """`tensor` of shape `per_picture`, or with a batch dimension of 1 or the features' batch in
    front, on the features' device."""
    _check_float_tensor(tensor, name)
    batch = features.shape[0] if features.dim() == 4 else 1
    allowed = [per_picture, (1, *per_picture)]
    if batch != 1:
        allowed.append((batch, *per_picture))
    if tuple(tensor.shape) not in allowed:
        expected = " or ".join(str(shape) for shape in allowed)
        raise ValueError(
            f"{name} must have shape {expected} to match features of shape "
            f"{tuple(features.shape)}, got {tuple(tensor.shape)}"
        )
    if tensor.device != features.device:
        raise ValueError(
            f"{name} {verb} on {tensor.device} but features are on {features.device}; "
            f"move them to one device, e.g. {name}.to(features.device)"
        )


def check_target_gram(target, features, name: str = "target_gram") -> None:
    """target: (C, C), or (B, C, C) / (1, C, C) for batched features; same device as features."""
    channels = features.shape[-3]
    _check_per_picture(target, features, name, (channels, channels), "is")


def check_weights(weights, features, name: str = "weights") -> None:
    """weights: per-position weights ``(H, W)``, ``(1, H, W)`` or ``(B, H, W)`` matching features
    ``(B, C, H, W)`` (or ``(C, H, W)``: ``(H, W)`` or ``(1, H, W)``), floating point, on their
    device. That they are not negative is the caller's to ensure (a check would synchronise a GPU
    at every call): a negative weight gives NaN."""
    _check_per_picture(weights, features, name, tuple(features.shape[-2:]), "are")
