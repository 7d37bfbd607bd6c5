"""`cpc-embed index COLLECTION --data DIR`: bulk-embed a folder into a collection.

It runs in-process, without a server and without torch: the bundle is loaded
with `OnnxEncoder` and every file goes through the service's own encode steps
(`to_raw` → `prepare` → `run` → mean pooling of the context layer → L2
normalisation), so an item's vector is what `/embed` returns for the file.
Items are written through `Collection.upsert`, one fsynced transaction per
batch, so a run that is interrupted loses at most the batch in progress.

- Ids are the files' paths relative to DIR, with '/' separators. Hidden files
  and folders, the metadata CSV and DIR/manifest.csv are not indexed.
- The collection is created when missing (flat unless `--index ivf`), for the
  model named by `--model`, else for the default bundle of the modality most
  of the files have (the bundle named after the modality, else the first of
  that modality by name). An existing collection keeps its own model.
- Metadata comes from `--metadata CSV`, else DIR/manifest.csv when present: a
  `path` (or `id`) column names the file, relative to DIR; every other
  non-empty cell becomes a metadata string.
- Resumable: files whose id is stored already are skipped, so a rerun after
  an interruption (or after adding files) embeds only what is missing.
  Files that cannot be read or decoded, or are of another modality, are
  skipped and counted.

A running server holds a shared lock on the data folder (`service.datalock`)
and keeps each index in memory, so it would not see what this writes: the
command refuses to run while a server uses the data folder, and a server does
not start while the command runs. With `--force` it writes anyway; restart
the server afterwards.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.batcher import MAX_BATCH_ELEMENTS
from service.bundle import BundleSpec, load_bundle_spec
from service.collections import (
    STORE_FILE,
    Collection,
    CollectionManager,
    prepare_vector,
    validate_collection_name,
    validate_item_id,
    validate_metadata,
)
from service.config import Settings
from service.datalock import DataDirBusy, DataDirLock
from service.encoder import Limits, OnnxEncoder, Prepared
from service.errors import BundleError, CPCError
from service.index import set_faiss_threads
from service.indexer_files import (
    MANIFEST,
    IndexerError,
    guess_modality,
    item_id,
    list_files,
    read_metadata,
)
from service.inputs import to_raw
from service.pooling import l2_normalize, pool
from service.registry import bundle_folders
from service.store import ItemStore

logger = logging.getLogger(__name__)

_SNIFF_FILES = 256  # files looked at to guess the modality of a folder
_LOGGED_FAILURES = 20  # failures logged one by one; the rest are only counted
_LOG_EVERY_S = 5.0


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
    manager: CollectionManager, name: str, spec: BundleSpec | None, index: str
) -> Collection:
    """The collection `name`, opened; created for `spec`'s model when it does not exist."""
    folder = manager.root / name
    if (folder / STORE_FILE).is_file():
        return Collection.open(
            folder, manager.index_params, max_metadata_bytes=manager.max_metadata_bytes
        )
    if spec is None:
        raise IndexerError(f"collection '{name}' does not exist")
    return manager.create(name, spec.name, spec.dims.context, index)


def existing_model(manager: CollectionManager, name: str) -> str | None:
    """The model of collection `name` if it exists (read without opening its index)."""
    path = manager.root / name / STORE_FILE
    if not path.is_file():
        return None
    store = ItemStore.open(path)
    try:
        return store.info.model
    finally:
        store.close()


# --- embedding ------------------------------------------------------------------------------


def _budget_groups(prepared: list[tuple[int, Prepared]]) -> Iterator[list[tuple[int, Prepared]]]:
    """Groups of similar shape whose padded batch stays under MAX_BATCH_ELEMENTS values."""
    ordered = sorted(prepared, key=lambda pair: pair[1].sort_key)
    group: list[tuple[int, Prepared]] = []
    for pair in ordered:
        size = int(np.prod(pair[1].array.shape))
        if group and size * (len(group) + 1) > MAX_BATCH_ELEMENTS:
            yield group
            group = []
        group.append(pair)
    if group:
        yield group


