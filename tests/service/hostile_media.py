"""Hostile files and bodies for tests/service/test_hostile.py, made in memory.

Files that decode to NaN or infinity, polyglots (a PNG with a WAV appended, a
JPEG that is also a ZIP, a ZIP with a JPEG inside), truncated media, lying
headers inside files, deeply nested JSON and numbers too large for anything.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib
from typing import Any

import numpy as np
import soundfile as sf
from PIL import Image

from tests.service.conftest import SR, audio_bytes, image_bytes

DEPTH = 10_000
VEC = [0.5] * 16


def float_wav(value: float, seconds: float = 0.5) -> bytes:
    """A float WAV whose samples are all `value` (NaN, inf...)."""
    buf = io.BytesIO()
    samples = np.full(round(seconds * SR), value, dtype=np.float32)
    sf.write(buf, samples, SR, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def float_tiff(value: float, size: int = 40) -> bytes:
    """A 32-bit float TIFF (Pillow mode F) whose pixels are all `value`."""
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size), value, dtype=np.float32), mode="F").save(buf, "TIFF")
    return buf.getvalue()


def zip_of(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr(name, data)
    return buf.getvalue()


def jpeg_zip() -> bytes:
    """A JPEG with a ZIP appended: a valid JPEG and (by its central directory) a valid ZIP."""
    return image_bytes("JPEG") + zip_of("payload.txt", b"hello")


def zip_jpeg() -> bytes:
    """A ZIP archive holding a JPEG: starts with PK, not with a picture."""
    return zip_of("picture.jpg", image_bytes("JPEG"))


def png_wav() -> bytes:
    return image_bytes("PNG") + audio_bytes(0.3)


def wav_png() -> bytes:
    return audio_bytes(0.3) + image_bytes("PNG")


def html_png() -> bytes:
    return b"<html><script>alert(1)</script></html>\n" + image_bytes("PNG")


def half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def wav_header(offset: int, fmt: str, value: int, seconds: float = 0.5) -> bytes:
    """A 16-bit PCM WAV with one header field overwritten (sample rate, channels...)."""
    data = bytearray(audio_bytes(seconds))
    struct.pack_into(fmt, data, offset, value)
    return bytes(data)


def png_claiming(width: int, height: int) -> bytes:
    """A tiny valid PNG whose header claims `width` x `height` (a decompression bomb)."""
    data = bytearray(image_bytes("PNG", 8, 8))
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def deep_array(depth: int = DEPTH) -> bytes:
    return b"[" * depth + b"]" * depth


def deep_object(depth: int = DEPTH) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def raw_json(template: str, **values: Any) -> bytes:
    """JSON text with literal pieces (NaN, 1e400, 10**1000) json.dumps would not write."""
    return template.format(**values).encode()


def vector_json(first: str) -> str:
    """A JSON list of 16 numbers whose first one is written as `first`, verbatim."""
    return "[" + ",".join([first, *(json.dumps(x) for x in VEC[1:])]) + "]"


BIG_INT = "1" + "0" * 1000  # 10**1000: Python's json reads it, nothing can use it
HUGE_INT = "1" + "0" * 5000  # 10**5000: more digits than any parser here accepts
