"""FAISS vector indexes derived from a collection's store, keyed by the store's `seq`.

Vectors are L2-normalised on the way in, so an inner product is a cosine.
`FlatIndex` is exact; `IVFIndex` stays an exact flat index until it holds
`39 * nlist` vectors, then trains an `IndexIVFFlat` that supports deletion,
with `nlist` and `nprobe` chosen automatically unless given. A filtered
`search(..., allowed=seqs)` never loses a match that exists. An index is not
locked: many threads may search at once, but a mutation must have the index to
itself (`service.vectors.collection` guarantees that). How nlist, nprobe and
filtered searches work: docs/architecture.md (Collections).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import faiss as _faiss
import numpy as np

from service.durable import fsync_dir

# faiss's bundled type stubs describe the raw SWIG signatures, not the numpy-friendly
# wrappers (`search(x, k, params=...)`, `remove_ids(array)`), so it is typed as Any here.
faiss: Any = _faiss

logger = logging.getLogger(__name__)

INDEX_KINDS = ("flat", "ivf")
_MAGIC = b"CPCIDX01"
_RECALL_QUERIES = 256


class SnapshotError(ValueError):
    """An index snapshot that is missing, corrupt or describes another index."""


class VectorIndex(Protocol):
    """What a collection needs from an index."""

    kind: str
    dim: int

    @property
    def ntotal(self) -> int: ...

    def add(self, seqs: np.ndarray, vectors: np.ndarray) -> None: ...

    def remove(self, seqs: np.ndarray) -> int: ...

    def search(
        self, query: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def seqs(self) -> np.ndarray: ...

    def maintenance_due(self) -> bool: ...

    def rebuilt(self) -> VectorIndex: ...

    def save(self, path: Path, version: int) -> None: ...


def normalized(vectors: np.ndarray) -> np.ndarray:
    """A float32, C-contiguous, L2-normalised copy of `vectors` (1-D or 2-D)."""
    out = np.array(vectors, dtype=np.float32, order="C", copy=True, ndmin=2)
    faiss.normalize_L2(out)
    return out


def _as_seqs(seqs: np.ndarray | list[int]) -> np.ndarray:
    return np.ascontiguousarray(seqs, dtype=np.int64).reshape(-1)


def _top_k(scores: np.ndarray, seqs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if len(scores) > k:
        part = np.argpartition(-scores, k - 1)[:k]
        scores, seqs = scores[part], seqs[part]
    order = np.argsort(-scores, kind="stable")
    return scores[order].astype(np.float32), seqs[order].astype(np.int64)


def _drop_padding(dist: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = ids[0] >= 0
    return dist[0][keep].astype(np.float32), ids[0][keep].astype(np.int64)


class _FaissIndex:
    """What flat and IVF share: filtered search, snapshots."""

    kind = "base"

    def __init__(self, dim: int, exact_subset_max: int = 4096) -> None:
        self.dim = dim
        self.exact_subset_max = exact_subset_max

    # Subclasses provide these four.
    @property
    def ntotal(self) -> int:
        raise NotImplementedError

    def _reconstruct(self, seqs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _search(
        self, q: np.ndarray, k: int, sel: Any, wanted: int
    ) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def seqs(self) -> np.ndarray:
        raise NotImplementedError

    def search(
        self, query: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """`(scores, seqs)` of the best `k`, best first; `allowed` restricts to those seqs."""
        q = normalized(query)
        if q.shape != (1, self.dim):
            raise ValueError(f"query has shape {np.shape(query)}, index has dim {self.dim}")
        if k <= 0 or self.ntotal == 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        if allowed is None:
            return self._search(q, min(k, self.ntotal), None, min(k, self.ntotal))
        subset = np.unique(_as_seqs(allowed))
        if len(subset) == 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        if len(subset) <= self.exact_subset_max:
            return self._exact_subset(q[0], k, subset)
        sel = faiss.IDSelectorBatch(subset)
        return self._search(q, min(k, self.ntotal), sel, min(k, len(subset)))

    def _exact_subset(
        self, q: np.ndarray, k: int, subset: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        try:
            vectors = self._reconstruct(subset)
        except RuntimeError:  # some seq is not indexed: keep those that are
            subset = np.intersect1d(subset, self.seqs())
            vectors = self._reconstruct(subset)
        return _top_k(vectors @ q, subset, min(k, len(subset)))

    # -- snapshots -----------------------------------------------------------------------------

    def _header(self) -> dict[str, Any]:
        return {"kind": self.kind, "dim": self.dim, "ntotal": self.ntotal}

    def _payload(self) -> Any:
        raise NotImplementedError

    def save(self, path: Path, version: int) -> None:
        """Write a snapshot atomically (temp file, fsync, rename), tagged with `version`."""
        header = json.dumps({**self._header(), "version": version, "saved_at": time.time()})
        head = header.encode()
        payload = faiss.serialize_index(self._payload())
        digest = hashlib.sha256(head)
        digest.update(memoryview(payload))
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(_MAGIC + struct.pack("<I", len(head)) + head)
                fh.write(struct.pack("<Q", len(payload)))
                fh.write(memoryview(payload))
                fh.write(digest.digest())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a full disk: give its space back
            raise
        fsync_dir(path.parent)
        logger.info("index snapshot %s: %d vectors at version %d", path, self.ntotal, version)


def _read_snapshot(path: Path) -> tuple[dict[str, Any], np.ndarray]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SnapshotError(f"cannot read {path}: {exc}") from exc
    try:
        if data[:8] != _MAGIC:
            raise SnapshotError(f"{path} is not an index snapshot")
        (hlen,) = struct.unpack_from("<I", data, 8)
        head = data[12 : 12 + hlen]
        (plen,) = struct.unpack_from("<Q", data, 12 + hlen)
        start = 20 + hlen
        payload = data[start : start + plen]
        digest = data[start + plen :]
        if len(payload) != plen or hashlib.sha256(head + payload).digest() != digest:
            raise SnapshotError(f"{path} is truncated or corrupt")
        return json.loads(head), np.frombuffer(payload, dtype=np.uint8)
    except (struct.error, ValueError) as exc:
        if isinstance(exc, SnapshotError):
            raise
        raise SnapshotError(f"{path} is corrupt: {exc}") from exc


class FlatIndex(_FaissIndex):
    """Exact cosine search over every vector."""

    kind = "flat"

    def __init__(self, dim: int, exact_subset_max: int = 4096) -> None:
        super().__init__(dim, exact_subset_max)
        self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def add(self, seqs: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors under new seqs (a seq must not be in the index already)."""
        ids = _as_seqs(seqs)
        if len(ids):
            self.index.add_with_ids(normalized(vectors), ids)

    def remove(self, seqs: np.ndarray) -> int:
        ids = _as_seqs(seqs)
        return int(self.index.remove_ids(ids)) if len(ids) else 0

    def seqs(self) -> np.ndarray:
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def vectors(self) -> np.ndarray:
        """All vectors in insertion order (a view into FAISS memory: copy before mutating)."""
        flat = faiss.downcast_index(self.index.index)
        raw = faiss.rev_swig_ptr(flat.get_xb(), self.ntotal * self.dim)
        return np.asarray(raw).reshape(self.ntotal, self.dim)

    def _reconstruct(self, seqs: np.ndarray) -> np.ndarray:
        return np.asarray(self.index.reconstruct_batch(seqs))

    def _search(
        self, q: np.ndarray, k: int, sel: Any, wanted: int
    ) -> tuple[np.ndarray, np.ndarray]:
        params = faiss.SearchParameters(sel=sel) if sel is not None else None
        dist, ids = self.index.search(q, k, params=params)
        return _drop_padding(dist, ids)

    def maintenance_due(self) -> bool:
        return False

    def rebuilt(self) -> FlatIndex:
        return self

    def _payload(self) -> Any:
        return self.index


