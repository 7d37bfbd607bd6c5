"""Offline bulk embedding (`cpc-embed embed-folder`) against the service under load, same files.

Run: `.venv/bin/python -m bench.embed_folder [--data audio=DIR image=DIR text=DIR]
[--limit 200] [--limits text=2000] [--concurrency 16] [--models-dir models]`. For each modality,
the first `--limit` files of its folder (default: a small synthetic folder)
are embedded twice with the same bundle:

1. offline: `run_embed_folder` in this process (decoding threads + batched
   onnxruntime calls, output written to a .npz), files/s over the whole run,
   bundle loading and the final merge included;
2. the service: `cpc-embed serve` in a subprocess (`bench.serving`), C
   concurrent clients each POSTing one file per `/embed` request (JSON,
   base64), until every file was sent once; files/s over that time. The load
   generator runs on the same cores as the service.

Writes embed_folder.json and embed_folder.md to `--out` and exits 1 if a
request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.machine import machine_info, machine_line, setup_logging, write_results
from bench.serving import ServiceProcess, closed_loop, make_client
from bench.workloads import request_body
from service.config import DEFAULT_MODELS_DIR, Settings
from service.offline.embed_folder import run_embed_folder
from service.offline.files import list_files
from tests.conftest import make_audio_folder, make_image_folder, make_text_folder

logger = logging.getLogger(__name__)
RESULTS = Path(__file__).parent / "results"
MODALITIES = ("audio", "image", "text")


def synthetic(modality: str, root: Path, count: int) -> Path:
    if modality == "audio":
        return make_audio_folder(root / "audio", files=count, seconds=3.0)
    if modality == "image":
        return make_image_folder(root / "image", files=count, size=64)
    return make_text_folder(root / "text", files=count, sentences=4)


def sample_folder(source: Path, root: Path, limit: int) -> Path:
    """A folder of links to the first `limit` files of `source` (sorted, manifest left out)."""
    files = list_files(source, exclude=[source / "manifest.csv"])[:limit]
    folder = root / "files"
    for path in files:
        link = folder / path.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path.resolve())
    return folder


def offline(
    modality: str, folder: Path, settings: Settings, out: Path, workers: int | None
) -> dict[str, Any]:
    started = time.perf_counter()
    report = run_embed_folder(modality, folder, out, settings=settings, workers=workers)
    elapsed = time.perf_counter() - started
    return {
        "files": report.embedded + report.failed,
        "failed": report.failed,
        "elapsed_s": round(elapsed, 2),
        "files_per_s": round((report.embedded + report.failed) / elapsed, 2),
    }


def served(
    modality: str, folder: Path, service: ServiceProcess, concurrency: int
) -> dict[str, Any]:
    files = list_files(folder)
    bodies = [
        request_body(
            modality, p.read_text(encoding="utf-8") if modality == "text" else p.read_bytes()
        )
        for p in files
    ]

    async def load() -> Any:
        async with make_client(service.url, concurrency) as client:
            return await closed_loop(
                client,
                "/embed",
                lambda i: bodies[i],
                concurrency=concurrency,
                duration_s=3600.0,
                max_requests=len(bodies),
            )

    result = asyncio.run(load())
    ok = len(result.latencies_s)
    return {
        "files": len(bodies),
        "errors": result.errors,
        "error_samples": result.error_samples,
        "concurrency": concurrency,
        "elapsed_s": round(result.elapsed_s, 2),
        "files_per_s": round(ok / result.elapsed_s, 2) if result.elapsed_s > 0 else 0.0,
    }


def to_markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Offline bulk embedding vs the service under load (same files)",
        "",
        f"{machine_line(m, 'onnxruntime')}.",
        "",
        "| modality | files | embed-folder (files/s) | service, C clients (files/s) | ratio |",
        "|---|---|---|---|---|",
    ]
    for r in report["results"]:
        off, srv = r["offline"], r["service"]
        ratio = off["files_per_s"] / srv["files_per_s"] if srv["files_per_s"] else float("nan")
        lines.append(
            f"| {r['modality']} ({r['source']}) | {off['files']} | {off['files_per_s']} | "
            f"{srv['files_per_s']} (C={srv['concurrency']}) | {ratio:.2f}x |"
        )
    lines += ["", report["note"], ""]
    return "\n".join(lines)


NOTE = (
    "One short run of each. Both sides decode and run the same onnxruntime model on the same "
    "files; the service also pays for HTTP, JSON and base64, and its load generator shares "
    "the two cores."
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", nargs="*", default=[], metavar="MODALITY=DIR")
    parser.add_argument("--modalities", nargs="+", default=list(MODALITIES))
    parser.add_argument("--limit", type=int, default=200, help="files per modality")
    parser.add_argument(
        "--limits", nargs="*", default=[], metavar="MODALITY=N", help="--limit per modality"
    )
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, help="embed-folder decoding threads")
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--note", default=NOTE)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    sources = dict(item.split("=", 1) for item in args.data)
    limits = {k: int(v) for k, v in (item.split("=", 1) for item in args.limits)}
    settings = Settings(models_dir=args.models_dir)
    results = []
    with tempfile.TemporaryDirectory(prefix="cpc-bulk-") as tmp:
        root = Path(tmp)
        for modality in args.modalities:
            work = root / modality
            work.mkdir()
            limit = limits.get(modality, args.limit)
            if modality in sources:
                folder, source = sample_folder(Path(sources[modality]), work, limit), "corpus"
            else:
                folder, source = synthetic(modality, work, limit), "synthetic"
            off = offline(modality, folder, settings, work / "out.npz", args.workers)
            logger.info("%s offline: %s", modality, off)
            with ServiceProcess(args.models_dir) as service:
                srv = served(modality, folder, service, args.concurrency)
            logger.info("%s service: %s", modality, srv)
            results.append({"modality": modality, "source": source, "offline": off, "service": srv})
    report = {
        "machine": machine_info(),
        "load_average": os.getloadavg()[0],
        "params": {k: str(v) for k, v in vars(args).items() if k not in ("note",)},
        "results": results,
        "note": args.note,
    }
    write_results(args.out, "embed_folder", report, to_markdown(report))
    return 1 if any(r["service"]["errors"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
