"""The one PNG encoder: 8-bit grey, RGB or RGBA with text chunks, written atomically."""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path

import imagecodecs
import numpy as np

from wsiviewer import RESEARCH_USE_NOTICE, __version__
from wsiviewer.core.exports.files import write_binary


def write_png(
    path: str | os.PathLike[str],
    pixels: np.ndarray,
    *,
    empty: bool = False,
    extra: Mapping[str, str] | None = None,
) -> Path:
    text = {"Disclaimer": RESEARCH_USE_NOTICE, "Software": f"wsiviewer {__version__}"}
    text.update(extra or {})
    if empty:
        text["Empty"] = "The analysis grid has no cells; this image is a placeholder."
    encoded = png_bytes(pixels, text)
    return write_binary(path, lambda handle: handle.write(encoded))


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


#: PNG colour type by samples per px: grey, RGB, RGBA.
_PNG_COLOUR_TYPES = {1: 0, 3: 2, 4: 6}


#: Filtered bytes above which an image is deflated band by band (stdlib zlib, streaming)
#: rather than at once (zlib-ng, faster): a 25,000² mask then needs no full-size copies.
_STREAM_ABOVE_BYTES = 64 * 2**20
_BAND_BYTES = 8 * 2**20


def png_bytes(pixels: np.ndarray, text: Mapping[str, str]) -> bytes:
    """An 8-bit grey, RGB or RGBA PNG of ``(H, W)`` / ``(H, W, 3 or 4) uint8`` px, with text.

    ``bool`` px are written 0 and 255. Every row uses the Sub filter and the data is deflated
    at level 2: by zlib-ng at once (several times faster than Pillow at its fastest level, for
    a file of about the same size), or for a large image band by band, so memory stays at the
    image plus a few MiB.
    """
    height, width = pixels.shape[:2]
    samples = 1 if pixels.ndim == 2 else pixels.shape[2]
    row_bytes = width * samples + 1
    header = struct.pack(">IIBBBBB", width, height, 8, _PNG_COLOUR_TYPES[samples], 0, 0, 0)
    chunks = [(b"IHDR", header)]
    chunks += [_png_text_chunk(key, value) for key, value in text.items()]
    if height * row_bytes <= _STREAM_ABOVE_BYTES:
        filtered = _filtered(pixels, samples).data
        idat = bytes(imagecodecs.zlibng_encode(filtered, level=2))  # type: ignore[arg-type]
    else:
        deflate = zlib.compressobj(level=2)
        band_rows = max(1, _BAND_BYTES // row_bytes)
        parts = [
            deflate.compress(_filtered(pixels[start : start + band_rows], samples).data)
            for start in range(0, height, band_rows)
        ]
        idat = b"".join([*parts, deflate.flush()])
    chunks += [(b"IDAT", idat), (b"IEND", b"")]
    return _PNG_SIGNATURE + b"".join(
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        for kind, data in chunks
    )


def _filtered(pixels: np.ndarray, samples: int) -> np.ndarray:
    """Rows with PNG's Sub filter: a filter-type byte, then each byte minus the same byte of
    the px to its left (mod 256)."""
    height, width = pixels.shape[:2]
    if pixels.dtype == np.bool_:
        rows = pixels.view(np.uint8).reshape(height, width * samples) * np.uint8(255)
    else:
        rows = np.ascontiguousarray(pixels, dtype=np.uint8).reshape(height, width * samples)
    filtered = np.empty((height, width * samples + 1), dtype=np.uint8)
    filtered[:, 0] = 1
    filtered[:, 1 : 1 + samples] = rows[:, :samples]
    np.subtract(rows[:, samples:], rows[:, :-samples], out=filtered[:, 1 + samples :])
    return filtered


def _png_text_chunk(key: str, value: str) -> tuple[bytes, bytes]:
    try:
        return b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1")
    except UnicodeEncodeError:
        # Keyword, no compression, no language tag, no translated keyword, UTF-8 text.
        return b"iTXt", key.encode("latin-1") + b"\0\0\0\0\0" + value.encode("utf-8")
