"""`cpc-embed index COLLECTION --data DIR` (or `--vectors FILE.npz`): bulk-load a collection.

It runs in-process, without a server and without torch: every file goes
through the service's own encode steps (`service.offline.pipeline.FilePipeline`)
with the collection's pooling, and items are written through `Collection.upsert`,
one fsynced transaction per batch. With `--vectors`, the vectors of
`cpc-embed embed-folder` are loaded instead. It refuses to run while a server
uses the data folder (`service.vectors.datalock`) unless given `--force`.
Ids, metadata, the collection it creates and resuming: docs/api.md (cpc-embed index).
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.bundle import BundleSpec, load_bundle_spec
from service.config import Settings
from service.errors import BundleError, CPCError
from service.inference.model import OnnxEncoder
from service.inference.pooling import VectorPooling, pooled_dim
from service.inference.registry import bundle_folders
from service.offline.files import (
    MANIFEST,
    IndexerError,
    guess_modality,
    item_id,
    list_files,
    read_metadata,
)
from service.offline.pipeline import LOGGED_FAILURES, EmbeddedBatch, FilePipeline, Progress
from service.offline.vector_files import VectorFile, VectorFileError, load_vectors
from service.vectors.collection import STORE_FILE, Collection
from service.vectors.datalock import DataDirBusy, DataDirLock
from service.vectors.index import set_faiss_threads
from service.vectors.manager import CollectionManager
from service.vectors.store import ItemStore
from service.vectors.validation import (
    prepare_vector,
    validate_collection_name,
    validate_item_id,
    validate_metadata,
)

logger = logging.getLogger(__name__)

_SNIFF_FILES = 256  # files looked at to guess the modality of a folder
FILES_BATCH = 32  # default --batch when embedding files: files per onnxruntime call
VECTORS_BATCH = 1024  # default --batch with --vectors: items per transaction


@dataclass
class IndexReport:
    """What a run did."""

    collection: str
    model: str
    files: int = 0  # files found in DIR
    added: int = 0  # items written
    skipped: int = 0  # already stored
    failed: int = 0  # unreadable, undecodable, of another modality, or a bad id or metadata
    count: int = 0  # items in the collection afterwards
    failures: list[str] = field(default_factory=list)  # "id: why", for the first few


# --- the model and the collection --------------------------------------------------------------


def _bundles(models_dir: Path) -> dict[str, tuple[Path, BundleSpec]]:
    out = {}
    for folder in bundle_folders(models_dir):
        spec = load_bundle_spec(folder)
        out[spec.name] = (folder, spec)
    return out


def choose_bundle(
    models_dir: Path, files: Sequence[Path], model: str | None
) -> tuple[Path, BundleSpec]:
    """The bundle called `model`, else the default bundle of the files' main modality."""
    bundles = _bundles(models_dir)
    names = ", ".join(bundles) or "none"
    if model is not None:
        if model not in bundles:
            raise IndexerError(f"no bundle named {model!r} in {models_dir} (bundles: {names})")
        return bundles[model]
    seen = Counter(m for m in map(guess_modality, files[:_SNIFF_FILES]) if m is not None)
    if not seen:
        raise IndexerError("cannot tell the modality of the files; name the model with --model")
    modality = seen.most_common(1)[0][0]
    candidates = sorted(n for n, (_, spec) in bundles.items() if spec.modality == modality)
    if not candidates:
        raise IndexerError(f"the files are {modality}, but no bundle in {models_dir} is ({names})")
    return bundles[modality if modality in candidates else candidates[0]]


def open_collection(
    manager: CollectionManager,
    name: str,
    spec: BundleSpec,
    index: str,
    pooling: VectorPooling = "mean",
) -> Collection:
    """The collection `name`, opened; created for `spec`'s model and `pooling` when it does
    not exist."""
    folder = manager.root / name
    if (folder / STORE_FILE).is_file():
        return manager.open_folder(folder)
    return manager.create(name, spec.name, pooled_dim(spec.dims.context, pooling), index, pooling)


def existing_model(manager: CollectionManager, name: str) -> str | None:
    """The model of collection `name` if it exists (read without opening its index)."""
    path = manager.root / name / STORE_FILE
    if not path.is_file():
        return None
    store = ItemStore.open(path, check=False)  # the collection's own open checks it
    try:
        return store.info.model
    finally:
        store.close()


