"""The durable store of record of one collection: an SQLite file in WAL mode.

Every item is a row `(id, seq, vector, metadata, version, updated_at)`; `seq`
comes from a counter in the `meta` table that only grows, so it names one
immutable vector for ever. Each write method is one fsynced transaction
(`synchronous=FULL`): all of a batch or none; one the disk refuses is the
error `service.vectors.storage` names (507 for a full disk), with nothing of it
kept. A file that is not a sound store raises `StoreDamaged` on open, before
anything is written to it. An item's original lives in the
`originals` table and is written in the same transaction as the item.
Pooling: the `meta` table's `pooling` row (none: mean); a store that is not
mean pooled is format 2. Filters (`filter_seqs`) mean what
`service.vectors.filters` says (docs/api.md, POST /search). The tables and the formats:
docs/architecture.md (Collections).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from service.errors import InvalidInput, NotFound
from service.inference.pooling import VECTOR_POOLINGS, VectorPooling
from service.vectors.filters import Condition, matches, to_sql
from service.vectors.storage import StorageHealth

logger = logging.getLogger(__name__)

STORE_FORMAT = 2  # the newest format this service reads (see "Pooling" above)
_CHUNK = 500  # seqs per `IN (...)` query, well under SQLite's variable limit
_SQLITE_MAGIC = b"SQLite format 3\x00"
_HEADER_BYTES = 100  # an SQLite file's header

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id TEXT PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 256),
    seq INTEGER NOT NULL UNIQUE,
    vector BLOB NOT NULL,
    metadata TEXT NOT NULL,
    version INTEGER NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS originals (
    id TEXT PRIMARY KEY,
    media_type TEXT NOT NULL,
    data BLOB NOT NULL
);
"""
_ORIGINALS_SCHEMA = _SCHEMA[_SCHEMA.index("CREATE TABLE IF NOT EXISTS originals") :]


@dataclass(frozen=True)
class CollectionInfo:
    """What a collection is: kept in the store's `meta` table."""

    name: str
    model: str
    dim: int
    index: str
    pooling: VectorPooling = "mean"
    created_at: str = ""
    format: int = STORE_FORMAT

    def describe(self, count: int) -> dict[str, Any]:
        """The collection's description in the API (GET /collections/{name})."""
        return {
            "name": self.name,
            "model": self.model,
            "dim": self.dim,
            "pooling": self.pooling,
            "count": count,
            "index": self.index,
        }


@dataclass(frozen=True)
class Item:
    """One stored item; `vector` is None when it was not asked for."""

    id: str
    seq: int
    vector: np.ndarray | None
    metadata: dict[str, Any]
    version: int
    updated_at: float


@dataclass(frozen=True)
class Original:
    """What an item was made from, small enough to show: `data` of `media_type`."""

    media_type: str
    data: bytes


def dump_metadata(metadata: Mapping[str, Any]) -> str:
    """Canonical JSON text of a metadata object (sorted keys, no NaN or infinity)."""
    try:
        return json.dumps(
            metadata, ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":")
        )
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"metadata is not representable as JSON: {exc}") from exc


def _vector_pooling(value: str) -> VectorPooling:
    """`value` as a collection's pooling; ValueError if it is not one."""
    for pooling in VECTOR_POOLINGS:
        if value == pooling:
            return pooling
    raise ValueError(f"unknown pooling {value!r}; a collection's is one of {VECTOR_POOLINGS}")


def _select_in(db: sqlite3.Connection, sql: str, values: Sequence[Any]) -> Iterator[Any]:
    """The rows of `sql`, whose `{marks}` is an `IN` list, over `values` in chunks of _CHUNK."""
    for start in range(0, len(values), _CHUNK):
        chunk = list(values[start : start + _CHUNK])
        yield from db.execute(sql.format(marks=",".join("?" * len(chunk))), chunk).fetchall()


class StoreDamaged(ValueError):
    """A store file that cannot be trusted: empty, not SQLite, or failing SQLite's check."""


def check_store_file(path: Path) -> None:
    """StoreDamaged unless `path` starts like an SQLite database (read, never written)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(_HEADER_BYTES)
    except OSError as exc:
        raise StoreDamaged(f"{path} cannot be read: {exc}") from exc
    if not head:
        raise StoreDamaged(f"{path} is empty (0 bytes)")
    if len(head) < _HEADER_BYTES or not head.startswith(_SQLITE_MAGIC):
        raise StoreDamaged(f"{path} is not an SQLite database (its header is damaged)")


def integrity_problems(conn: sqlite3.Connection, pragma: str = "quick_check") -> list[str]:
    """What SQLite's `quick_check` (or `integrity_check`) finds wrong; empty when sound."""
    rows = [str(row[0]) for row in conn.execute(f"PRAGMA {pragma}").fetchall()]
    return [] if rows == ["ok"] else rows


