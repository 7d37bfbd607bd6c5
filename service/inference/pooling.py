"""Pooling and L2 normalisation of a model's per-step vectors.

`pool` reduces the per-step vectors of one input ([steps, D], its valid steps
only) to what a client asked for: their mean; the last one (c_t at the end sees
the whole input, as the autoregressor is causal); "stats", their mean and
(population) standard deviation concatenated, [mean ⊕ std] of dimension 2·D,
the x-vector idea: speaker and style tasks need the spread of the steps, which
the mean drops; or all of them ("none"). `pooled_dim` is the dimension that
comes out.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Pooling = Literal["mean", "last", "stats", "none"]
POOLINGS: tuple[Pooling, ...] = ("mean", "last", "stats", "none")
# The poolings that give one vector per input: what a collection (or a vectors file) holds.
VectorPooling = Literal["mean", "last", "stats"]
VECTOR_POOLINGS: tuple[VectorPooling, ...] = ("mean", "last", "stats")
_EPS = 1e-12


def pooled_dim(width: int, pooling: Pooling) -> int:
    """The values per vector `pool` gives for a layer of `width` (per step under "none")."""
    return 2 * width if pooling == "stats" else width


def pool(vectors: np.ndarray, pooling: Pooling) -> np.ndarray:
    """[steps, D] -> [D] ("mean", "last"), [2D] ("stats") or [steps, D] ("none"), as float32.

    Means and standard deviations are computed in float64; one step has std 0.
    """
    if vectors.ndim != 2 or vectors.shape[0] == 0:
        raise ValueError(f"expected [steps >= 1, D] vectors, got shape {vectors.shape}")
    if pooling == "mean":
        out = vectors.mean(axis=0, dtype=np.float64)
    elif pooling == "last":
        out = vectors[-1]
    elif pooling == "stats":
        wide = vectors.astype(np.float64)
        out = np.concatenate([wide.mean(axis=0), wide.std(axis=0, ddof=0)])
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
