"""Every collection of a data folder: open them all, create, find and delete one.

Creating and deleting are atomic on disk: a new collection is built in a
hidden folder and renamed into place; a deleted one is renamed away before it
is removed, so a crash leaves either the whole collection or none of it.
A collection whose store is damaged (empty, not SQLite, failing SQLite's
quick_check) is kept out of service: every route of it answers 503 saying why,
and the others serve. The data folder's write state is one `StorageHealth`.
Layout: `<data_dir>/collections/<name>/{items.sqlite3, index.faiss}`.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from service.durable import fsync_dir
from service.errors import Conflict, NotFound, OutOfService
from service.inference.pooling import VectorPooling, pooled_dim
from service.vectors.collection import STORE_FILE, Collection
from service.vectors.storage import StorageHealth
from service.vectors.store import CollectionInfo, ItemStore, StoreDamaged
from service.vectors.validation import NAME_RE, check_new_collection

logger = logging.getLogger(__name__)

LEFTOVER_PREFIXES = (".new-", ".deleted-")  # folders of interrupted creates and deletes


class CollectionManager:
    """Every collection under `<data_dir>/collections`. Thread-safe."""

    def __init__(
        self,
        data_dir: Path | str,
        *,
        max_metadata_bytes: int = 65536,
        snapshot_every: int = 5000,
        index_params: Mapping[str, Mapping[str, Any]] | None = None,
        check_stores: bool = True,
        storage: StorageHealth | None = None,
    ) -> None:
        self.root = Path(data_dir) / "collections"
        self.max_metadata_bytes = max_metadata_bytes
        self.snapshot_every = snapshot_every
        self.index_params = dict(index_params or {})
        self.check_stores = check_stores
        self.storage = storage or StorageHealth(Path(data_dir))
        self._lock = threading.RLock()
        self._collections: dict[str, Collection] = {}
        self._damaged: dict[str, str] = {}  # name -> why it is out of service

    def open_folder(self, folder: Path) -> Collection:
        """The collection in `folder`, opened with this manager's storage state and checks
        (not registered: `open_all` and `create` do that)."""
        return Collection.open(
            folder,
            self.index_params,
            health=self.storage,
            check=self.check_stores,
            max_metadata_bytes=self.max_metadata_bytes,
            snapshot_every=self.snapshot_every,
        )

    def _open_or_mark(self, folder: Path) -> None:
        """Open one collection; one whose files are damaged is marked out of service."""
        try:
            coll = self.open_folder(folder)
        except (StoreDamaged, sqlite3.DatabaseError, OSError) as exc:
            self._damaged[folder.name] = str(exc)
            logger.error(
                "collection '%s' is out of service: %s (docs/operations.md: damaged files)",
                folder.name,
                exc,
            )
            return
        self._collections[folder.name] = coll
        logger.info("opened collection '%s' (%d items)", folder.name, coll.count())

    def open_all(self) -> None:
        """Open every collection on disk; leftovers of interrupted creates/deletes are removed."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock:
            for folder in sorted(self.root.iterdir()):
                if folder.is_dir() and folder.name.startswith(LEFTOVER_PREFIXES):
                    logger.info("removing leftover %s", folder)
                    shutil.rmtree(folder, ignore_errors=True)
                elif folder.name in self._collections:
                    continue
                elif NAME_RE.fullmatch(folder.name) and (folder / STORE_FILE).is_file():
                    self._open_or_mark(folder)
                else:
                    logger.warning("ignoring %s: not a collection folder", folder)

    def create(
        self,
        name: str,
        model: str,
        dim: int,
        index: str = "flat",
        pooling: VectorPooling = "mean",
    ) -> Collection:
        """A new empty collection of `dim`-value vectors pooled with `pooling`; Conflict if
        the name is taken."""
        check_new_collection(name, model, dim, index, pooling)
        with self._lock:
            final = self.root / name
            if name in self._damaged:
                raise Conflict(f"collection '{name}' exists but is out of service (damaged)")
            if name in self._collections or final.exists():
                raise Conflict(f"collection '{name}' already exists")
            tmp = self.root / f".new-{name}-{uuid.uuid4().hex}"
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                tmp.mkdir()
                info = CollectionInfo(name, model, dim, index, pooling)
                ItemStore.create(tmp / STORE_FILE, info).close()
                fsync_dir(tmp)
                os.rename(tmp, final)
                fsync_dir(self.root)
            except BaseException as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                error = self.storage.error_for(exc, "create")
                if error is not None:
                    raise error from exc
                raise
            self.storage.succeeded()
            coll = self.open_folder(final)
            self._collections[name] = coll
            logger.info(
                "created collection '%s' (model %s, %s pooling, dim %d, %s)",
                name,
                model,
                pooling,
                dim,
                index,
            )
            return coll

    def get(self, name: str) -> Collection:
        with self._lock:
            coll = self._collections.get(name)
            damaged = self._damaged.get(name)
        if damaged is not None:
            raise OutOfService(
                f"collection '{name}' is out of service: {damaged}. The other collections "
                "serve; restore its folder from a backup, or move it away and restart "
                "(`cpc-embed check` lists what is damaged)"
            )
        if coll is None:
            raise NotFound(f"no collection named '{name}'")
        return coll

    def unavailable(self) -> dict[str, str]:
        """The collections out of service, and why."""
        with self._lock:
            return dict(self._damaged)

    def delete(self, name: str) -> None:
        """Close the collection and remove its folder; NotFound if there is none."""
        self.get(name)  # OutOfService for a damaged one: its files are left to the operator
        with self._lock:
            coll = self._collections.pop(name, None)
        if coll is None:
            raise NotFound(f"no collection named '{name}'")
        coll.close(snapshot=False)  # waits for its running writes and searches
        with self._lock:
            doomed = self.root / f".deleted-{name}-{uuid.uuid4().hex}"
            os.rename(coll.folder, doomed)
            fsync_dir(self.root)
        shutil.rmtree(doomed, ignore_errors=True)
        logger.info("deleted collection '%s'", name)

    def list(self) -> list[Collection]:
        with self._lock:
            return [self._collections[name] for name in sorted(self._collections)]

    def ensure(self, name: str, model: str, width: int) -> Collection:
        """The collection `name` of `model` (context layer `width` values wide), created
        (flat, mean pooled) if absent; Conflict if it holds other vectors."""
        with self._lock:
            coll = self._collections.get(name)
            if coll is None:
                return self.create(name, model, width)
        dim = pooled_dim(width, coll.info.pooling)
        if coll.info.model != model or coll.dim != dim:
            raise Conflict(
                f"collection '{name}' holds model '{coll.info.model}' vectors of dim {coll.dim}, "
                f"but model '{model}' gives dim {dim} ({coll.info.pooling} pooling); delete the "
                "collection or rename the model"
            )
        return coll

    def ping(self) -> None:
        """Nothing to ask: the collections live in this process."""

    def storage_state(self, probe: bool = False) -> dict[str, Any]:
        """Whether the data folder takes writes (with `probe`, tried again while it does
        not), and the collections out of service."""
        if probe:
            self.storage.probe()
        return {**self.storage.describe(), "unavailable": self.unavailable()}

    def snapshot_all(self) -> None:
        """Save the index snapshot of every collection that changed since its last one."""
        for coll in self.list():
            try:
                coll.snapshot()
            except Exception:
                logger.exception("snapshot of collection '%s' failed", coll.name)

    def close_all(self) -> None:
        """Snapshot and close every collection (on shutdown)."""
        with self._lock:
            collections = list(self._collections.values())
            self._collections.clear()
        for coll in collections:
            try:
                coll.close()
            except Exception:
                logger.exception("closing collection '%s' failed", coll.name)
