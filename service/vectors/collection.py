"""Collections: a durable `ItemStore` plus the FAISS index derived from it.

Writers are serialised by a mutex, and a writer-preferring readers-writer lock
keeps searches away from a half-applied write; slow upkeep (IVF training,
snapshots) holds only the mutex. The index is only a cache of the store: on
open, a snapshot is loaded and reconciled with the store by seq, or the index
is rebuilt. A collection's pooling, fixed at creation and kept in its store, is
how inputs embedded for it pool their steps. Details: docs/architecture.md
(Collections).

`service.vectors.manager` holds every collection of a data folder.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.errors import InvalidInput, NotFound
from service.vectors.filters import as_condition
from service.vectors.index import (
    SnapshotError,
    VectorIndex,
    load_index,
    make_index,
)
from service.vectors.storage import StorageHealth
from service.vectors.store import Item, ItemStore, Original
from service.vectors.validation import (
    checked_items,
    prepare_vector,
)

logger = logging.getLogger(__name__)

STORE_FILE = "items.sqlite3"
INDEX_FILE = "index.faiss"
STALE_SNAPSHOTS = f".{INDEX_FILE}.*.tmp"  # snapshots cut short by a crash

# --- locking ---------------------------------------------------------------------------------


class RWLock:
    """Many readers or one writer; a waiting writer holds off new readers. Not reentrant."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writing or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writing or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


# --- one collection --------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchHit:
    id: str
    score: float
    metadata: dict[str, Any]


def build_index(store: ItemStore, index_params: Mapping[str, Any]) -> VectorIndex:
    """A fresh index over every vector in the store."""
    index: VectorIndex = make_index(store.info.index, store.info.dim, **index_params)
    for seqs, vectors in store.iter_all():
        index.add(seqs, vectors)
    return index.rebuilt() if index.maintenance_due() else index


def _load_index(
    store: ItemStore, path: Path, index_params: Mapping[str, Any]
) -> tuple[VectorIndex, bool]:
    """The snapshot at `path` reconciled with the store (or a rebuild when it is unusable),
    and whether it differs from the snapshot."""
    name = store.info.name
    try:
        index, version = load_index(path, store.info.index, store.info.dim, **index_params)
    except SnapshotError as exc:
        if path.exists():
            logger.warning("collection '%s': ignoring index snapshot (%s); rebuilding", name, exc)
        return build_index(store, index_params), store.count() > 0
    store_seqs, index_seqs = store.all_seqs(), index.seqs()
    extra = np.setdiff1d(index_seqs, store_seqs)
    missing = np.setdiff1d(store_seqs, index_seqs)
    if len(np.unique(index_seqs)) != len(index_seqs):
        logger.warning("collection '%s': snapshot repeats seqs; rebuilding", name)
        return build_index(store, index_params), True
    index.remove(extra)
    for start in range(0, len(missing), 4096):
        index.add(*store.vectors_for(missing[start : start + 4096]))
    logger.info(
        "collection '%s': snapshot of version %d, store at %d: removed %d, added %d",
        name,
        version,
        store.version(),
        len(extra),
        len(missing),
    )
    changed = bool(len(extra) or len(missing))
    if index.maintenance_due():
        return index.rebuilt(), True
    return index, changed


