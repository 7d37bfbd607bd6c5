"""`cpc-embed embed-folder BUNDLE DIR --out FILE.npz`: embed a whole folder offline.

No server and no HTTP: the bundle is loaded in this process with
onnxruntime, files go through `service.offline.pipeline.FilePipeline`, and the
vectors go to a `.npz` file with their ids (`service.offline.vector_files`).
Resumable: results are saved in atomic shards as the run goes, and a rerun
skips every file already done. `cpc-embed index COLLECTION --vectors FILE.npz`
loads the result into a collection. Bundles, ids, pooling and failures:
docs/api.md (cpc-embed embed-folder).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.bundle import BUNDLE_FILE
from service.config import Settings
from service.errors import BundleError, CPCError
from service.inference.model import OnnxEncoder
from service.inference.pooling import VectorPooling
from service.offline.files import MANIFEST, IndexerError, item_id, list_files
from service.offline.pipeline import LOGGED_FAILURES, FilePipeline, Progress
from service.offline.vector_files import ShardWriter, VectorFileError

logger = logging.getLogger(__name__)
DEFAULT_SHARD = 2048  # vectors per shard: what an interruption can lose at most


@dataclass
class EmbedFolderReport:
    """What a run did."""

    model: str
    out: Path
    files: int = 0  # files found in DIR
    embedded: int = 0  # embedded by this run
    skipped: int = 0  # done by an earlier run
    failed: int = 0  # unreadable, undecodable or of another modality
    count: int = 0  # vectors in the output afterwards
    failures: dict[str, str] = field(default_factory=dict)  # id -> why


def resolve_bundle(bundle: str, models_dir: Path) -> Path:
    """A bundle folder from a path or a name in `models_dir`."""
    as_path = Path(bundle)
    if (as_path / BUNDLE_FILE).is_file():
        return as_path
    named = models_dir / bundle
    if "/" not in bundle and (named / BUNDLE_FILE).is_file():
        return named
    raise IndexerError(
        f"{bundle!r} is neither a bundle folder nor a bundle in {models_dir} "
        "(give a folder with bundle.json, or --models-dir)"
    )


def _meta(encoder: OnnxEncoder, pooling: VectorPooling) -> dict[str, Any]:
    spec = encoder.spec
    return {
        "model": spec.name,
        "modality": spec.modality,
        "version": spec.version,
        "model_file": encoder.model_file,
        "dims": spec.dims.model_dump(),
        "layer": "context",
        "pooling": pooling,
        "normalized": True,
    }


def run_embed_folder(
    bundle: str,
    data: Path,
    out: Path,
    *,
    settings: Settings,
    batch: int = 32,
    workers: int | None = None,
    shard_size: int = DEFAULT_SHARD,
    pooling: VectorPooling = "mean",
) -> EmbedFolderReport:
    """Embed every file of `data` not yet in `out` (or its shards) and write `out`."""
    if batch < 1 or shard_size < 1:
        raise IndexerError("--batch and --shard-size must be at least 1")
    if not data.is_dir():
        raise IndexerError(f"{data}: not a folder")
    folder = resolve_bundle(bundle, settings.models_dir)
    encoder = OnnxEncoder.from_settings(folder, settings)
    writer = ShardWriter(out, _meta(encoder, pooling))
    files = list_files(data, exclude=[data / MANIFEST, out])
    report = EmbedFolderReport(encoder.name, out, files=len(files))
    done = writer.done_ids()
    todo = [(name, path) for path in files if (name := item_id(path, data)) not in done]
    report.skipped = len(files) - len(todo)
    pipeline = FilePipeline(encoder, workers, pooling)
    progress = Progress(len(todo), f"embed-folder {encoder.name}", log=logger)
    ids: list[str] = []
    vectors: list[np.ndarray] = []
    try:
        for result in pipeline.batches(todo, batch):
            for name, vector in result.items:
                ids.append(name)
                vectors.append(vector)
            for name, why in result.failures:
                _fail(report, name, why)
            if len(ids) >= shard_size:
                writer.write_shard(ids, vectors)
                report.embedded += len(ids)
                ids, vectors = [], []
            progress.update(result.size)
        writer.write_shard(ids, vectors)
        report.embedded += len(ids)
    finally:
        progress.close()
    final = writer.finish(report.failures)
    report.count = len(final.ids)
    logger.info(
        "%s: %d vectors of model %s (embedded %d, skipped %d already done, %d failed)",
        out,
        report.count,
        encoder.name,
        report.embedded,
        report.skipped,
        report.failed,
    )
    return report


def _fail(report: EmbedFolderReport, name: str, why: str) -> None:
    report.failed += 1
    report.failures[name] = why
    if report.failed <= LOGGED_FAILURES:
        logger.warning("skipping %s: %s", name, why)


def main(args: argparse.Namespace, settings: Settings) -> int:
    """`cpc-embed embed-folder`: 0 when done (failed files are counted, not fatal), 2 on error."""
    try:
        run_embed_folder(
            args.bundle,
            args.data,
            args.out,
            settings=settings,
            batch=args.batch,
            workers=args.workers,
            shard_size=args.shard_size,
            pooling=args.pooling,
        )
    except (IndexerError, VectorFileError, BundleError, CPCError, ValueError) as exc:
        logger.error("cpc-embed embed-folder: %s", getattr(exc, "detail", exc))
        return 2
    return 0