def shown_problems(problems: Sequence[str], most: int = 3) -> str:
    """The first `most` of SQLite's problem lines, on one line."""
    return "; ".join(problems[:most]) + (" ..." if len(problems) > most else "")


class ItemStore:
    """The SQLite store of one collection. Thread-safe: one connection behind a lock."""

    def __init__(
        self, path: Path, conn: sqlite3.Connection, health: StorageHealth | None = None
    ) -> None:
        self.path = path
        self.health = health or StorageHealth(path.parent)
        self._conn = conn
        self._lock = threading.RLock()
        self._closed = False
        try:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.Error as exc:
            conn.close()
            raise StoreDamaged(f"{path} has no readable meta table: {exc}") from exc
        pooling = meta.get("pooling", "mean")  # no row: a store from before pooling rows
        try:
            self.info = CollectionInfo(
                name=meta["name"],
                model=meta["model"],
                dim=int(meta["dim"]),
                index=meta["index"],
                pooling=_vector_pooling(pooling),
                created_at=meta["created_at"],
                format=int(meta["format"]),
            )
        except KeyError as exc:
            conn.close()
            raise StoreDamaged(
                f"{path} is not a collection store: no {exc} in its meta table"
            ) from exc
        except ValueError as exc:
            conn.close()
            raise ValueError(f"{path}: {exc}") from exc
        if self.info.format > STORE_FORMAT:
            conn.close()
            raise ValueError(f"{path} has store format {self.info.format}, newer than this service")

    # -- opening -------------------------------------------------------------------------------

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            conn.close()
            raise RuntimeError(f"SQLite refused WAL mode for {path} (got {mode})")
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    @classmethod
    def create(cls, path: Path, info: CollectionInfo) -> ItemStore:
        """Create a new store file at `path` (which must not exist) describing `info`."""
        if path.exists():
            raise FileExistsError(path)
        pooling = _vector_pooling(info.pooling)
        conn = cls._connect(path)
        created = info.created_at or datetime.now(UTC).isoformat(timespec="seconds")
        rows = {
            "name": info.name,
            "model": info.model,
            "dim": str(info.dim),
            "index": info.index,
            "pooling": pooling,
            "created_at": created,
            "format": str(1 if pooling == "mean" else STORE_FORMAT),
            "next_seq": "1",
            "version": "0",
        }
        conn.executescript(_SCHEMA)
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", rows.items())
        conn.execute("COMMIT")
        return cls(path, conn)

    @classmethod
    def open(
        cls, path: Path, health: StorageHealth | None = None, *, check: bool = True
    ) -> ItemStore:
        """Open an existing store file; StoreDamaged if it is not a sound one (with `check`,
        SQLite's quick_check reads every page first). A damaged file is never written."""
        if not path.is_file():
            raise FileNotFoundError(path)
        check_store_file(path)
        try:
            conn = cls._connect(path)
        except sqlite3.DatabaseError as exc:
            raise StoreDamaged(f"{path} cannot be opened: {exc}") from exc
        try:
            problems = integrity_problems(conn) if check else []
            if problems:
                raise StoreDamaged(f"{path} fails SQLite's quick_check: {shown_problems(problems)}")
            store = cls(path, conn, health)
            conn.executescript(_ORIGINALS_SCHEMA)  # a store file from before originals
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreDamaged(f"{path} cannot be read: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return store

    def full_check(self) -> list[str]:
        """What SQLite's full `integrity_check` finds wrong (slow: for `cpc-embed check`)."""
        with self._lock:
            return integrity_problems(self._db(), "integrity_check")

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    # -- helpers -------------------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        if self._closed:
            raise NotFound(f"collection '{self.info.name}' is closed")
        return self._conn

    def _meta_int(self, key: str) -> int:
        row = self._db().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0])

    def _vector_blob(self, vector: np.ndarray) -> bytes:
        vec = np.asarray(vector, dtype="<f4")
        if vec.shape != (self.info.dim,):
            raise InvalidInput(
                f"vector has shape {vec.shape}, collection '{self.info.name}' "
                f"stores vectors of dim {self.info.dim}"
            )
        return vec.tobytes()

    def _decode(self, row: Sequence[Any], with_vector: bool) -> Item:
        item_id, seq, metadata, version, updated_at = row[:5]
        vector = np.frombuffer(row[5], dtype="<f4").astype(np.float32) if with_vector else None
        return Item(item_id, seq, vector, json.loads(metadata), version, updated_at)

    # -- writes --------------------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction under the lock: committed whole, or rolled back whole.

        A constraint violation is InvalidInput; a disk that refuses the write is the
        error `StorageHealth` names (507 for a full disk). SQLite may have rolled back
        by itself (it does on a full disk), so the rollback is only asked for while a
        transaction is still open.
        """
        with self._lock:
            db = self._db()
            try:
                db.execute("BEGIN IMMEDIATE")
                yield db
                db.execute("COMMIT")
            except BaseException as exc:
                if db.in_transaction:
                    try:
                        db.execute("ROLLBACK")
                    except sqlite3.Error as undo:  # the connection is gone: SQLite undoes it
                        logger.warning("%s: rollback failed: %s", self.path, undo)
                if isinstance(exc, sqlite3.IntegrityError):
                    raise InvalidInput(
                        f"the batch was rejected and nothing was written: {exc}"
                    ) from exc
                error = self.health.error_for(exc)
                if error is not None:
                    raise error from exc
                raise
        self.health.succeeded()

    def upsert(
        self,
        items: Sequence[tuple[str, np.ndarray, Mapping[str, Any]]],
        originals: Sequence[Original | None] | None = None,
    ) -> list[tuple[str, int, int | None]]:
        """Insert or replace items in one transaction; return `(id, new seq, old seq or None)`.

        An id given twice in one batch is written twice: the second write replaces the
        first, so the first one's new seq shows up as the second one's old seq.
        `originals` (one per item, in order, None for none) replaces each item's original;
        without it every written item is left with none.
        """
        if originals is not None and len(originals) != len(items):
            raise ValueError(f"{len(originals)} originals for {len(items)} items")
        kept = list(originals) if originals is not None else [None] * len(items)
        prepared = [(item_id, self._vector_blob(v), dump_metadata(m)) for item_id, v, m in items]
        now = time.time()
        out: list[tuple[str, int, int | None]] = []
        with self._transaction() as db:
            next_seq = self._meta_int("next_seq")
            version = self._meta_int("version") + 1
            for (item_id, blob, metadata), original in zip(prepared, kept, strict=True):
                row = db.execute("SELECT seq FROM items WHERE id = ?", (item_id,)).fetchone()
                db.execute(
                    "INSERT INTO items (id, seq, vector, metadata, version, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                    "seq = excluded.seq, vector = excluded.vector, "
                    "metadata = excluded.metadata, version = excluded.version, "
                    "updated_at = excluded.updated_at",
                    (item_id, next_seq, blob, metadata, version, now),
                )
                self._write_original(item_id, original)
                out.append((item_id, next_seq, None if row is None else int(row[0])))
                next_seq += 1
            self._set_counters(next_seq, version)
        return out

    def _write_original(self, item_id: str, original: Original | None) -> None:
        """Replace the original of `item_id` (inside the caller's transaction)."""
        db = self._db()
        db.execute("DELETE FROM originals WHERE id = ?", (item_id,))
        if original is not None:
            db.execute(
                "INSERT INTO originals (id, media_type, data) VALUES (?, ?, ?)",
                (item_id, original.media_type, original.data),
            )

    def _set_counters(self, next_seq: int, version: int) -> None:
        self._db().executemany(
            "UPDATE meta SET value = ? WHERE key = ?",
            [(str(next_seq), "next_seq"), (str(version), "version")],
        )

    def delete(self, item_id: str) -> int:
        """Delete one item and return the seq it had; NotFound if there is none."""
        with self._transaction() as db:
            rows = db.execute("DELETE FROM items WHERE id = ? RETURNING seq", (item_id,)).fetchall()
            if not rows:
                raise NotFound(f"no item '{item_id}' in collection '{self.info.name}'")
            db.execute("DELETE FROM originals WHERE id = ?", (item_id,))
            self._set_counters(self._meta_int("next_seq"), self._meta_int("version") + 1)
        return int(rows[0][0])

    # -- reads ---------------------------------------------------------------------------------

    def version(self) -> int:
        """How many write transactions have been committed: grows with every write."""
        with self._lock:
            return self._meta_int("version")

    def count(self) -> int:
        with self._lock:
            return int(self._db().execute("SELECT count(*) FROM items").fetchone()[0])

    def get(self, item_id: str) -> Item | None:
        """The item with this id, vector included, or None."""
        with self._lock:
            row = (
                self._db()
                .execute(
                    "SELECT id, seq, metadata, version, updated_at, vector FROM items WHERE id = ?",
                    (item_id,),
                )
                .fetchone()
            )
        return None if row is None else self._decode(row, with_vector=True)

    def get_original(self, item_id: str) -> Original | None:
        """The original kept with `item_id`, or None (no such item, or none kept)."""
        with self._lock:
            row = (
                self._db()
                .execute("SELECT media_type, data FROM originals WHERE id = ?", (item_id,))
                .fetchone()
            )
        return None if row is None else Original(str(row[0]), bytes(row[1]))

    def original_types(self, ids: Sequence[str]) -> dict[str, str]:
        """The media type of the original of each of `ids` that has one."""
        wanted = list(dict.fromkeys(ids))
        found: dict[str, str] = {}
        with self._lock:
            sql = "SELECT id, media_type FROM originals WHERE id IN ({marks})"
            found.update((str(i), str(t)) for i, t in _select_in(self._db(), sql, wanted))
        return found

    def get_by_seqs(self, seqs: Sequence[int] | np.ndarray, *, vectors: bool = False) -> list[Item]:
        """Items by seq, in the order given; seqs with no row are left out."""
        wanted = [int(s) for s in seqs]
        found: dict[int, Item] = {}
        columns = "id, seq, metadata, version, updated_at" + (", vector" if vectors else "")
        with self._lock:
            sql = f"SELECT {columns} FROM items WHERE seq IN ({{marks}})"
            for row in _select_in(self._db(), sql, wanted):
                found[int(row[1])] = self._decode(row, with_vector=vectors)
        return [found[s] for s in wanted if s in found]

    def all_seqs(self) -> np.ndarray:
        """Every stored seq, ascending, as int64."""
        with self._lock:
            rows = self._db().execute("SELECT seq FROM items ORDER BY seq").fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def iter_all(self, batch: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every `(seqs int64[n], vectors float32[n, dim])`, in seq order, `batch` rows at a time.

        Each chunk is read under the lock; a writer may run between chunks, so callers
        that need one consistent pass must keep writes out themselves.
        """
        yield from self._iter_vectors("SELECT seq, vector FROM items WHERE seq > ?", [], batch)

    def vectors_for(self, seqs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`(seqs, vectors)` of the given seqs that exist, in seq order."""
        found_seqs: list[np.ndarray] = []
        found_vecs: list[np.ndarray] = []
        ordered = np.unique(np.asarray(seqs, dtype=np.int64))
        for start in range(0, len(ordered), _CHUNK):
            chunk = [int(s) for s in ordered[start : start + _CHUNK]]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT seq, vector FROM items WHERE seq IN ({marks}) AND seq > ?"
            for s, v in self._iter_vectors(sql, chunk, len(chunk)):
                found_seqs.append(s)
                found_vecs.append(v)
        if not found_seqs:
            return np.zeros(0, np.int64), np.zeros((0, self.info.dim), np.float32)
        return np.concatenate(found_seqs), np.concatenate(found_vecs)

    def _iter_vectors(
        self, sql: str, params: list[Any], batch: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        last = 0
        while True:
            with self._lock:
                rows = (
                    self._db()
                    .execute(f"{sql} ORDER BY seq LIMIT ?", [*params, last, batch])
                    .fetchall()
                )
            if not rows:
                return
            seqs = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            blob = b"".join(r[1] for r in rows)
            vectors = np.frombuffer(blob, dtype="<f4").astype(np.float32).reshape(len(rows), -1)
            yield seqs, vectors
            last = int(seqs[-1])
            if len(rows) < batch:
                return

    def filter_seqs(self, cond: Condition) -> np.ndarray:
        """Seqs (ascending, int64) of the items whose metadata matches `cond`.

        What SQLite can test (scalars, with `json_type` keeping `true` and `1`
        apart) narrows the rows in SQL; whatever it cannot (arrays, objects,
        `not`, keys SQLite cannot quote) is checked in Python on what is left.
        """
        sql = to_sql(cond)
        exact = sql is not None and sql.exact
        query = "SELECT seq" + ("" if exact else ", metadata") + " FROM items"
        params: tuple[Any, ...] = ()
        if sql is not None:
            query += " WHERE " + sql.clause
            params = sql.params
        with self._lock:
            rows = self._db().execute(query + " ORDER BY seq", params).fetchall()
        if not exact:
            rows = [r for r in rows if matches(cond, json.loads(r[1]))]
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def page(self, limit: int, after: str | None) -> list[Item]:
        """Up to `limit` items (no vectors) with ids after `after`, in id order."""
        with self._lock:
            rows = (
                self._db()
                .execute(
                    "SELECT seq, id, metadata, version, updated_at FROM items WHERE id > ? "
                    "ORDER BY id LIMIT ?",
                    (after or "", limit),
                )
                .fetchall()
            )
        return [
            Item(item_id, seq, None, json.loads(md), version, updated)
            for seq, item_id, md, version, updated in rows
        ]
