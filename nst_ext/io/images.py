"""Reading, converting, resizing and safely writing images.

Every image inside nst_ext is a float32 tensor ``(3, H, W)``, RGB, in [0, 1].
Reading accepts paths, PIL images and tensors; converts grayscale, palette,
RGBA/LA (over white), CMYK, YCbCr and 16-bit images; honours EXIF
orientation; and turns every problem into one :class:`ImageError` line that
says what is wrong and how to fix it.
"""

import contextlib
import io
import os
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple, Type, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from nst_ext.io import encoders
from nst_ext.errors import ImageError, InputError, OutputError
from nst_ext.plan.layers import long_side_shape
from nst_ext.plan.options import DEFAULT_MAX_INPUT_PIXELS
from nst_ext.io.outputs import SAVE_FORMATS, atomic_write, check_outputs, check_regular_file, deferred_signals

ImageSource = Union[str, os.PathLike, Image.Image, torch.Tensor]


def _pil_to_tensor(image: Image.Image, name: str = "image") -> torch.Tensor:
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # One-channel 16-bit, 32-bit integer and float images (PNG, TIFF): full precision, by range.
        array = np.asarray(image, dtype=np.float64)
        if not np.isfinite(array).all():
            raise ImageError(f"{name} holds NaN or infinite pixel values; give an image of finite values")
        return torch.from_numpy(_unit_range(array, mode).astype(np.float32)).unsqueeze(0).repeat(3, 1, 1)
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    image = image.convert("RGB")
    rgb = np.array(image, dtype=np.float32) / 255.0
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()


def _unit_range(array: np.ndarray, mode: str) -> np.ndarray:
    """One-channel values in [0, 1] by the range they really use: 16-bit data (also as mode "I",
    as PNG and some TIFFs hold it) over 65535, float data already in [0, 1] as it is, float data in
    [0, 255] over 255; anything wider (32-bit integer or float images of other ranges) is
    stretched from its lowest to its highest value."""
    if array.size == 0:
        return array
    low, high = float(array.min()), float(array.max())
    if mode == "F" and low >= 0 and high <= 1:
        return array
    if mode == "F" and low >= 0 and high <= 255:
        return array / 255.0
    if mode != "F" and low >= 0 and high <= 65535:
        return array / 65535.0
    return (array - low) / (high - low) if high > low else np.zeros_like(array)


# A float tensor whose values reach past this is taken for 0…255 data, not [0, 1] with the
# overshoot of a resize (which clamping removes).
FLOAT_IMAGE_LIMIT = 2.0


def _tensor_to_image(tensor: torch.Tensor, name: str) -> torch.Tensor:
    x = tensor.detach()
    if x.dim() == 4 and x.shape[0] == 1:
        x = x[0]
    if x.dim() == 2:
        x = x.unsqueeze(0)
    if x.dim() != 3 or x.shape[0] not in (1, 3, 4):
        raise ImageError(
            f"{name}: an image tensor must be (3, H, W), (1, 3, H, W) or (1, H, W), got shape {tuple(tensor.shape)}"
        )
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    elif not x.is_floating_point():
        raise ImageError(f"{name}: an image tensor must be uint8 or floating point in [0, 1], got {x.dtype}")
    x = x.float().cpu()
    if (
        x.numel()
        and torch.isfinite(x).all()
        and not -FLOAT_IMAGE_LIMIT < float(x.min()) <= float(x.max()) < FLOAT_IMAGE_LIMIT
    ):
        raise ImageError(
            f"{name}: a floating-point image tensor must hold values in [0, 1], this one spans "
            f"{float(x.min()):g} to {float(x.max()):g}; divide 0…255 values by 255 (or pass a uint8 tensor)"
        )
    if x.shape[0] == 4:
        x = x[:3] * x[3:] + (1 - x[3:])
    if x.shape[0] == 1:
        x = x.repeat(3, 1, 1)
    if not torch.isfinite(x).all():
        raise ImageError(f"{name}: the image tensor contains NaN or infinite values")
    return x.clamp(0, 1).contiguous()


def load_image(source: ImageSource, name: str = "image", max_pixels: int = DEFAULT_MAX_INPUT_PIXELS) -> torch.Tensor:
    """An image as float32 ``(3, H, W)`` RGB in [0, 1]; raises :class:`ImageError`."""
    if isinstance(source, torch.Tensor):
        image = _tensor_to_image(source, name)
    elif isinstance(source, Image.Image):
        _check_pixels(source.size, name, max_pixels)
        image = _pil_to_tensor(source, name)
    elif isinstance(source, (str, os.PathLike)):
        image = _read_file(Path(source), name, max_pixels)
    else:
        raise ImageError(f"{name}: expected a file path, a PIL image or a tensor, got {type(source).__name__}")
    if min(image.shape[1:]) < 1:
        raise ImageError(f"{name}: the image is empty ({image.shape[2]}x{image.shape[1]} pixels)")
    return image


# The formats named when a file is not a picture (Pillow reads more; these are the ones people bring).
PICTURE_FORMATS = "PNG, JPEG, WebP, TIFF, BMP or GIF"
LIMIT_ADVICE = "; raise it with `max_input_pixels` if you mean it"
MEMORY_ADVICE = ", or keep `max_input_pixels` at a value the memory can hold"