class Collection:
    """Items `(id, vector, metadata)` of one model, searchable by cosine similarity."""

    cheap_count = True  # count() reads SQLite: the metrics gauge follows every write

    def __init__(
        self,
        folder: Path,
        store: ItemStore,
        index: VectorIndex,
        *,
        index_params: Mapping[str, Any] | None = None,
        max_metadata_bytes: int = 65536,
        snapshot_every: int = 5000,
    ) -> None:
        self.folder = folder
        self.store = store
        self.info = store.info
        self.max_metadata_bytes = max_metadata_bytes
        self.snapshot_every = snapshot_every
        self.index_params = dict(index_params or {})
        self._index = index
        self._writer = threading.Lock()  # serialises writers and upkeep
        self._rw = RWLock()  # searches shared, index + store mutation exclusive
        self._unsaved = 0  # item writes since the last snapshot
        self._closed = False

    @classmethod
    def open(
        cls,
        folder: Path,
        index_params: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        health: StorageHealth | None = None,
        check: bool = True,
        **options: Any,
    ) -> Collection:
        """Open the collection in `folder`; `index_params` maps an index kind to its options.
        StoreDamaged if its store is not sound (`check`: SQLite's quick_check first)."""
        for stale in folder.glob(STALE_SNAPSHOTS):
            stale.unlink(missing_ok=True)
        store = ItemStore.open(folder / STORE_FILE, health, check=check)
        try:
            params = (index_params or {}).get(store.info.index, {})
            index, changed = _load_index(store, folder / INDEX_FILE, params)
        except BaseException:
            store.close()
            raise
        out = cls(folder, store, index, index_params=params, **options)
        out._unsaved = int(changed)
        return out

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def dim(self) -> int:
        return self.info.dim

    def _check_open(self) -> None:
        if self._closed:
            raise NotFound(f"collection '{self.name}' was deleted or closed")

    def count(self) -> int:
        return self.store.count()

    def describe(self) -> dict[str, Any]:
        self._check_open()
        return self.info.describe(self.count())

    # -- writes --------------------------------------------------------------------------------

    def upsert(
        self,
        items: Sequence[tuple[str, Any, Mapping[str, Any] | None]],
        originals: Sequence[Original | None] | None = None,
    ) -> list[str]:
        """Insert or replace `(id, vector, metadata)` items, all or none; return the ids.

        `originals` gives each item (in order) the original to keep, or None; an item
        written without one loses the one it had (see `service.vectors.store`).
        """
        prepared = checked_items(items, self.dim, self.name, self.max_metadata_bytes)
        with self._writer:
            self._check_open()
            with self._rw.write():
                written = self.store.upsert(prepared, originals)
                replaced = {old for _, _, old in written if old is not None}
                keep = [i for i, (_, seq, _) in enumerate(written) if seq not in replaced]
                seqs = np.array([written[i][1] for i in keep], dtype=np.int64)
                vectors = np.stack([prepared[i][1] for i in keep])
                self._apply(lambda: self._mutate(np.array(sorted(replaced)), seqs, vectors))
            self._after_write(len(written))
        return [item_id for item_id, _, _ in written]

    def delete(self, item_id: str) -> None:
        """Delete one item; NotFound if it is absent."""
        with self._writer:
            self._check_open()
            with self._rw.write():
                seq = self.store.delete(item_id)
                self._apply(lambda: self._index.remove(np.array([seq], dtype=np.int64)))
            self._after_write(1)

    def _mutate(self, remove: np.ndarray, seqs: np.ndarray, vectors: np.ndarray) -> None:
        self._index.remove(remove)
        self._index.add(seqs, vectors)

    def _apply(self, change: Any) -> None:
        """Run an index change; if it fails, rebuild the index from the (committed) store."""
        try:
            change()
        except Exception:
            logger.exception("collection '%s': index update failed; rebuilding", self.name)
            self._index = build_index(self.store, self.index_params)

    def _after_write(self, items: int) -> None:
        """Upkeep after a write; the caller holds the writer mutex (not the RW lock)."""
        if self._index.maintenance_due():
            rebuilt = self._index.rebuilt()  # slow; searches go on using the old index
            with self._rw.write():
                self._index = rebuilt
        self._unsaved += items
        if self._unsaved >= self.snapshot_every:
            self._save()

    def _save(self) -> None:
        """Write the snapshot. One the disk refuses is logged, counted and tried again
        later: the store holds every write, and the index is only its cache."""
        try:
            self._index.save(self.folder / INDEX_FILE, self.store.version())
        except OSError as exc:
            logger.warning("collection '%s': index snapshot not written: %s", self.name, exc)
            self.store.health.snapshot_failed(exc)
            return
        self._unsaved = 0

    def snapshot(self) -> None:
        """Write the index snapshot now if anything changed since the last one."""
        with self._writer:
            if not self._closed and self._unsaved:
                self._save()

    def close(self, snapshot: bool = True) -> None:
        """Wait for running work, save a snapshot (if asked and needed) and close the store."""
        with self._writer, self._rw.write():
            if self._closed:
                return
            try:
                if snapshot and self._unsaved:
                    self._save()
            finally:
                self._closed = True
                self.store.close()

    # -- reads ---------------------------------------------------------------------------------

    def get(self, item_id: str) -> Item:
        self._check_open()
        item = self.store.get(item_id)
        if item is None:
            raise NotFound(f"no item '{item_id}' in collection '{self.name}'")
        return item

    def get_original(self, item_id: str) -> Original:
        """The original kept with an item; NotFound if the item or its original is absent."""
        self._check_open()
        original = self.store.get_original(item_id)
        if original is None:
            self.get(item_id)  # NotFound naming the item when it is the item that is missing
            raise NotFound(
                f"item '{item_id}' of collection '{self.name}' has no original: it was given "
                "as a vector, or sent with keep_originals false, or CPC_MAX_ORIGINAL_BYTES was 0"
            )
        return original

    def original_types(self, ids: Sequence[str]) -> dict[str, str]:
        """The media type of the original of each of `ids` that has one."""
        self._check_open()
        return self.store.original_types(ids)

    def sample(self, limit: int) -> tuple[int, list[Item]]:
        """The item count and at most `limit` items with their vectors, spread evenly over
        the collection in the order they were written (the same items for the same state)."""
        if limit < 1:
            raise InvalidInput("limit must be a positive whole number")
        with self._rw.read():
            self._check_open()
            seqs = self.store.all_seqs()
            count = len(seqs)  # every item: writers are held off until the sample is read
            if count > limit:
                seqs = seqs[np.linspace(0, count - 1, num=limit).round().astype(np.int64)]
            return count, self.store.get_by_seqs(seqs, vectors=True)

    def search(self, vector: object, k: int = 10, filter: object = None) -> list[SearchHit]:
        """The `k` items most similar to `vector` (cosine), best first, matching `filter`.

        `filter` is a parsed `Condition`, or the JSON of one (parsed with the
        default limits).
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InvalidInput("k must be a positive whole number")
        query = prepare_vector(vector, self.dim, self.name)
        where = as_condition(filter)
        with self._rw.read():
            self._check_open()
            allowed = self.store.filter_seqs(where) if where is not None else None
            scores, seqs = self._index.search(query, k, allowed)
            items = {item.seq: item for item in self.store.get_by_seqs(seqs)}
        return [
            SearchHit(items[s].id, float(np.clip(score, -1.0, 1.0)), items[s].metadata)
            for s, score in zip(seqs.tolist(), scores.tolist(), strict=True)
            if s in items
        ]

    def page(self, limit: int, after: str | None = None) -> tuple[list[Item], str | None]:
        """Up to `limit` items (no vectors) after the id `after`, in id order, and the cursor
        of the next page (None at the end).

        Ids are unique and ordered, so an item present for a whole scan is on exactly
        one page, however the collection changes between pages.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidInput("limit must be a positive whole number")
        with self._rw.read():
            self._check_open()
            items = self.store.page(limit + 1, after)
        more = len(items) > limit
        items = items[:limit]
        return items, (items[-1].id if more else None)
