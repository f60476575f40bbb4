"""Writers for 16-bit RGB pictures, which Pillow cannot write (it writes 16 bits per sample for
one-channel images only): PNG (RFC 2083 / ISO 15948) and baseline TIFF 6.0, each with a text
record of how the picture was made and the content's ICC colour profile. NumPy and zlib only.

Pixels are ``(H, W, 3)`` uint16 arrays; the result is the file's bytes.
"""

import struct
import zlib
from typing import List, Optional, Tuple

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png16(pixels: np.ndarray, text: Optional[dict] = None, icc_profile: Optional[bytes] = None) -> bytes:
    """A 16-bit RGB PNG. `text`: keyword -> value, written as UTF-8 iTXt chunks (Pillow reads them
    into ``Image.text``); `icc_profile`: an iCCP chunk."""
    height, width, channels = pixels.shape
    if channels != 3 or pixels.dtype != np.uint16:
        raise ValueError(f"png16 takes (H, W, 3) uint16 pixels, got {pixels.shape} {pixels.dtype}")
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)  # 16 bits, truecolour, no interlace
    rows = np.ascontiguousarray(pixels.astype(">u2")).view(np.uint8).reshape(height, width * 6)
    raw = np.concatenate([np.zeros((height, 1), dtype=np.uint8), rows], axis=1)  # filter type 0 before each row
    chunks = [_png_chunk(b"IHDR", header)]
    if icc_profile:
        chunks.append(_png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc_profile)))
    for keyword, value in (text or {}).items():
        chunks.append(_png_chunk(b"iTXt", keyword.encode("latin-1") + b"\x00\x00\x00\x00\x00" + value.encode("utf-8")))
    chunks.append(_png_chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)))
    chunks.append(_png_chunk(b"IEND", b""))
    return PNG_SIGNATURE + b"".join(chunks)


# TIFF field types.
_SHORT, _LONG, _ASCII, _UNDEFINED = 3, 4, 2, 7


def tiff16(pixels: np.ndarray, description: Optional[str] = None, icc_profile: Optional[bytes] = None) -> bytes:
    """A 16-bit RGB baseline TIFF, little-endian, uncompressed, one strip. `description`: the
    ImageDescription tag (ASCII; give JSON with non-ASCII characters escaped); `icc_profile`: the
    InterColorProfile tag (34675)."""
    height, width, channels = pixels.shape
    if channels != 3 or pixels.dtype != np.uint16:
        raise ValueError(f"tiff16 takes (H, W, 3) uint16 pixels, got {pixels.shape} {pixels.dtype}")
    data = pixels.astype("<u2").tobytes()
    extra = bytearray()  # values longer than 4 bytes, after the directory
    entries: List[Tuple[int, int, int, Optional[bytes]]] = []  # the strip offset's value: None until known

    def entry(tag: int, kind: int, count: int, value_bytes: Optional[bytes]) -> None:
        entries.append((tag, kind, count, value_bytes))

    entry(256, _LONG, 1, struct.pack("<I", width))
    entry(257, _LONG, 1, struct.pack("<I", height))
    entry(258, _SHORT, 3, struct.pack("<HHH", 16, 16, 16))
    entry(259, _SHORT, 1, struct.pack("<H", 1))  # no compression
    entry(262, _SHORT, 1, struct.pack("<H", 2))  # RGB
    if description is not None:
        entry(270, _ASCII, len(description) + 1, description.encode("ascii") + b"\x00")
    entry(273, _LONG, 1, None)  # the strip's offset, known once the layout is
    entry(277, _SHORT, 1, struct.pack("<H", 3))
    entry(278, _LONG, 1, struct.pack("<I", height))
    entry(279, _LONG, 1, struct.pack("<I", len(data)))
    entry(284, _SHORT, 1, struct.pack("<H", 1))  # interleaved
    if icc_profile:
        entry(34675, _UNDEFINED, len(icc_profile), icc_profile)
    directory_size = 2 + 12 * len(entries) + 4
    extra_start = 8 + directory_size
    fields: List[Tuple[int, int, int, Optional[bytes]]] = []
    for tag, kind, count, value in entries:
        if value is not None and len(value) > 4:
            if (extra_start + len(extra)) % 2:
                extra += b"\x00"  # values start on a word boundary
            fields.append((tag, kind, count, struct.pack("<I", extra_start + len(extra))))
            extra += value
        else:
            fields.append((tag, kind, count, value))
    strip_offset = extra_start + len(extra) + ((extra_start + len(extra)) % 2)
    directory = struct.pack("<H", len(fields))
    for tag, kind, count, value in fields:
        value = struct.pack("<I", strip_offset) if value is None else value
        directory += struct.pack("<HHI", tag, kind, count) + value.ljust(4, b"\x00")
    directory += struct.pack("<I", 0)  # no further directory
    padding = b"\x00" * (strip_offset - extra_start - len(extra))
    return b"II*\x00" + struct.pack("<I", 8) + directory + bytes(extra) + padding + data