def _check_pixels(
    size: Tuple[int, int], name: str, max_pixels: int, error: Type[InputError] = ImageError, advice: str = LIMIT_ADVICE
) -> None:
    width, height = size
    if width * height > max_pixels:
        raise error(f"{name} is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,}{advice}")


@contextlib.contextmanager
def _without_pillows_bomb_limit() -> Iterator[None]:
    """Pillow's own decompression-bomb limit off for the block: our callers count pixels against the
    run's limit themselves (:func:`decoded_picture`) or decode none (:func:`undecoded_picture`), and
    Pillow's default would refuse a picture the run was allowed to take."""
    previous_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous_limit


@contextlib.contextmanager
def decoded_picture(
    source: Union[Path, io.BytesIO],
    what: str,
    max_pixels: int,
    error: Type[InputError] = ImageError,
    limit_advice: str = LIMIT_ADVICE,
    memory_advice: str = MEMORY_ADVICE,
) -> Iterator[Image.Image]:
    """`source` (a file, or a file's bytes) opened and decoded in full for the block, its pixels
    counted against `max_pixels` before decoding (in place of Pillow's own bomb limit, so that the
    line can name what raises it: `limit_advice`, and what lowers it: `memory_advice`; both empty
    where the reader cannot change it, as for an upload); else one line naming `what`, as `error`: not a
    picture, over the limit, truncated or corrupt, too large for this machine's memory. The one
    check of every picture read, from a path or from an upload."""
    try:
        with _without_pillows_bomb_limit(), Image.open(source) as image:
            _check_pixels(image.size, what, max_pixels, error, limit_advice)
            image.load()
            yield image
    except UnidentifiedImageError:
        raise error(f"{what} is not a picture ({PICTURE_FORMATS})") from None
    except MemoryError:
        raise error(
            f"{what} is too large to decode in this machine's memory; use a smaller image{memory_advice}"
        ) from None
    except (OSError, SyntaxError, ValueError) as problem:
        if isinstance(problem, InputError):
            raise
        raise error(f"{what} is truncated or corrupt ({problem})") from None


@contextlib.contextmanager
def undecoded_picture(path: Union[str, os.PathLike], what: str) -> Iterator[Image.Image]:
    """`path` opened for its header and metadata (its size, colour profile, text) and never decoded,
    so a picture of any size may be asked what it holds, at the cost of its header; one ImageError
    line naming `what` where it is not a file or not a picture. Every read of a picture's metadata
    after its pixels were read (:func:`decoded_picture`) goes through here."""
    path = Path(path)
    check_regular_file(path, what, ImageError)
    try:
        with _without_pillows_bomb_limit(), Image.open(path) as image:
            yield image
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as problem:
        if isinstance(problem, InputError):
            raise
        raise ImageError(f"{what} {str(path)!r} is not a picture Pillow can read ({problem})") from None


def _read_file(path: Path, name: str, max_pixels: int) -> torch.Tensor:
    if str(path) == "-":
        raise ImageError(f"{name}: reading an image from standard input ('-') is not supported; give a file path")
    check_regular_file(path, name, ImageError)
    if not os.access(path, os.R_OK):
        raise ImageError(f"{name} {str(path)!r} cannot be read (permission denied)")
    with decoded_picture(path, f"{name} {str(path)!r}", max_pixels) as image:
        return _pil_to_tensor(image, f"{name} {str(path)!r}")


def image_shape(image: torch.Tensor) -> Tuple[int, int]:
    """(height, width) of ``(..., H, W)``."""
    height, width = image.shape[-2:]
    return int(height), int(width)


def resize_to_width(image: torch.Tensor, width: int, shortest: int = 1) -> torch.Tensor:
    """Resize ``(3, H, W)`` to `width` columns, the aspect ratio kept, at least `shortest` rows (antialiased)."""
    height = max(shortest, round(image.shape[-2] * width / image.shape[-1]))
    return resize(image, (height, width))


def resize_to_long_side(image: torch.Tensor, long_side: int) -> torch.Tensor:
    """Resize ``(3, H, W)`` so that max(H, W) == long_side, keeping the aspect ratio (antialiased)."""
    height, width = image.shape[-2:]
    return resize(image, long_side_shape(height, width, long_side))