class Progress:
    """A tqdm bar when tqdm is installed, else a log line every few seconds."""

    def __init__(self, total: int, desc: str) -> None:
        self.total, self.desc, self.done = total, desc, 0
        self._last = time.monotonic()
        self._bar: Any = None
        try:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit="file")
        except ImportError:
            logger.info("%s: %d file(s) to embed", desc, total)

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif time.monotonic() - self._last >= _LOG_EVERY_S or self.done >= self.total:
            self._last = time.monotonic()
            logger.info("%s: %d/%d files", self.desc, self.done, self.total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class Indexer:
    """Embeds files with one bundle and writes them to one open collection."""

    def __init__(self, encoder: OnnxEncoder, coll: Collection, report: IndexReport) -> None:
        self.encoder, self.coll, self.report = encoder, coll, report

    def fail(self, name: str, why: str) -> None:
        self.report.failed += 1
        if len(self.report.failures) < _LOGGED_FAILURES:
            self.report.failures.append(f"{name}: {why}")
            logger.warning("skipping %s: %s", name, why)

    def _prepare(self, path: Path, name: str) -> Prepared | None:
        try:
            raw = to_raw(path.read_bytes(), 0, self.encoder.modality, self.encoder.name)
            return self.encoder.prepare(raw)
        except OSError as exc:
            self.fail(name, f"cannot read it ({exc.strerror or exc})")
        except CPCError as exc:
            detail = exc.detail
            self.fail(name, "it " + detail[8:] if detail.startswith("input 0 ") else detail)
        return None

    def run_batch(self, batch: Sequence[tuple[str, Path]], metadata: dict[str, Any]) -> None:
        """Embed and write one batch (one store transaction)."""
        prepared = [
            (i, p) for i, (name, path) in enumerate(batch) if (p := self._prepare(path, name))
        ]
        vectors: dict[int, np.ndarray] = {}
        for group in _budget_groups(prepared):
            outputs = self.encoder.run([p for _, p in group])
            for (i, _), (_, c) in zip(group, outputs, strict=True):
                vectors[i] = l2_normalize(pool(c, "mean"))
        items = []
        for i in sorted(vectors):
            name = batch[i][0]
            try:
                meta = validate_metadata(metadata.get(name), self.coll.max_metadata_bytes)
                items.append(
                    (name, prepare_vector(vectors[i], self.coll.dim, self.coll.name), meta)
                )
            except CPCError as exc:
                self.fail(name, exc.detail)
        if items:
            self.coll.upsert(items)
            self.report.added += len(items)


# --- the command -------------------------------------------------------------------------------


def run_index(
    collection: str,
    data: Path,
    *,
    settings: Settings,
    metadata_csv: Path | None = None,
    model: str | None = None,
    batch: int = 32,
    index: str = "flat",
    force: bool = False,
) -> IndexReport:
    """Embed every file of `data` that is not stored yet into `collection`."""
    validate_collection_name(collection)
    if batch < 1:
        raise IndexerError("--batch must be at least 1")
    if not data.is_dir():
        raise IndexerError(f"{data}: not a folder")
    if metadata_csv is None and (data / MANIFEST).is_file():
        metadata_csv = data / MANIFEST
    metadata = read_metadata(metadata_csv) if metadata_csv is not None else {}
    files = list_files(data, exclude=[data / MANIFEST, *([metadata_csv] if metadata_csv else [])])
    if not files:
        raise IndexerError(f"{data}: no files to index")
    set_faiss_threads(1)
    lock = DataDirLock(settings.data_dir, exclusive=True)
    if force:
        logger.warning(
            "--force: not checking for a server; restart any server using %s afterwards",
            settings.data_dir,
        )
    else:
        lock.acquire()
    try:
        return _run_locked(collection, data, files, metadata, settings, model, batch, index)
    finally:
        lock.release()


def _run_locked(
    collection: str,
    data: Path,
    files: list[Path],
    metadata: dict[str, dict[str, str]],
    settings: Settings,
    model: str | None,
    batch: int,
    index: str,
) -> IndexReport:
    manager = CollectionManager(settings.data_dir, max_metadata_bytes=settings.max_metadata_bytes)
    stored_model = existing_model(manager, collection)
    if stored_model is not None and model is not None and model != stored_model:
        raise IndexerError(
            f"collection '{collection}' holds vectors of model '{stored_model}', not '{model}'"
        )
    folder, spec = choose_bundle(settings.models_dir, files, model or stored_model)
    encoder = OnnxEncoder.load(
        folder,
        Limits.from_settings(settings),
        intra_op_threads=settings.intra_op_threads,
        use_quantized=settings.use_quantized,
    )
    coll = open_collection(manager, collection, spec, index)
    try:
        return _index_files(encoder, coll, data, files, metadata, batch)
    finally:
        coll.close()


def _index_files(
    encoder: OnnxEncoder,
    coll: Collection,
    data: Path,
    files: list[Path],
    metadata: dict[str, dict[str, str]],
    batch: int,
) -> IndexReport:
    if coll.dim != encoder.spec.dims.context:
        raise IndexerError(
            f"collection '{coll.name}' has dim {coll.dim}, model '{encoder.name}' gives "
            f"{encoder.spec.dims.context}: delete the collection or index into another one"
        )
    report = IndexReport(coll.name, encoder.name, files=len(files))
    indexer = Indexer(encoder, coll, report)
    todo: list[tuple[str, Path]] = []
    for path in files:
        name = item_id(path, data)
        try:
            validate_item_id(name)
        except CPCError as exc:
            indexer.fail(name[:80], exc.detail)
            continue
        if coll.store.get(name) is not None:
            report.skipped += 1
        else:
            todo.append((name, path))
    progress = Progress(len(todo), f"index {coll.name}")
    try:
        for start in range(0, len(todo), batch):
            chunk = todo[start : start + batch]
            indexer.run_batch(chunk, metadata)
            progress.update(len(chunk))
    finally:
        progress.close()
    report.count = coll.count()
    logger.info(
        "collection '%s' (model %s): added %d, skipped %d already stored, %d failed; "
        "it holds %d items",
        coll.name,
        encoder.name,
        report.added,
        report.skipped,
        report.failed,
        report.count,
    )
    return report


def main(args: argparse.Namespace) -> int:
    """`cpc-embed index`: 0 when done (failed files are counted, not fatal), 2 on a usage error."""
    overrides: dict[str, Any] = {}
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    if args.models_dir is not None:
        overrides["models_dir"] = args.models_dir
    try:
        run_index(
            args.collection,
            args.data,
            settings=Settings(**overrides),
            metadata_csv=args.metadata,
            model=args.model,
            batch=args.batch,
            index=args.index,
            force=args.force,
        )
    except (IndexerError, DataDirBusy, BundleError, CPCError) as exc:
        logger.error("cpc-embed index: %s", getattr(exc, "detail", exc))
        return 2
    return 0
