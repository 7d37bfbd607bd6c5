"""`service.inference.pooling`: each pooling of [steps, D] vectors, its width and precision."""

from __future__ import annotations

import numpy as np
import pytest

from service.inference.pooling import POOLINGS, VECTOR_POOLINGS, l2_normalize, pool, pooled_dim


def steps(n: int = 5, dim: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def test_mean_last_and_none() -> None:
    x = steps()
    np.testing.assert_allclose(pool(x, "mean"), x.astype(np.float64).mean(axis=0), atol=1e-7)
    np.testing.assert_array_equal(pool(x, "last"), x[-1])
    np.testing.assert_array_equal(pool(x, "none"), x)


def test_stats_is_the_mean_then_the_population_std() -> None:
    x = steps(7, 4)
    out = pool(x, "stats")
    assert out.shape == (8,) and out.dtype == np.float32
    wide = x.astype(np.float64)
    np.testing.assert_allclose(out[:4], wide.mean(axis=0), atol=1e-7)
    np.testing.assert_allclose(out[4:], wide.std(axis=0, ddof=0), atol=1e-7)
    assert np.all(out[4:] >= 0)


def test_stats_of_one_step_has_std_zero() -> None:
    x = steps(1, 5)
    out = pool(x, "stats")
    np.testing.assert_array_equal(out[:5], x[0])
    np.testing.assert_array_equal(out[5:], np.zeros(5, dtype=np.float32))


def test_stats_keeps_a_small_spread_on_a_large_offset() -> None:
    x = (1e4 + np.array([[0.0], [0.5], [1.0], [1.5]])).astype(np.float32)
    out = pool(x, "stats")
    np.testing.assert_allclose(out, [1e4 + 0.75, np.sqrt(0.3125)], rtol=1e-6)


def test_stats_normalised_as_one_vector() -> None:
    out = l2_normalize(pool(steps(6, 3), "stats"))
    assert out.shape == (6,)
    assert abs(float(np.linalg.norm(out)) - 1.0) < 1e-6


def test_pooled_dim() -> None:
    assert [pooled_dim(16, p) for p in POOLINGS] == [16, 16, 32, 16]
    assert set(VECTOR_POOLINGS) == set(POOLINGS) - {"none"}
    for pooling in VECTOR_POOLINGS:
        assert pool(steps(3, 16), pooling).shape == (pooled_dim(16, pooling),)


@pytest.mark.parametrize("shape", [(0, 3), (3,), (2, 3, 4)])
def test_bad_shapes_are_refused(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="expected"):
        pool(np.zeros(shape, dtype=np.float32), "stats")


def test_an_unknown_pooling_is_refused() -> None:
    with pytest.raises(ValueError, match=r"unknown pooling 'max'.*stats"):
        pool(steps(), "max")  # type: ignore[arg-type]
