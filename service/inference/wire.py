"""The base64 wire formats: file bytes in JSON bodies, and float32 vectors.

`b64_bytes` reads what clients send: standard or URL-safe base64, line breaks
ignored, padding optional. A vector is its little-endian float32 bytes in
base64 (the OpenAI API's `encoding_format=base64`): `to_base64` writes one,
`from_base64` reads one back.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re

import numpy as np

_BASE64_CHARS = re.compile(r"^[A-Za-z0-9+/_-]*={0,2}$")
_LINE_BREAKS = re.compile(r"[\r\n]+")  # MIME base64 wraps lines; spaces are never valid


def b64_bytes(text: str) -> bytes:
    """Standard or URL-safe base64, line breaks ignored, padding optional; ValueError if not."""
    if text:
        # The common case, strict padded standard base64, is checked and decoded in
        # C; scanning a clip's worth of characters with the regexes below costs
        # more than the rest of its request.
        with contextlib.suppress(binascii.Error, ValueError):
            return base64.b64decode(text, validate=True)
    compact = _LINE_BREAKS.sub("", text)
    if not compact or not _BASE64_CHARS.match(compact):
        raise ValueError("not base64")
    compact = compact.rstrip("=")
    if len(compact) % 4 == 1:
        raise ValueError("impossible base64 length")
    compact += "=" * (-len(compact) % 4)
    try:
        if "-" in compact or "_" in compact:
            return base64.urlsafe_b64decode(compact)
        return base64.b64decode(compact, validate=True)
    except binascii.Error as exc:  # a subclass of ValueError; said plainly
        raise ValueError("not base64") from exc


def to_base64(vector: np.ndarray) -> str:
    """One vector as base64 of its little-endian float32 bytes."""
    return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")


def from_base64(text: str) -> np.ndarray:
    """A vector written by `to_base64` (either alphabet); ValueError if it is not one."""
    raw = b64_bytes(text)
    if len(raw) % 4:
        raise ValueError(f"{len(raw)} bytes are not a whole number of float32 values")
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)
