"""Pooling, normalisation and the base64 wire format of vectors.

`pool` reduces the per-step vectors of one input ([steps, D]) to what a client
asked for: their mean, the last one (c_t at the end sees the whole input, as
the autoregressor is causal), or all of them. `to_base64` writes a vector as
little-endian float32, the format of the OpenAI API's `encoding_format=base64`.
"""

from __future__ import annotations

import base64
from typing import Literal

import numpy as np

Pooling = Literal["mean", "last", "none"]
POOLINGS: tuple[Pooling, ...] = ("mean", "last", "none")
_EPS = 1e-12


def pool(vectors: np.ndarray, pooling: Pooling) -> np.ndarray:
    """[steps, D] -> [D] ("mean", "last") or [steps, D] ("none"), as float32."""
    if vectors.ndim != 2 or vectors.shape[0] == 0:
        raise ValueError(f"expected [steps >= 1, D] vectors, got shape {vectors.shape}")
    if pooling == "mean":
        out = vectors.mean(axis=0, dtype=np.float64)
    elif pooling == "last":
        out = vectors[-1]
    elif pooling == "none":
        out = vectors
    else:
        raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
    return np.asarray(out, dtype=np.float32)


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Each vector (last axis) scaled to unit length; an all-zero vector stays zero."""
    x = np.asarray(vectors, dtype=np.float32)
    norm = np.linalg.norm(x.astype(np.float64), axis=-1, keepdims=True)
    return (x / np.maximum(norm, _EPS)).astype(np.float32)


def to_base64(vector: np.ndarray) -> str:
    """One vector as base64 of its little-endian float32 bytes."""
    return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")


def from_base64(text: str) -> np.ndarray:
    """Inverse of `to_base64` (used by clients and tests)."""
    return np.frombuffer(base64.b64decode(text), dtype="<f4").astype(np.float32)