def resize(image: torch.Tensor, size) -> torch.Tensor:
    """Resize ``(3, H, W)`` or ``(B, 3, H, W)`` to size (H', W'), antialiased when shrinking."""
    batched = image if image.dim() == 4 else image.unsqueeze(0)
    if tuple(batched.shape[-2:]) == tuple(size):
        return image
    out = F.interpolate(batched, size=tuple(size), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    return out if image.dim() == 4 else out[0]


def to_pil(image: torch.Tensor) -> Image.Image:
    array = (image.detach().float().clamp(0, 1).cpu().permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    return Image.fromarray(array, "RGB")


# Where a picture keeps the record of how it was made (nst_ext.io.provenance): a PNG text chunk of this
# keyword; the ImageDescription tag of TIFF, and of the EXIF block of JPEG and WebP. BMP keeps none.
RECORD_KEY = "nst-ext"
IMAGE_DESCRIPTION = 0x010E  # the TIFF and EXIF tag
BIT_DEPTHS = {8: tuple(SAVE_FORMATS), 16: (".png", ".tif", ".tiff")}


def _encoded(
    image: Union[torch.Tensor, Image.Image],
    path: Path,
    image_format: str,
    record: Optional[str],
    icc_profile: Optional[bytes],
    bit_depth: int,
) -> bytes:
    """The file's bytes: 8-bit by Pillow, 16-bit RGB by nst_ext.io.encoders."""
    if bit_depth == 16:
        pixels = (
            _tensor_to_image(image, f"image for {str(path)!r}")
            if isinstance(image, torch.Tensor)
            else _pil_to_tensor(image)
        )
        array = (pixels.double().permute(1, 2, 0).numpy() * 65535.0).round().astype(np.uint16)
        if image_format == "PNG":
            return encoders.png16(array, {RECORD_KEY: record} if record else None, icc_profile)
        return encoders.tiff16(array, record, icc_profile)
    pil = image if isinstance(image, Image.Image) else to_pil(_tensor_to_image(image, f"image for {str(path)!r}"))
    options: Dict[str, object] = {"quality": 95} if image_format in ("JPEG", "WEBP") else {}
    if icc_profile and image_format != "BMP":
        options["icc_profile"] = icc_profile
    if record and image_format == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_itxt(RECORD_KEY, record)
        options["pnginfo"] = info
    elif record and image_format == "TIFF":
        options["tiffinfo"] = {IMAGE_DESCRIPTION: record}
    elif record and image_format in ("JPEG", "WEBP"):
        exif = Image.Exif()
        exif[IMAGE_DESCRIPTION] = record
        options["exif"] = exif
    stream = io.BytesIO()
    pil.save(stream, format=image_format, **options)
    return stream.getvalue()


def read_record(path: Union[str, os.PathLike]) -> Optional[str]:
    """The record text :func:`save_image` wrote into a picture, or None where it has none; raises
    ImageError where the file cannot be read as an image."""
    with undecoded_picture(path, "picture") as image:
        # A PNG's text chunks before its pixels are in `info` (save_image writes them there); its
        # `text` would decode the whole picture to look for more after them.
        text = image.info.get(RECORD_KEY) if image.format == "PNG" else None
        if image.format == "TIFF":
            text = getattr(image, "tag_v2", {}).get(IMAGE_DESCRIPTION)  # a TIFF's tags (TiffImageFile)
        elif image.format in ("JPEG", "WEBP", "MPO"):
            text = image.getexif().get(IMAGE_DESCRIPTION)
    return text if isinstance(text, str) else None


def icc_profile(source) -> Optional[bytes]:
    """The ICC colour profile embedded in an image file (None: none, not a file, or not a picture):
    an output carries its content's, so a colour-managed viewer shows it in the content's colours.
    Read from the header alone, whatever the picture's size (the run's pixel limit was applied
    when its pixels were read)."""
    if not isinstance(source, (str, os.PathLike)):
        return None
    try:
        with undecoded_picture(source, "content") as image:
            return image.info.get("icc_profile") or None
    except ImageError:
        return None


def save_image(
    image: Union[torch.Tensor, Image.Image],
    path: Union[str, os.PathLike],
    overwrite: bool = False,
    record: Optional[str] = None,
    icc_profile: Optional[bytes] = None,
    bit_depth: int = 8,
) -> Path:
    """Write an image atomically: to a temporary file beside `path`, then moved
    into place. An existing file is kept unless `overwrite`; the format follows
    the extension. A tensor may be ``(3, H, W)``, ``(1, 3, H, W)`` or ``(1, H, W)``
    in [0, 1] (NaN or infinite values are refused). Ctrl-C and SIGTERM wait until
    the file is in place (:func:`nst_ext.io.outputs.deferred_signals`), so no
    temporary file is ever left behind. `record`: ASCII text kept in the picture
    (:data:`RECORD_KEY`; :func:`read_record` reads it back); `icc_profile`: the colour profile
    to embed; `bit_depth` 16: 16 bits per sample from the float values (PNG and TIFF only)."""
    path = Path(path)
    check_outputs([(path, "output image")], inputs=(), overwrite=overwrite)
    if bit_depth not in BIT_DEPTHS:
        raise OutputError(f"bit depth must be 8 or 16, got {bit_depth!r}")
    if path.suffix.lower() not in BIT_DEPTHS[bit_depth]:
        raise OutputError(f"{str(path)!r}: 16-bit output is written as PNG or TIFF; name it .png or .tif")
    image_format = SAVE_FORMATS[path.suffix.lower()]
    with deferred_signals():  # a stop signal during the encoding or the write waits until the file is in place
        encoded = _encoded(image, path, image_format, record, icc_profile, bit_depth)
        with atomic_write(path, overwrite) as temporary:
            with open(temporary, "wb") as stream:
                stream.write(encoded)
    return path
