"""FlatIndex and IVFIndex with real FAISS: exactness, deletion, filters, recall, snapshots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.vectors.index import (
    FlatIndex,
    IVFIndex,
    SnapshotError,
    exact_top_k,
    load_index,
    make_index,
    normalized,
)


def clustered(
    n: int, dim: int, centres: int = 50, spread: float = 0.3, seed: int = 0
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim))
    x = c[rng.integers(0, centres, n)] + spread * rng.standard_normal((n, dim))
    return normalized(x)


def brute(query: np.ndarray, vectors: np.ndarray, seqs: np.ndarray, k: int) -> list[int]:
    order = exact_top_k(normalized(query), vectors, k)[0]
    return seqs[order].tolist()


def trained_ivf(n: int = 3000, dim: int = 16, **params: object) -> tuple[IVFIndex, np.ndarray]:
    x = clustered(n, dim)
    ivf = IVFIndex.build(dim, np.arange(1, n + 1), x, nlist=16, **params)
    assert ivf.trained
    return ivf, x


def test_flat_is_exact() -> None:
    x = clustered(500, 8)
    seqs = np.arange(100, 600)
    index = FlatIndex(8)
    index.add(seqs, x * 3.0)  # normalised on the way in
    for q in x[:20] + 0.05:
        scores, found = index.search(q, 7)
        assert found.tolist() == brute(q, x, seqs, 7)
        assert np.all(np.diff(scores) <= 1e-6) and scores[0] <= 1.0 + 1e-5


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_no_padding_when_k_exceeds_count(kind: str) -> None:
    index = make_index(kind, 4)
    assert index.search(np.ones(4), 5)[1].size == 0
    index.add(np.array([7, 8, 9]), np.eye(4)[:3])
    scores, found = index.search(np.ones(4), 10)
    assert sorted(found.tolist()) == [7, 8, 9] and len(scores) == 3


def test_ivf_widens_nprobe_rather_than_pad() -> None:
    ivf, _ = trained_ivf(nprobe=1)
    assert ivf.nprobe == 1
    _, found = ivf.search(np.ones(16), 1000)
    assert len(found) == 1000 and np.all(found > 0) and len(set(found.tolist())) == 1000


def test_ivf_untrained_is_exact_then_trains() -> None:
    x = clustered(1000, 16)
    seqs = np.arange(1, 1001)
    ivf = IVFIndex(16, nlist=16)
    ivf.add(seqs[:500], x[:500])
    assert not ivf.trained and not ivf.maintenance_due()  # 500 < 39 * 16
    q = x[3] + 0.1
    assert ivf.search(q, 5)[1].tolist() == brute(q, x[:500], seqs[:500], 5)
    ivf.add(seqs[500:], x[500:])
    assert ivf.maintenance_due()
    ivf = ivf.rebuilt()
    assert ivf.trained and ivf.nlist == 16 and 8 <= ivf.nprobe <= 16 and ivf.ntotal == 1000
    assert sorted(ivf.seqs().tolist()) == seqs.tolist()
    assert ivf.search(x[10], 1)[1].tolist() == [11]
    assert not ivf.maintenance_due()


def test_ivf_retrains_after_4x_growth() -> None:
    ivf, _ = trained_ivf(n=700)
    more = clustered(2100, 16, seed=1)
    ivf.add(np.arange(701, 2801), more)
    assert ivf.maintenance_due()
    again = ivf.rebuilt()
    assert again.trained_at == 2800 and again.ntotal == 2800 and not again.maintenance_due()


def test_remove_flat_and_ivf() -> None:
    x = clustered(800, 16)
    seqs = np.arange(1, 801)
    flat = FlatIndex(16)
    flat.add(seqs, x)
    ivf = IVFIndex.build(16, seqs, x, nlist=16)
    untrained = IVFIndex(16, nlist=16)
    untrained.add(seqs[:100], x[:100])
    for index in (flat, ivf, untrained):
        assert index.remove(np.array([5, 6, 99999])) == 2
        _, found = index.search(x[4], 50)
        assert 5 not in found.tolist() and 6 not in found.tolist()
        assert 5 not in index.seqs().tolist()
        assert index.remove(np.array([5])) == 0
    assert flat.ntotal == 798 and ivf.ntotal == 798 and untrained.ntotal == 98


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_filter_never_loses_matches(kind: str) -> None:
    x = clustered(5000, 16)
    seqs = np.arange(1, 5001)
    index = IVFIndex.build(16, seqs, x, nlist=64, nprobe=1) if kind == "ivf" else FlatIndex(16)
    if kind == "flat":
        index.add(seqs, x)
    allowed = np.array([17, 2500, 4999])  # far apart, likely in lists that are not probed
    for q in x[:10]:
        _, found = index.search(q, 10, allowed)
        assert sorted(found.tolist()) == allowed.tolist()
    assert index.search(x[0], 10, np.array([], np.int64))[1].size == 0


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_large_filter_uses_selector_and_fills_k(kind: str) -> None:
    x = clustered(5000, 16)
    seqs = np.arange(1, 5001)
    if kind == "ivf":
        index: FlatIndex | IVFIndex = IVFIndex.build(
            16, seqs, x, nlist=64, nprobe=1, exact_subset_max=10
        )
    else:
        index = FlatIndex(16, exact_subset_max=10)
        index.add(seqs, x)
    allowed = seqs[::50]  # 100 seqs > exact_subset_max
    for q in x[:10]:
        _, found = index.search(q, 20, allowed)
        assert len(found) == 20 and set(found.tolist()) <= set(allowed.tolist())
        if kind == "flat":
            assert found.tolist() == brute(q, x[allowed - 1], allowed, 20)


def test_ivf_recall_at_10_vs_flat() -> None:
    dim, n = 32, 20_000
    x = clustered(n + 200, dim, centres=200, spread=0.35)
    base, queries = x[:n], x[n:]  # queries are not in the index
    seqs = np.arange(1, n + 1)
    ivf = IVFIndex.build(dim, seqs, base, nlist=128)
    truth = seqs[exact_top_k(queries, base, 10)]  # what the flat index returns
    hits = sum(
        len(set(t.tolist()) & set(ivf.search(q, 10)[1].tolist()))
        for t, q in zip(truth, queries, strict=True)
    )
    assert hits / (10 * len(queries)) >= 0.95, (hits, ivf.nprobe)


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_snapshot_roundtrip_and_corruption(kind: str, tmp_path: Path) -> None:
    x = clustered(1000, 16)
    seqs = np.arange(1, 1001)
    index = IVFIndex.build(16, seqs, x, nlist=16) if kind == "ivf" else make_index("flat", 16)
    if kind == "flat":
        index.add(seqs, x)
    path = tmp_path / "index.faiss"
    index.save(path, version=42)
    loaded, version = load_index(path, kind, 16)
    assert version == 42 and loaded.ntotal == 1000
    assert loaded.search(x[3], 5)[1].tolist() == index.search(x[3], 5)[1].tolist()
    if isinstance(loaded, IVFIndex):
        assert loaded.trained and loaded.nprobe == index.nprobe  # type: ignore[union-attr]
        assert loaded.remove(np.array([1])) == 1
    with pytest.raises(SnapshotError):
        load_index(path, "flat" if kind == "ivf" else "ivf", 16)
    with pytest.raises(SnapshotError):
        load_index(path, kind, 8)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(SnapshotError):
        load_index(path, kind, 16)
    path.write_bytes(b"garbage")
    with pytest.raises(SnapshotError):
        load_index(path, kind, 16)
    with pytest.raises(SnapshotError):
        load_index(tmp_path / "missing.faiss", kind, 16)
