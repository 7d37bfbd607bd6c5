"""The two collection backends side by side: upserts/s and single-query latency.

Run by `bench/search.py --milvus-uri URI` (or `python -m bench.backends --milvus-uri URI`):
the same clustered vectors go into an embedded collection (SQLite + FAISS in a
temporary folder) and a Milvus one, for each index kind, through the backends'
own collection classes (what a request reaches, without HTTP). Milvus is read
at Strong consistency (what the API promises) and at Bounded (for comparison).
Writes the rows into the caller's report, or bench/results/backends.{json,md}.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import machine_info, setup_logging, write_results
from service.vectors.backend import CollectionBackend
from service.vectors.index import set_faiss_threads
from service.vectors.manager import CollectionManager
from service.vectors.milvus import MilvusCollections

logger = logging.getLogger(__name__)
RESULTS = Path(__file__).parent / "results"
BATCH = 256  # items per upsert call
GROUPS = 10  # metadata groups, for the filtered queries (10% of the items each)


def _percentile_ms(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values) * 1000.0, q)), 2)


def measure(
    backend: str,
    manager: CollectionBackend,
    index: str,
    vectors: np.ndarray,
    queries: np.ndarray,
    readers: dict[str, CollectionBackend],
) -> list[dict[str, Any]]:
    """Upsert `vectors` into a new collection of `manager`, then time single queries through
    each of `readers` (a name → a manager on the same store); the collection is deleted."""
    name = f"bench{index}{uuid.uuid4().hex[:6]}"
    coll = manager.create(name, "bench", vectors.shape[1], index=index)
    try:
        started = time.perf_counter()
        for start in range(0, len(vectors), BATCH):
            chunk = vectors[start : start + BATCH]
            coll.upsert(
                [
                    (f"v{start + i}", v.tolist(), {"g": (start + i) % GROUPS})
                    for i, v in enumerate(chunk)
                ]
            )
        upsert_s = time.perf_counter() - started
        rows = []
        for reading, reader in readers.items():
            handle = reader.get(name)
            handle.search(queries[0], 10)  # a first query loads what it needs
            for filtered in (False, True):
                where = {"g": 3} if filtered else None
                latencies = []
                for q in queries:
                    t0 = time.perf_counter()
                    handle.search(q, 10, where)
                    latencies.append(time.perf_counter() - t0)
                rows.append(
                    {
                        "backend": backend,
                        "reads": reading,
                        "index": index,
                        "n": len(vectors),
                        "dim": int(vectors.shape[1]),
                        "upserts_per_s": round(len(vectors) / upsert_s, 1),
                        "filter": "10%" if filtered else None,
                        "qps_single": round(len(queries) / sum(latencies), 1),
                        "p50_ms": _percentile_ms(latencies, 50),
                        "p99_ms": _percentile_ms(latencies, 99),
                    }
                )
                logger.info("%s", rows[-1])
        return rows
    finally:
        manager.delete(name)


def run(
    vectors: np.ndarray, queries: np.ndarray, milvus_uri: str | None, indexes: list[str]
) -> list[dict[str, Any]]:
    """Every (backend, index) row; Milvus rows only with `milvus_uri`."""
    rows: list[dict[str, Any]] = []
    previous = set_faiss_threads(1)  # as the service runs FAISS
    with tempfile.TemporaryDirectory(prefix="cpc-bench-") as tmp:
        embedded = CollectionManager(Path(tmp))
        try:
            for index in indexes:
                rows += measure("embedded", embedded, index, vectors, queries, {"-": embedded})
        finally:
            embedded.close_all()
            set_faiss_threads(previous)
    if milvus_uri:
        prefix = f"bench{uuid.uuid4().hex[:6]}_"
        strong = MilvusCollections(milvus_uri, prefix=prefix, consistency="Strong")
        bounded = MilvusCollections(milvus_uri, prefix=prefix, consistency="Bounded")
        try:
            for index in indexes:
                readers: dict[str, CollectionBackend] = {"Strong": strong, "Bounded": bounded}
                rows += measure("milvus", strong, index, vectors, queries, readers)
        finally:
            strong.close_all()
            bounded.close_all()
    return rows


def to_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| backend | reads | index | n | upserts/s | filter | q/s single | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backend']} | {r['reads']} | {r['index']} | {r['n']} | {r['upserts_per_s']} "
            f"| {r['filter'] or '-'} | {r['qps_single']} | {r['p50_ms']} | {r['p99_ms']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    from bench.search import mixture  # search imports this module

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--milvus-uri", default=None, help="a Milvus server to measure too")
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--indexes", nargs="+", default=["flat", "ivf"])
    parser.add_argument("--note", default="", help="a sentence stored with the results")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    setup_logging()
    vectors = mixture(args.n, args.dim, 300, 2.0, seed=1)
    queries = mixture(args.queries, args.dim, 300, 2.0, seed=2)
    rows = run(vectors, queries, args.milvus_uri, args.indexes)
    report = {"machine": machine_info(), "params": vars(args) | {"out": None}, "results": rows}
    report["note"] = args.note
    write_results(args.out, "backends", report, to_markdown(rows))


if __name__ == "__main__":
    main()