# --- writing ---------------------------------------------------------------------------------


class Indexer:
    """Writes embedded items to one open collection, counting what fails."""

    def __init__(self, coll: Collection, report: IndexReport) -> None:
        self.coll, self.report = coll, report

    def fail(self, name: str, why: str) -> None:
        self.report.failed += 1
        if len(self.report.failures) < LOGGED_FAILURES:
            self.report.failures.append(f"{name}: {why}")
            logger.warning("skipping %s: %s", name, why)

    def write(self, named: Sequence[tuple[str, np.ndarray]], metadata: dict[str, Any]) -> None:
        """Upsert `(id, vector)` items with their metadata (one store transaction)."""
        items = []
        for name, vector in named:
            try:
                meta = validate_metadata(metadata.get(name), self.coll.max_metadata_bytes)
                items.append((name, prepare_vector(vector, self.coll.dim, self.coll.name), meta))
            except CPCError as exc:
                self.fail(name, exc.detail)
        if items:
            self.coll.upsert(items)
            self.report.added += len(items)

    def write_batch(self, result: EmbeddedBatch, metadata: dict[str, Any]) -> None:
        """Record the failures of one embedded batch and write its vectors."""
        for name, why in result.failures:
            self.fail(name, why)
        self.write(result.items, metadata)

    def todo(self, names: Sequence[str]) -> list[int]:
        """Positions of the valid ids not stored yet (the others are counted)."""
        out = []
        for i, name in enumerate(names):
            try:
                validate_item_id(name)
            except CPCError as exc:
                self.fail(name[:80], exc.detail)
                continue
            if self.coll.store.get(name) is not None:
                self.report.skipped += 1
            else:
                out.append(i)
        return out


# --- the command -------------------------------------------------------------------------------


def run_index(
    collection: str,
    data: Path | None,
    *,
    settings: Settings,
    metadata_csv: Path | None = None,
    model: str | None = None,
    batch: int | None = None,
    index: str = "flat",
    force: bool = False,
    vectors: Path | None = None,
    workers: int | None = None,
    pooling: VectorPooling | None = None,
) -> IndexReport:
    """Embed every file of `data` (or take every vector of `vectors`) not stored yet.

    `pooling` is that of a new collection (default mean, or that of `vectors`); an
    existing collection must have it.
    """
    validate_collection_name(collection)
    if (data is None) == (vectors is None):
        raise IndexerError("give either --data DIR or --vectors FILE.npz")
    batch = batch or (FILES_BATCH if vectors is None else VECTORS_BATCH)
    if batch < 1:
        raise IndexerError("--batch must be at least 1")
    files: list[Path] = []
    loaded: VectorFile | None = None
    if data is not None:
        if not data.is_dir():
            raise IndexerError(f"{data}: not a folder")
        if metadata_csv is None and (data / MANIFEST).is_file():
            metadata_csv = data / MANIFEST
    metadata = read_metadata(metadata_csv) if metadata_csv is not None else {}
    if data is not None:
        files = list_files(
            data, exclude=[data / MANIFEST, *([metadata_csv] if metadata_csv else [])]
        )
        if not files:
            raise IndexerError(f"{data}: no files to index")
    if vectors is not None:
        try:
            loaded = load_vectors(vectors)
        except VectorFileError as exc:
            raise IndexerError(str(exc)) from exc
        if model is not None and model != loaded.model:
            raise IndexerError(f"{vectors} holds vectors of model '{loaded.model}', not '{model}'")
        if pooling is not None and pooling != loaded.pooling:
            raise IndexerError(f"{vectors} holds {loaded.pooling} pooled vectors, not {pooling}")
        model, pooling = loaded.model, loaded.pooling
    lock = DataDirLock(settings.data_dir, exclusive=True)
    if force:
        logger.warning(
            "--force: not checking for a server; restart any server using %s afterwards",
            settings.data_dir,
        )
    else:
        lock.acquire()
    threads = set_faiss_threads(1)
    try:
        job = _Job(collection, metadata, settings, model, batch, index, workers, pooling)
        if loaded is not None:
            return job.load_vectors(loaded)
        assert data is not None
        return job.embed_files(data, files)
    finally:
        set_faiss_threads(threads)
        lock.release()