def default_nlist(n: int) -> int:
    """`4 * sqrt(n)` lists, clamped to [16, 65536]."""
    return int(min(65536, max(16, round(4 * math.sqrt(max(n, 1))))))


class IVFIndex(_FaissIndex):
    """Approximate cosine search with deletion: exact until trained, then IVF-Flat.

    `nlist`/`nprobe` None mean automatic (see the module docstring). `train_per_list`
    bounds the k-means sample (`nlist * train_per_list` vectors, run for
    `train_iterations`); the other vectors are only assigned to lists.
    """

    kind = "ivf"

    def __init__(
        self,
        dim: int,
        nlist: int | None = None,
        nprobe: int | None = None,
        target_recall: float = 0.98,
        min_nprobe: int = 8,
        train_per_list: int = 64,
        train_iterations: int = 10,
        exact_subset_max: int = 4096,
        seed: int = 0,
    ) -> None:
        super().__init__(dim, exact_subset_max)
        self.nlist_param = nlist
        self.nprobe_param = nprobe
        self.target_recall = target_recall
        self.min_nprobe = min_nprobe
        self.train_per_list = train_per_list
        self.train_iterations = train_iterations
        self.seed = seed
        self.flat: FlatIndex | None = FlatIndex(dim, exact_subset_max)  # while untrained
        self.ivf: Any = None  # faiss.IndexIVFFlat once trained
        self.nprobe = 0
        self.trained_at = 0  # how many vectors there were at training

    def _params(self) -> dict[str, Any]:
        return {
            "nlist": self.nlist_param,
            "nprobe": self.nprobe_param,
            "target_recall": self.target_recall,
            "min_nprobe": self.min_nprobe,
            "train_per_list": self.train_per_list,
            "train_iterations": self.train_iterations,
            "exact_subset_max": self.exact_subset_max,
            "seed": self.seed,
        }

    @property
    def trained(self) -> bool:
        return self.ivf is not None

    @property
    def nlist(self) -> int:
        return int(self.ivf.nlist) if self.ivf is not None else 0

    @property
    def ntotal(self) -> int:
        if self.ivf is not None:
            return int(self.ivf.ntotal)
        assert self.flat is not None
        return self.flat.ntotal

    def add(self, seqs: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors under new seqs; call `maintenance_due()`/`rebuilt()` afterwards."""
        ids = _as_seqs(seqs)
        if not len(ids):
            return
        if self.ivf is not None:
            self.ivf.add_with_ids(normalized(vectors), ids)
        else:
            assert self.flat is not None
            self.flat.add(ids, vectors)

    def remove(self, seqs: np.ndarray) -> int:
        ids = _as_seqs(seqs)
        if not len(ids):
            return 0
        if self.ivf is not None:
            return int(self.ivf.remove_ids(ids))  # an array: what a hashtable direct map takes
        assert self.flat is not None
        return self.flat.remove(ids)

    def _wanted_nlist(self, n: int) -> int:
        return self.nlist_param or default_nlist(n)

    def maintenance_due(self) -> bool:
        n = self.ntotal
        if self.ivf is None:
            return n >= 39 * self._wanted_nlist(n)
        return n >= 4 * self.trained_at or 4 * n < self.trained_at

    def iter_vectors(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every `(seqs, vectors)` the index holds, one inverted list (or all) at a time."""
        if self.ivf is None:
            assert self.flat is not None
            yield self.flat.seqs(), self.flat.vectors().copy()
            return
        invlists = self.ivf.invlists
        for lst in range(self.ivf.nlist):
            size = invlists.list_size(lst)
            if size == 0:
                continue
            ids = np.asarray(faiss.rev_swig_ptr(invlists.get_ids(lst), size)).copy()
            codes = faiss.rev_swig_ptr(invlists.get_codes(lst), size * self.ivf.code_size)
            vectors = np.frombuffer(np.asarray(codes).tobytes(), dtype=np.float32)
            yield ids.astype(np.int64), vectors.reshape(size, self.dim)

    def seqs(self) -> np.ndarray:
        if self.ivf is None:
            assert self.flat is not None
            return self.flat.seqs()
        invlists = self.ivf.invlists
        parts = [
            np.asarray(faiss.rev_swig_ptr(invlists.get_ids(lst), invlists.list_size(lst))).copy()
            for lst in range(self.ivf.nlist)
            if invlists.list_size(lst)
        ]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    def rebuilt(self) -> IVFIndex:
        """A new index with the same vectors: trained IVF if there are enough, else flat.

        Reads this index only, so searches on it may go on meanwhile.
        """
        chunks = list(self.iter_vectors())
        seqs = np.concatenate([c[0] for c in chunks]) if chunks else np.zeros(0, np.int64)
        vectors = (
            np.concatenate([c[1] for c in chunks]) if chunks else np.zeros((0, self.dim), "f4")
        )
        return IVFIndex.build(self.dim, seqs, vectors, **self._params())

    @classmethod
    def build(cls, dim: int, seqs: np.ndarray, vectors: np.ndarray, **params: Any) -> IVFIndex:
        """An index over these vectors, trained if they are enough."""
        out = cls(dim, **params)
        n = len(seqs)
        nlist = out._wanted_nlist(n)
        if n < 39 * nlist:
            out.add(seqs, vectors)
            return out
        started = time.perf_counter()
        vectors = normalized(vectors)
        rng = np.random.default_rng(out.seed)
        sample = min(n, nlist * out.train_per_list)
        train = vectors[np.sort(rng.choice(n, size=sample, replace=False))]
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.seed = out.seed
        ivf.cp.max_points_per_centroid = out.train_per_list
        ivf.cp.niter = out.train_iterations
        ivf.train(train)
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        ivf.add_with_ids(vectors, _as_seqs(seqs))
        out.flat, out.ivf, out.trained_at = None, ivf, n
        if out.nprobe_param:
            out.nprobe = min(out.nprobe_param, nlist)
        else:
            calibrated = calibrate_nprobe(ivf, seqs, vectors, out.target_recall)
            out.nprobe = min(nlist, max(calibrated, out.min_nprobe))
        logger.info(
            "trained IVF: %d vectors, nlist %d, nprobe %d, %.1fs",
            n,
            nlist,
            out.nprobe,
            time.perf_counter() - started,
        )
        return out

    def _reconstruct(self, seqs: np.ndarray) -> np.ndarray:
        if self.ivf is None:
            assert self.flat is not None
            return self.flat._reconstruct(seqs)
        return np.asarray(self.ivf.reconstruct_batch(seqs))

    def _search(
        self, q: np.ndarray, k: int, sel: Any, wanted: int
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.ivf is None:
            assert self.flat is not None
            return self.flat._search(q, k, sel, wanted)
        nprobe = self.nprobe
        while True:
            params = faiss.SearchParametersIVF(nprobe=nprobe)
            if sel is not None:
                params.sel = sel
            dist, ids = self.ivf.search(q, k, params=params)
            scores, found = _drop_padding(dist, ids)
            if len(found) >= wanted or nprobe >= self.ivf.nlist:
                return scores, found
            nprobe = min(2 * nprobe, self.ivf.nlist)  # too few in the probed lists: widen

    def _header(self) -> dict[str, Any]:
        return {
            **super()._header(),
            "trained": self.trained,
            "nprobe": self.nprobe,
            "trained_at": self.trained_at,
        }

    def _payload(self) -> Any:
        if self.ivf is not None:
            return self.ivf
        assert self.flat is not None
        return self.flat.index


def calibrate_nprobe(
    ivf: Any, seqs: np.ndarray, vectors: np.ndarray, target: float, k: int = 10
) -> int:
    """Smallest nprobe whose recall@k against exact search reaches `target`.

    The queries are up to 256 of the indexed vectors; each one's own item is left out of
    both result lists, so a query does not trivially find itself.
    """
    n = len(seqs)
    rng = np.random.default_rng(1)
    picks = rng.choice(n, size=min(_RECALL_QUERIES, n), replace=False)
    queries = np.ascontiguousarray(vectors[picks])
    truth = exact_top_k(queries, vectors, k + 1)
    ids = _as_seqs(seqs)
    expected = [
        {int(s) for s in ids[row] if s != ids[p]}
        if ids[p] in ids[row]
        else {int(s) for s in ids[row[:k]]}
        for row, p in zip(truth, picks, strict=True)
    ]
    nprobe = 1
    while True:
        _, found = ivf.search(queries, k + 1, params=faiss.SearchParametersIVF(nprobe=nprobe))
        hits = total = 0
        for exp, got, p in zip(expected, found, picks, strict=True):
            got_set = set(got.tolist()) - {ids[p], -1}
            hits += len(exp & got_set)
            total += len(exp)
        recall = hits / max(total, 1)
        if recall >= target or nprobe >= ivf.nlist:
            logger.debug("nprobe %d gives recall@%d %.3f", nprobe, k, recall)
            return nprobe
        nprobe = min(ivf.nlist, max(nprobe + 1, int(nprobe * 1.5)))


def exact_top_k(queries: np.ndarray, vectors: np.ndarray, k: int) -> np.ndarray:
    """Row indices (into `vectors`) of each query's `k` best inner products, best first."""
    out = np.empty((len(queries), min(k, len(vectors))), dtype=np.int64)
    for start in range(0, len(queries), 64):
        scores = queries[start : start + 64] @ vectors.T
        kk = out.shape[1]
        part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1)
        out[start : start + 64] = np.take_along_axis(part, order, axis=1)
    return out


def set_faiss_threads(threads: int) -> int:
    """Cap FAISS's OpenMP threads for the whole process; returns the count it replaced.

    The service should use 1: a search then runs on the request's own thread. On a
    busy 2-core machine, single-query search with 2 OpenMP threads was 10-40x slower
    than with 1 (threads spin waiting for a core; see bench/search.py). The count is
    the process's OpenMP setting, shared with torch and BLAS: whoever sets it for a
    while puts the returned one back.
    """
    previous = int(faiss.omp_get_max_threads())
    faiss.omp_set_num_threads(threads)
    return previous


def make_index(kind: str, dim: int, **params: Any) -> FlatIndex | IVFIndex:
    """An empty index of this kind ("flat" or "ivf")."""
    if kind == "flat":
        return FlatIndex(dim, **params)
    if kind == "ivf":
        return IVFIndex(dim, **params)
    raise ValueError(f"unknown index kind '{kind}'; choose one of {', '.join(INDEX_KINDS)}")


def load_index(path: Path, kind: str, dim: int, **params: Any) -> tuple[FlatIndex | IVFIndex, int]:
    """Read a snapshot written by `save`; return the index and the store version it had."""
    header, payload = _read_snapshot(path)
    if header.get("kind") != kind or header.get("dim") != dim:
        raise SnapshotError(
            f"{path} holds a {header.get('kind')} index of dim {header.get('dim')}, "
            f"expected {kind} of dim {dim}"
        )
    try:
        raw = faiss.deserialize_index(payload)
    except RuntimeError as exc:
        raise SnapshotError(f"FAISS cannot read {path}: {exc}") from exc
    index = make_index(kind, dim, **params)
    if isinstance(index, FlatIndex):
        index.index = raw
    elif header.get("trained"):
        index.flat, index.ivf = None, raw  # (downcasting would drop ownership)
        index.nprobe = int(header["nprobe"]) or 1
        index.trained_at = int(header["trained_at"])
    else:
        assert index.flat is not None
        index.flat.index = raw
    if index.ntotal != header.get("ntotal"):
        raise SnapshotError(f"{path} says {header.get('ntotal')} vectors, holds {index.ntotal}")
    return index, int(header["version"])
