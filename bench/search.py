"""Search benchmark of the collection indexes on clustered synthetic vectors.

Run: `.venv/bin/python -m bench.search [--sizes 10000 100000]`. For each size and
index kind it reports build time, index bytes (the FAISS serialisation: vectors,
ids, lists and centroids), queries/s for one query per call through
`VectorIndex.search` (what a request does), for one batched FAISS call of all
queries, and for single queries filtered to 10% of the items, and recall@10
against the exact flat index. FAISS runs on `--threads` OpenMP threads (default
1, as the service should: its parallelism comes from concurrent requests). The
data are a Gaussian mixture (`--centres` centres, per-coordinate noise
`--spread` relative to the centres), L2-normalised; the queries are fresh draws
from the same mixture, not indexed vectors. Writes bench/results/search.json and
bench/results/search.md.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import faiss as _faiss
import numpy as np

from bench import backends
from bench.machine import machine_info, setup_logging, write_results
from service.vectors.index import FlatIndex, IVFIndex, normalized, set_faiss_threads

faiss: Any = _faiss  # its stubs lack the numpy wrappers (see service.vectors.index)
logger = logging.getLogger(__name__)
RESULTS = Path(__file__).parent / "results"
TARGET_SPEEDUP = 5.0  # the approximate index against flat, queries/s of single queries
TARGET_RECALL = 0.95
TARGET_N = 1_000_000  # the size the target is set for


def mixture(n: int, dim: int, centres: int, spread: float, seed: int) -> np.ndarray:
    """`n` normalised draws from a Gaussian mixture with fixed centres (seed 0)."""
    centre_vecs = np.random.default_rng(0).standard_normal((centres, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((n, dim), dtype=np.float32) * spread
    return normalized(centre_vecs[rng.integers(0, centres, n)] + noise)


def qps(run: Any, count: int) -> float:
    started = time.perf_counter()
    run()
    return round(count / (time.perf_counter() - started), 1)


def measure(
    kind: str,
    index: FlatIndex | IVFIndex,
    build_s: float,
    queries: np.ndarray,
    truth: list[set[int]],
    allowed: np.ndarray,
) -> dict[str, Any]:
    raw: Any = index.index if isinstance(index, FlatIndex) else None
    nlist = nprobe = None
    if isinstance(index, IVFIndex):
        if index.ivf is not None:
            raw, nlist, nprobe = index.ivf, index.nlist, index.nprobe
        elif index.flat is not None:
            raw = index.flat.index
    found: list[np.ndarray] = []
    single = qps(lambda: found.extend(index.search(q, 10)[1] for q in queries), len(queries))
    params = faiss.SearchParametersIVF(nprobe=nprobe) if nprobe else None
    batched = qps(lambda: raw.search(queries, 10, params=params), len(queries))
    few = queries[:200]
    filtered = qps(lambda: [index.search(q, 10, allowed) for q in few], len(few))
    hits = sum(len(t & set(f.tolist())) for t, f in zip(truth, found, strict=True))
    return {
        "index": kind,
        "n": index.ntotal,
        "build_s": round(build_s, 2),
        "index_bytes": len(faiss.serialize_index(raw)),
        "trained": nlist is not None,
        "nlist": nlist,
        "nprobe": nprobe,
        "qps_single": single,
        "qps_batched": batched,
        "qps_filtered_10pct": filtered,
        "recall_at_10": round(hits / (10 * len(queries)), 4),
    }


def run_size(n: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    data = mixture(n, args.dim, args.centres, args.spread, seed=1)
    queries = mixture(args.queries, args.dim, args.centres, args.spread, seed=2)
    seqs = np.arange(1, n + 1, dtype=np.int64)
    allowed = seqs[np.random.default_rng(3).random(n) < 0.1]
    started = time.perf_counter()
    flat = FlatIndex(args.dim)
    flat.add(seqs, data)
    flat_s = time.perf_counter() - started
    truth = [set(flat.search(q, 10)[1].tolist()) for q in queries]
    rows = [measure("flat", flat, flat_s, queries, truth, allowed)]
    started = time.perf_counter()
    ivf = IVFIndex.build(args.dim, seqs, data, nlist=args.nlist, nprobe=args.nprobe)
    rows.append(measure("ivf", ivf, time.perf_counter() - started, queries, truth, allowed))
    for row in rows:
        logger.info("%s", row)
    return rows


def to_markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Search benchmark",
        "",
        f"{m['cpu']}, {m['cpu_count']} cores, FAISS {m['versions'].get('faiss-cpu', '?')}, "
        f"{report['faiss_threads']} OpenMP threads, {m['date']}.",
        f"Data: {report['params']['centres']}-centre Gaussian mixture, dim "
        f"{report['params']['dim']}, spread {report['params']['spread']}, normalised; "
        f"{report['params']['queries']} held-out queries, k = 10.",
        *([report["note"]] if report["note"] else []),
        "",
        "| n | index | nlist | nprobe | build s | index MB | q/s single | q/s batched "
        "| q/s filtered 10% | recall@10 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['n']} | {r['index']} | {r['nlist'] or '-'} | {r['nprobe'] or '-'} "
            f"| {r['build_s']} | {r['index_bytes'] / 1e6:.1f} | {r['qps_single']} "
            f"| {r['qps_batched']} | {r['qps_filtered_10pct']} | {r['recall_at_10']} |"
        )
    lines += [
        "",
        "IVF against flat, one query per call (target at 1M vectors: >= 5x at recall@10 >= 0.95;"
        " an untrained IVF index, below 39 x nlist vectors, searches exactly):",
        "",
    ]
    for n, flat, ivf in speedups(report["results"]):
        ratio = ivf["qps_single"] / flat["qps_single"]
        met = ratio >= TARGET_SPEEDUP and ivf["recall_at_10"] >= TARGET_RECALL
        verdict = f" (target {'met' if met else 'NOT met'})" if n >= TARGET_N else ""
        lines.append(f"- {n:,} vectors: {ratio:.1f}x at recall@10 {ivf['recall_at_10']}{verdict}")
    return "\n".join(lines) + "\n"


def speedups(results: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any], dict[str, Any]]]:
    """(n, flat row, ivf row) for every size measured with both kinds."""
    by_n: dict[int, dict[str, dict[str, Any]]] = {}
    for r in results:
        by_n.setdefault(r["n"], {})[r["index"]] = r
    return [
        (n, k["flat"], k["ivf"]) for n, k in sorted(by_n.items()) if {"flat", "ivf"} <= k.keys()
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--centres", type=int, default=300)
    parser.add_argument("--spread", type=float, default=2.0)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--nlist", type=int, default=None, help="default: IVFIndex's own")
    parser.add_argument("--nprobe", type=int, default=None, help="default: calibrated")
    parser.add_argument(
        "--threads", type=int, default=1, help="FAISS OpenMP threads; 0 keeps FAISS's default"
    )
    parser.add_argument(
        "--milvus-uri",
        default=None,
        help="also measure both collection backends (bench/backends.py) at the largest size",
    )
    parser.add_argument("--note", default="", help="a sentence stored with the results")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    setup_logging()
    # For the run only: the count is the process's OpenMP one (see set_faiss_threads).
    previous = set_faiss_threads(args.threads or faiss.omp_get_max_threads())
    try:
        threads = faiss.omp_get_max_threads()
        results = [row for n in args.sizes for row in run_size(n, args)]
    finally:
        set_faiss_threads(previous)
    report = {
        "machine": machine_info(),
        "faiss_threads": threads,
        "params": {k: v for k, v in vars(args).items() if k not in ("out", "note")},
        "note": args.note,
        "results": results,
    }
    markdown = to_markdown(report)
    if args.milvus_uri:
        n = max(args.sizes)
        vectors = mixture(n, args.dim, args.centres, args.spread, seed=1)
        queries = mixture(200, args.dim, args.centres, args.spread, seed=2)
        report["backends"] = backends.run(vectors, queries, args.milvus_uri, ["flat", "ivf"])
        markdown += "\nCollection backends, through their collection classes:\n\n"
        markdown += backends.to_markdown(report["backends"])
    write_results(args.out, "search", report, markdown)
    logger.info("wrote %s and %s", args.out / "search.json", args.out / "search.md")


if __name__ == "__main__":
    main()