@dataclass
class _Job:
    """One locked run of the command: which collection, model and options."""

    collection: str
    metadata: dict[str, dict[str, str]]
    settings: Settings
    model: str | None
    batch: int
    index: str
    workers: int | None
    pooling: VectorPooling | None  # asked for (or that of --vectors); None: any

    def _choose(self, files: Sequence[Path]) -> tuple[CollectionManager, Path, BundleSpec]:
        manager = CollectionManager(
            self.settings.data_dir,
            max_metadata_bytes=self.settings.max_metadata_bytes,
            check_stores=self.settings.check_stores,
        )
        stored_model = existing_model(manager, self.collection)
        if stored_model is not None and self.model is not None and self.model != stored_model:
            raise IndexerError(
                f"collection '{self.collection}' holds vectors of model '{stored_model}', "
                f"not '{self.model}'"
            )
        folder, spec = choose_bundle(self.settings.models_dir, files, self.model or stored_model)
        return manager, folder, spec

    def _open(self, manager: CollectionManager, spec: BundleSpec) -> Collection:
        """The collection, opened or created; IndexerError if its pooling is not `pooling`."""
        coll = open_collection(manager, self.collection, spec, self.index, self.pooling or "mean")
        if self.pooling is not None and coll.info.pooling != self.pooling:
            coll.close()
            raise IndexerError(
                f"collection '{coll.name}' holds {coll.info.pooling} pooled vectors, not "
                f"{self.pooling}: delete the collection or index into another one"
            )
        return coll

    def embed_files(self, data: Path, files: list[Path]) -> IndexReport:
        manager, folder, spec = self._choose(files)
        encoder = OnnxEncoder.from_settings(folder, self.settings)
        coll = self._open(manager, spec)
        try:
            pooling = coll.info.pooling
            _check_dim(coll, encoder.name, pooled_dim(encoder.spec.dims.context, pooling))
            report = IndexReport(coll.name, encoder.name, files=len(files))
            indexer = Indexer(coll, report)
            names = [item_id(path, data) for path in files]
            todo = [(names[i], files[i]) for i in indexer.todo(names)]
            progress = Progress(len(todo), f"index {coll.name}", log=logger)
            try:
                pipeline = FilePipeline(encoder, self.workers, pooling)
                for result in pipeline.batches(todo, self.batch):
                    indexer.write_batch(result, self.metadata)
                    progress.update(result.size)
            finally:
                progress.close()
            return _finish(report, coll)
        finally:
            coll.close()

    def load_vectors(self, loaded: VectorFile) -> IndexReport:
        manager, _, spec = self._choose([])
        coll = self._open(manager, spec)
        try:
            _check_dim(coll, spec.name, loaded.dim)
            report = IndexReport(coll.name, spec.name, files=len(loaded.ids))
            indexer = Indexer(coll, report)
            todo = indexer.todo(loaded.ids)
            for start in range(0, len(todo), self.batch):
                chunk = todo[start : start + self.batch]
                named = [(loaded.ids[i], loaded.vectors[i]) for i in chunk]
                indexer.write(named, self.metadata)
            return _finish(report, coll)
        finally:
            coll.close()


def _check_dim(coll: Collection, model: str, dim: int) -> None:
    if coll.dim != dim:
        raise IndexerError(
            f"collection '{coll.name}' has dim {coll.dim}, model '{model}' gives "
            f"{dim}: delete the collection or index into another one"
        )


def _finish(report: IndexReport, coll: Collection) -> IndexReport:
    report.count = coll.count()
    logger.info(
        "collection '%s' (model %s): added %d, skipped %d already stored, %d failed; "
        "it holds %d items",
        coll.name,
        report.model,
        report.added,
        report.skipped,
        report.failed,
        report.count,
    )
    return report


def main(args: argparse.Namespace, settings: Settings) -> int:
    """`cpc-embed index`: 0 when done (failed files are counted, not fatal), 2 on a usage error."""
    try:
        run_index(
            args.collection,
            args.data,
            settings=settings,
            metadata_csv=args.metadata,
            model=args.model,
            batch=args.batch,
            index=args.index,
            force=args.force,
            vectors=args.vectors,
            workers=args.workers,
            pooling=args.pooling,
        )
    except (IndexerError, DataDirBusy, BundleError, CPCError) as exc:
        logger.error("cpc-embed index: %s", getattr(exc, "detail", exc))
        return 2
    return 0
