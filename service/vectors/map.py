"""A 2-D map of a collection: principal component analysis of its vectors, in NumPy.

`pca_2d` centres the vectors and takes the two leading right singular
vectors as axes. Each axis's sign is fixed (its largest entry positive) so
that the same vectors always give the same picture; an axis the data does not
span (fewer than three distinct points) is all zeros, so everything projects
to 0 along it rather than along an arbitrary direction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_EPS = 1e-9


@dataclass(frozen=True)
class Projection:
    """Two principal axes of a set of vectors, and the coordinates of those vectors."""

    mean: np.ndarray  # float32 [D]
    components: np.ndarray  # float32 [2, D], unit rows or zero rows
    explained: list[float]  # share of the variance along each axis
    coords: np.ndarray  # float32 [N, 2]

    def project(self, vector: np.ndarray) -> tuple[float, float]:
        """Where another vector of the same space lands on the map."""
        x, y = self.components.astype(np.float64) @ (vector - self.mean).astype(np.float64)
        return float(x), float(y)


def pca_2d(vectors: np.ndarray) -> Projection:
    """The two-component PCA of `vectors` ([N, D], N may be 0)."""
    if vectors.ndim != 2:
        raise ValueError(f"expected [N, D] vectors, got shape {vectors.shape}")
    n, dim = vectors.shape
    data = vectors.astype(np.float64)
    mean = data.mean(axis=0) if n else np.zeros(dim)
    centred = data - mean
    components = np.zeros((2, dim))
    explained = [0.0, 0.0]
    if n > 1:
        _, singular, vt = np.linalg.svd(centred, full_matrices=False)
        total = float(np.sum(singular**2))
        for i in range(min(2, len(singular))):
            if total <= _EPS or singular[i] ** 2 <= _EPS * total:
                break
            axis = vt[i]
            components[i] = axis if axis[np.argmax(np.abs(axis))] >= 0 else -axis
            explained[i] = float(singular[i] ** 2 / total)
    coords = centred @ components.T if n else np.zeros((0, 2))
    return Projection(
        mean=mean.astype(np.float32),
        components=components.astype(np.float32),
        explained=explained,
        coords=coords.astype(np.float32),
    )
