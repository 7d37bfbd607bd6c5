"""Collections kept in a Milvus server: the same contract as `CollectionManager` and
`Collection`, for a service that runs many workers or outgrows one machine's FAISS.

A collection is one Milvus collection (`service.vectors.milvus_schema`: its
name, its fields, and what it is, kept in its description so that it survives
restarts). Vectors are L2-normalised and compared by inner product, so a
score is a cosine. Index kinds: `flat` (FLAT, exact) and `ivf` (IVF_FLAT with
`nlist`, searched with `nprobe`).

Reads use the `consistency` given (default Strong, about 0.2 s a read on Milvus
2.3 with its default 200 ms time tick: every read sees every acknowledged
write, from any worker; Session sees this process's own writes only). Filters
compile to Milvus expressions (`service.vectors.milvus_filters`); every hit is
checked again with `filters.matches`, and a search asks for more (then scans)
until it has `k` matches or there are none left, so a filter never drops a match.

Originals: Milvus holds every field of a loaded collection in memory and a
VARCHAR at most 65,535 bytes, so an original is kept, base64 in the `original`
field, only when it is at most MAX_ORIGINAL_BYTES (49,149 bytes: a thumbnail
or a text, not a 5 s clip); a larger one is not kept (logged) and the item is
written all the same, as the embedded store does with an input it cannot
render. Metadata over Milvus's 65,536 JSON bytes is refused (413).

Errors: `service.vectors.milvus_connection` (Unavailable, 503, when Milvus is
unreachable or failing; reconnection with backoff). A collection deleted by
another worker reads as NotFound. Milvus has no transactions: one upsert is
one request (Milvus applies all of it or none), and a delete of an item that
another worker deletes at the same moment succeeds for both.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import importlib.util
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import numpy as np

from service.errors import Conflict, InvalidInput, NotFound, TooLarge, Unavailable
from service.inference.pooling import VectorPooling, pooled_dim
from service.vectors.collection import SearchHit
from service.vectors.filters import Condition, FilterLimits, as_condition, matches
from service.vectors.milvus_connection import (
    CollectionMissing,
    CollectionNotLoaded,
    MilvusConnection,
)
from service.vectors.milvus_filters import compile_filter, string_literal
from service.vectors.milvus_schema import (
    DEFAULT_PREFIX,
    MAX_DIM,
    MAX_MEDIA_TYPE_BYTES,
    MAX_VARCHAR_BYTES,
    Described,
    milvus_name,
    parse_description,
    schema,
    service_name,
    vector_index,
)
from service.vectors.store import CollectionInfo, Item, Original, dump_metadata
from service.vectors.validation import (
    NAME_RE,
    check_new_collection,
    checked_items,
    prepare_vector,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

INDEX_KINDS = ("flat", "ivf")  # as service.vectors.index.INDEX_KINDS
CONSISTENCY_LEVELS = ("Strong", "Session", "Bounded", "Eventually")
DEFAULT_IVF = {"nlist": 128, "nprobe": 16}
MAX_TOPK = 16384  # Milvus: most results of one search, and limit + offset of one query
MAX_JSON_BYTES = 65536  # Milvus: the largest JSON value
MAX_ORIGINAL_BYTES = MAX_VARCHAR_BYTES // 4 * 3  # 49,149: what base64 fits in one VARCHAR
LOAD_TIMEOUT_S = 600.0  # loading a large collection into memory takes a while
CREATE_TIMEOUT_S = 60.0  # making a collection (its load is awaited by its first call)
SCAN_BATCH = 2000  # items per query when a search scans
IN_CHUNK = 500  # ids per `id in [...]`
_FIELDS = ("id", "seq", "metadata", "updated_at")

# --- rows --------------------------------------------------------------------------------------


class _Stamps:
    """Write stamps (`seq`): microseconds since the epoch, strictly growing in a process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0

    def next(self) -> int:
        with self._lock:
            self._last = max(self._last + 1, time.time_ns() // 1000)
            return self._last


_STAMPS = _Stamps()


def _encode_original(original: Original | None, item_id: str) -> tuple[str, str]:
    """`(media type, base64 data)` to store, ("", "") for none or one too large to keep."""
    if original is None:
        return "", ""
    if len(original.data) > MAX_ORIGINAL_BYTES:
        logger.warning(
            "item '%s': its original (%d bytes) is over the %d bytes the Milvus backend keeps; "
            "keeping none",
            item_id,
            len(original.data),
            MAX_ORIGINAL_BYTES,
        )
        return "", ""
    if len(original.media_type.encode()) > MAX_MEDIA_TYPE_BYTES:
        logger.warning("item '%s': its original's media type is too long; keeping none", item_id)
        return "", ""
    return original.media_type, base64.b64encode(original.data).decode("ascii")


def _id_list(ids: Sequence[str]) -> str | None:
    """`id in [...]` of the ids that can be written as literals (others cannot exist)."""
    literals = [lit for i in ids if isinstance(i, str) and (lit := string_literal(i)) is not None]
    return f"id in [{', '.join(literals)}]" if literals else None


def _item(row: Mapping[str, Any], with_vector: bool) -> Item:
    vector = np.asarray(row["vector"], dtype=np.float32) if with_vector else None
    metadata = row["metadata"]
    if isinstance(metadata, str | bytes):
        metadata = json.loads(metadata)
    seq = int(row["seq"])
    return Item(str(row["id"]), seq, vector, dict(metadata), seq, float(row["updated_at"]))


def _hit(hit: Any) -> SearchHit:
    entity = hit.get("entity") or hit
    metadata = entity["metadata"]
    if isinstance(metadata, str | bytes):
        metadata = json.loads(metadata)
    score = float(np.clip(float(hit["distance"]), -1.0, 1.0))
    return SearchHit(str(hit["id"]), score, dict(metadata))


# --- one collection ------------------------------------------------------------------------------


class MilvusCollection:
    """Items `(id, vector, metadata)` of one model in one Milvus collection."""

    cheap_count = False  # count() is a Strong query: the metrics gauge is refreshed periodically

    def __init__(
        self,
        described: Described,
        milvus: str,
        connection: MilvusConnection,
        *,
        consistency: str = "Strong",
        max_metadata_bytes: int = 65536,
        filter_limits: FilterLimits | None = None,
        on_gone: Callable[[MilvusCollection], None] | None = None,
        loading: bool = False,
    ) -> None:
        self.info = described.info
        self.token = described.token
        self.index_params = dict(described.params)  # nlist and nprobe of an ivf collection
        self.milvus = milvus
        self.max_metadata_bytes = max_metadata_bytes
        self.filter_limits = filter_limits or FilterLimits()
        self._conn = connection
        self._consistency = consistency
        self._on_gone = on_gone
        self._closed = False
        self._loading = loading  # a load that `create` started and no call has awaited yet
        self._deletes = 0  # acknowledged deletes, and how many an acknowledged upsert followed
        self._deletes_covered = 0
        self._deletes_lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def dim(self) -> int:
        return self.info.dim

    # -- plumbing ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise NotFound(f"collection '{self.name}' was deleted or closed")

    def _gone(self) -> NotFound:
        self._closed = True
        if self._on_gone is not None:
            self._on_gone(self)
        return NotFound(f"collection '{self.name}' was deleted")

    def _run(self, what: str, fn: Callable[[Any], T]) -> T:
        """`fn(client)` on this collection: NotFound once it is gone, loaded if it was not."""
        self._check_open()
        label = f"{what} in collection '{self.name}'"
        try:
            if self._loading:
                self._conn.call(f"finish loading collection '{self.name}'", self._load)
                self._loading = False
            try:
                return self._conn.call(label, fn)
            except CollectionNotLoaded:
                logger.info("collection '%s' is not loaded in Milvus: loading it", self.name)
                self._conn.call(f"load collection '{self.name}'", self._load)
                return self._conn.call(label, fn)
        except CollectionMissing:
            raise self._gone() from None
        except CollectionNotLoaded as exc:
            raise Unavailable(f"the Milvus vector database failed to {label}: {exc}") from None

    def _read_level(self) -> str:
        """The consistency of a read. Milvus 2.3 gives a delete no timestamp, so a Session
        read would not wait for this process's own deletes: reads are Strong from a delete
        until an upsert (whose timestamp is later) is acknowledged."""
        if self._consistency == "Session" and self._deletes != self._deletes_covered:
            return "Strong"
        return self._consistency

    def _load(self, client: Any) -> None:
        client.load_collection(self.milvus, timeout=max(self._conn.timeout_s, LOAD_TIMEOUT_S))

    def _query(self, what: str, expr: str, fields: Sequence[str], limit: int | None = None) -> Any:
        kwargs: dict[str, Any] = {"consistency_level": self._read_level()}
        if limit is not None:
            # the rows with the smallest ids, as pymilvus's query iterator asks; a page may still
            # come back short (rows replaced meanwhile count against the limit), never with a gap
            kwargs["limit"] = limit
            kwargs["reduce_stop_for_best"] = True
        return self._run(
            what,
            lambda c: c.query(
                self.milvus,
                filter=expr,
                output_fields=list(fields),
                timeout=self._conn.timeout_s,
                **kwargs,
            ),
        )

    def _rows(self, ids: Sequence[str], fields: Sequence[str]) -> dict[str, Mapping[str, Any]]:
        """The rows of the given ids that exist, by id."""
        found: dict[str, Mapping[str, Any]] = {}
        wanted = list(dict.fromkeys(ids))
        for start in range(0, len(wanted), IN_CHUNK):
            expr = _id_list(wanted[start : start + IN_CHUNK])
            if expr is not None:
                for row in self._query("read items", expr, fields):
                    found[str(row["id"])] = row
        return found

    # -- what it is ----------------------------------------------------------------------------

    def count(self) -> int:
        rows = self._query("count items", "", ["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    def describe(self) -> dict[str, Any]:
        self._check_open()
        return self.info.describe(self.count())

    # -- writes --------------------------------------------------------------------------------

    def upsert(
        self,
        items: Sequence[tuple[str, Any, Mapping[str, Any] | None]],
        originals: Sequence[Original | None] | None = None,
    ) -> list[str]:
        """Insert or replace `(id, vector, metadata)` items in one request; return the ids.

        `originals` gives each item (in order) the original to keep, or None; an item
        written without one loses the one it had. An id given twice: the last one wins.
        """
        prepared = checked_items(items, self.dim, self.name, self.max_metadata_bytes)
        if originals is not None and len(originals) != len(items):
            raise ValueError(f"{len(originals)} originals for {len(items)} items")
        kept = list(originals) if originals is not None else [None] * len(items)
        rows: dict[str, dict[str, Any]] = {}
        now = time.time()
        for (item_id, vector, metadata), original in zip(prepared, kept, strict=True):
            rows.pop(item_id, None)  # Milvus keeps the first of two rows with one id
            rows[item_id] = self._row(item_id, vector, metadata, original, now)
        self._check_open()
        deletes = self._deletes
        self._run(
            f"upsert {len(rows)} items",
            lambda c: c.upsert(self.milvus, list(rows.values()), timeout=self._conn.timeout_s),
        )
        with self._deletes_lock:
            self._deletes_covered = max(self._deletes_covered, deletes)
        return [item_id for item_id, _, _ in prepared]

    def _row(
        self,
        item_id: str,
        vector: np.ndarray,
        metadata: dict[str, Any],
        original: Original | None,
        now: float,
    ) -> dict[str, Any]:
        text = dump_metadata(metadata)
        size = len(text.encode())
        if size > MAX_JSON_BYTES:
            raise TooLarge(
                f"metadata is {size} bytes as JSON; the Milvus backend keeps at most "
                f"{MAX_JSON_BYTES}"
            )
        media_type, data = _encode_original(original, item_id)
        return {
            "id": item_id,
            "vector": vector.astype(np.float32).tolist(),
            "metadata": text,
            "seq": _STAMPS.next(),
            "updated_at": now,
            "original_type": media_type,
            "original": data,
        }

    def delete(self, item_id: str) -> None:
        """Delete one item; NotFound if it is absent."""
        expr = _id_list([item_id])
        if expr is None or not self._query("find the item to delete", expr, ["id"]):
            self._check_open()
            raise NotFound(f"no item '{item_id}' in collection '{self.name}'")
        self._run(
            "delete an item",
            lambda c: c.delete(self.milvus, filter=expr, timeout=self._conn.timeout_s),
        )
        with self._deletes_lock:
            self._deletes += 1

    def snapshot(self) -> None:
        """Nothing to do: Milvus keeps its own data."""

    def close(self, snapshot: bool = True) -> None:
        """Forget the collection here (Milvus keeps it)."""
        self._closed = True

    # -- reads ---------------------------------------------------------------------------------

    def get(self, item_id: str) -> Item:
        self._check_open()
        found = self._rows([item_id], [*_FIELDS, "vector"]).get(item_id)
        if found is None:
            raise NotFound(f"no item '{item_id}' in collection '{self.name}'")
        return _item(found, with_vector=True)

    def get_original(self, item_id: str) -> Original:
        """The original kept with an item; NotFound if the item or its original is absent."""
        self._check_open()
        row = self._rows([item_id], ["id", "original_type", "original"]).get(item_id)
        if row is None:
            raise NotFound(f"no item '{item_id}' in collection '{self.name}'")
        media_type, data = str(row["original_type"]), str(row["original"])
        if not media_type:
            raise NotFound(
                f"item '{item_id}' of collection '{self.name}' has no original: it was given "
                "as a vector, or sent with keep_originals false, or CPC_MAX_ORIGINAL_BYTES was 0, "
                f"or it was over the {MAX_ORIGINAL_BYTES} bytes the Milvus backend keeps"
            )
        try:
            return Original(media_type, base64.b64decode(data, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise NotFound(f"item '{item_id}' keeps an unreadable original ({exc})") from None

    def original_types(self, ids: Sequence[str]) -> dict[str, str]:
        """The media type of the original of each of `ids` that has one."""
        self._check_open()
        rows = self._rows(ids, ["id", "original_type"])
        return {i: str(r["original_type"]) for i, r in rows.items() if r["original_type"]}

    def _pages(
        self, fields: Sequence[str], where: str | None = None, batch: int = MAX_TOPK - 1
    ) -> Iterator[list[Mapping[str, Any]]]:
        """Every row (matching `where`), `batch` at a time in id order."""
        after = ""
        while True:
            expr = f"id > {string_literal(after)}"
            if where is not None:
                expr = f"({where}) and {expr}"
            rows = sorted(self._query("read items", expr, fields, batch), key=lambda r: r["id"])
            if not rows:  # only an empty answer is the end (see `_query`)
                return
            yield rows
            after = str(rows[-1]["id"])

    def page(
        self, limit: int, after: str | None = None, *, vectors: bool = False
    ) -> tuple[list[Item], str | None]:
        """At most `limit` items in id order with ids after `after`, and the cursor of the
        next page (the last id returned), None when no item is left after this page.

        Each step reads the items with the smallest ids after the last one seen, so an item
        present for a whole scan is returned exactly once whatever is written meanwhile.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidInput("limit must be a positive whole number")
        if after is not None and not isinstance(after, str):
            raise InvalidInput("after must be the id of an item (the cursor of a page)")
        cursor = after or ""
        if string_literal(cursor) is None:
            raise InvalidInput("after is not a valid item id")
        fields = [*_FIELDS, "vector"] if vectors else list(_FIELDS)
        self._check_open()
        out: list[Mapping[str, Any]] = []
        while len(out) <= limit:  # one more than asked: is anything left after this page?
            want = min(limit + 1 - len(out), MAX_TOPK - 1)
            expr = f"id > {string_literal(cursor)}"
            rows = sorted(self._query("page items", expr, fields, want), key=lambda r: r["id"])
            if not rows:  # only an empty answer is the end (see `_query`)
                break
            out.extend(rows)
            cursor = str(rows[-1]["id"])
        items = [_item(row, with_vector=vectors) for row in out[:limit]]
        return items, (items[-1].id if len(out) > limit else None)

    def sample(self, limit: int) -> tuple[int, list[Item]]:
        """The item count and at most `limit` items with their vectors, spread evenly over
        the collection in the order they were written (the same items for the same state)."""
        if limit < 1:
            raise InvalidInput("limit must be a positive whole number")
        self._check_open()
        stamps = sorted(
            (int(r["seq"]), str(r["id"])) for rows in self._pages(["id", "seq"]) for r in rows
        )
        count = len(stamps)
        if count > limit:
            picks = np.linspace(0, count - 1, num=limit).round().astype(np.int64)
            stamps = [stamps[i] for i in picks.tolist()]
        ids = [item_id for _, item_id in stamps]
        rows = self._rows(ids, [*_FIELDS, "vector"])
        return count, [_item(rows[i], with_vector=True) for i in ids if i in rows]

    # -- search --------------------------------------------------------------------------------

    def _search_params(self) -> dict[str, Any]:
        if self.info.index == "ivf":
            return {"metric_type": "IP", "params": {"nprobe": self.index_params["nprobe"]}}
        return {"metric_type": "IP", "params": {}}

    def _search(self, query: np.ndarray, limit: int, expr: str | None) -> list[SearchHit]:
        found = self._run(
            "search",
            lambda c: c.search(
                self.milvus,
                data=[query.tolist()],
                filter=expr or "",
                limit=limit,
                output_fields=["metadata"],
                search_params=self._search_params(),
                consistency_level=self._read_level(),
                timeout=self._conn.timeout_s,
            ),
        )
        return [_hit(hit) for hit in found[0]] if found else []

    def search(self, vector: object, k: int = 10, filter: object = None) -> list[SearchHit]:
        """The `k` items most similar to `vector` (cosine), best first, matching `filter`
        (a filter object as JSON, or a parsed `filters.Condition`)."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InvalidInput("k must be a positive whole number")
        if k > MAX_TOPK:
            raise InvalidInput(f"k must be at most {MAX_TOPK} with the Milvus backend")
        query = prepare_vector(vector, self.dim, self.name)
        cond = as_condition(filter, self.filter_limits)
        self._check_open()
        if cond is None:
            return self._search(query, k, None)
        expr = compile_filter(cond)
        text = expr.text if expr is not None else None
        limit = k if expr is not None and expr.exact else min(MAX_TOPK, max(4 * k, 64))
        while True:
            raw = self._search(query, limit, text)
            hits = [h for h in raw if matches(cond, h.metadata)]
            if len(hits) >= k:
                return hits[:k]
            exhausted = len(raw) < limit
            if exhausted and self.info.index == "flat":
                return hits  # an exact search saw every candidate
            if exhausted or limit >= MAX_TOPK:
                return self._scan(query, k, cond, text)
            limit = min(MAX_TOPK, limit * 4)

    def _scan(
        self, query: np.ndarray, k: int, cond: Condition, expr: str | None
    ) -> list[SearchHit]:
        """The exact top `k` matches, scoring every item that `expr` selects."""
        best: list[tuple[float, str, SearchHit]] = []  # a min-heap of the k best
        for rows in self._pages(["id", "vector", "metadata"], expr, SCAN_BATCH):
            vectors = np.asarray([r["vector"] for r in rows], dtype=np.float32)
            scores = vectors @ query
            for row, score in zip(rows, scores.tolist(), strict=True):
                metadata = row["metadata"]
                if isinstance(metadata, str | bytes):
                    metadata = json.loads(metadata)
                if not matches(cond, metadata):
                    continue
                hit = SearchHit(str(row["id"]), float(np.clip(score, -1.0, 1.0)), dict(metadata))
                entry = (hit.score, hit.id, hit)
                if len(best) < k:
                    heapq.heappush(best, entry)
                elif entry[:2] > best[0][:2]:
                    heapq.heapreplace(best, entry)
        return [hit for _, _, hit in sorted(best, key=lambda e: (-e[0], e[1]))]


# --- every collection ----------------------------------------------------------------------------


class MilvusCollections:
    """Every collection kept in one Milvus server (the Milvus `CollectionManager`).

    Thread-safe; many processes may share one server: each call looks in
    Milvus, so a collection made or deleted by another worker is seen at once.
    """

    def __init__(
        self,
        uri: str,
        *,
        token: str = "",
        db_name: str = "",
        prefix: str = DEFAULT_PREFIX,
        consistency: str = "Strong",
        max_metadata_bytes: int = 65536,
        index_params: Mapping[str, Mapping[str, Any]] | None = None,
        filter_limits: FilterLimits | None = None,
        timeout_s: float = 10.0,
        connection: MilvusConnection | None = None,
    ) -> None:
        if consistency not in CONSISTENCY_LEVELS:
            raise ValueError(
                f"unknown Milvus consistency {consistency!r}; one of {CONSISTENCY_LEVELS}"
            )
        if not prefix or not (prefix[0].isalpha() or prefix[0] == "_"):
            raise ValueError(f"a Milvus collection prefix starts with a letter: {prefix!r}")
        if len(prefix) > 100 or not all(
            ch.isascii() and (ch.isalnum() or ch == "_") for ch in prefix
        ):
            raise ValueError(
                f"a Milvus collection prefix is at most 100 letters, digits or '_': {prefix!r}"
            )
        if connection is None and importlib.util.find_spec("pymilvus") is None:
            raise RuntimeError("the Milvus backend needs pymilvus: pip install pymilvus")
        self.uri = uri
        self.prefix = prefix
        self.consistency = consistency
        self.max_metadata_bytes = max_metadata_bytes
        self.filter_limits = filter_limits or FilterLimits()
        self.ivf_params = self._ivf_params(index_params or {})
        self.index_params = {"ivf": dict(self.ivf_params)}
        self.connection = connection or MilvusConnection(
            uri, token=token, db_name=db_name, timeout_s=timeout_s
        )
        self._lock = threading.RLock()
        self._collections: dict[str, MilvusCollection] = {}

    @staticmethod
    def _ivf_params(index_params: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
        given = dict(index_params.get("ivf", {}))
        out = dict(DEFAULT_IVF)
        for key, value in given.items():
            if key not in out:
                logger.warning("the Milvus backend ignores the ivf option %r", key)
            elif value is not None:
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError(f"ivf {key} must be a positive whole number, not {value!r}")
                out[key] = value
        return out

    # -- plumbing ------------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[Any], T]) -> T:
        try:
            return self.connection.call(what, fn)
        except (CollectionMissing, CollectionNotLoaded) as exc:
            raise Unavailable(f"the Milvus vector database failed to {what}: {exc}") from None

    def _described(self, name: str) -> Described | None:
        """What Milvus says collection `name` is, or None if it has no such collection."""
        milvus = milvus_name(self.prefix, name)
        timeout = self.connection.timeout_s

        def describe(client: Any) -> Any:
            # asked first: pymilvus logs a describe of a missing collection as an error
            if not client.has_collection(milvus, timeout=timeout):
                return None
            return client.describe_collection(milvus, timeout=timeout)

        try:
            found = self.connection.call(f"describe collection '{name}'", describe)
        except CollectionMissing:
            return None
        if found is None:
            return None
        try:
            described = parse_description(str(found.get("description", "")))
        except ValueError as exc:
            logger.warning("ignoring Milvus collection %s: %s", milvus, exc)
            return None
        return described if described.info.name == name else None

    def _adopt(self, described: Described, loading: bool = False) -> MilvusCollection:
        """The collection object for `described`, the cached one while it is the same
        (`loading`: a new one whose load is started, not awaited)."""
        name = described.info.name
        with self._lock:
            cached = self._collections.get(name)
            if cached is not None and cached.token == described.token and not cached._closed:
                return cached
            if cached is not None:
                cached.close()
            coll = MilvusCollection(
                described,
                milvus_name(self.prefix, name),
                self.connection,
                consistency=self.consistency,
                max_metadata_bytes=self.max_metadata_bytes,
                filter_limits=self.filter_limits,
                on_gone=self._forget,
                loading=loading,
            )
            self._collections[name] = coll
            return coll

    def _forget(self, coll: MilvusCollection) -> None:
        with self._lock:
            if self._collections.get(coll.name) is coll:
                del self._collections[coll.name]

    def _milvus_names(self) -> list[str]:
        """The collection names that Milvus holds under this prefix, sorted."""
        listed = self._call(
            "list collections", lambda c: c.list_collections(timeout=self.connection.timeout_s)
        )
        names = (service_name(self.prefix, str(m)) for m in listed)
        return sorted(n for n in names if n is not None)

    def _loaded(self, coll: MilvusCollection) -> bool:
        def state(client: Any) -> str:
            return str(client.get_load_state(coll.milvus).get("state", ""))

        found = self._call(f"ask whether collection '{coll.name}' is loaded", state)
        return found.endswith("Loaded") and "NotLoad" not in found

    # -- the manager's contract ----------------------------------------------------------------

    def open_all(self) -> None:
        """Find every collection in Milvus and make sure each is loaded for reading."""
        for name in self._milvus_names():
            described = self._described(name)
            if described is None:
                continue
            coll = self._adopt(described)
            if not self._loaded(coll):
                self._call(f"load collection '{name}'", coll._load)
            logger.info("opened Milvus collection '%s'", name)  # its count: the items gauge

    def create(
        self,
        name: str,
        model: str,
        dim: int,
        index: str = "flat",
        pooling: VectorPooling = "mean",
    ) -> MilvusCollection:
        """A new empty collection of `dim`-value vectors pooled with `pooling`; Conflict if
        the name is taken."""
        check_new_collection(name, model, dim, index, pooling, max_dim=(MAX_DIM, "Milvus backend"))
        with self._lock:
            if self._described(name) is not None:
                raise Conflict(f"collection '{name}' already exists")
            created = datetime.now(UTC).isoformat(timespec="seconds")
            info = CollectionInfo(
                name, model, dim, index, pooling, created, 1 if pooling == "mean" else 2
            )
            params = dict(self.ivf_params) if index == "ivf" else {}
            described = Described(info, uuid.uuid4().hex, params)
            self._create_in_milvus(described)
            coll = self._adopt(described, loading=True)
        logger.info(
            "created Milvus collection '%s' (model %s, %s pooling, dim %d, %s)",
            name,
            model,
            pooling,
            dim,
            index,
        )
        return coll

    def _create_in_milvus(self, described: Described) -> None:
        info = described.info
        milvus = milvus_name(self.prefix, info.name)

        def create(client: Any) -> None:
            timeout = max(self.connection.timeout_s, CREATE_TIMEOUT_S)
            client.create_collection(
                milvus,
                schema=schema(client, described),
                consistency_level=self.consistency,
                timeout=timeout,
            )
            # An empty collection has no segment to index: its index exists once this call
            # returns (pymilvus would poll for the build, sleeping 0.5 s first). The load
            # (about 2 s even when empty) goes on in Milvus while the caller carries on, and
            # the collection's first call awaits it; so the collections of several bundles
            # at start-up load at the same time instead of one after another.
            client.create_index(
                milvus, vector_index(client, described), timeout=timeout, sync=False
            )
            client.load_collection(milvus, timeout=timeout, _async=True)

        try:
            self._call(f"create collection '{info.name}'", create)
        except Unavailable:
            # another worker made it meanwhile: Milvus refuses a second description
            found = self._described(info.name)
            if found is not None and found.token != described.token:
                raise Conflict(f"collection '{info.name}' already exists") from None
            raise

    def get(self, name: str) -> MilvusCollection:
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise NotFound(f"no collection named '{name}'")
        described = self._described(name)
        if described is None:
            with self._lock:
                gone = self._collections.pop(name, None)
            if gone is not None:
                gone.close()
            raise NotFound(f"no collection named '{name}'")
        return self._adopt(described)

    def delete(self, name: str) -> None:
        """Drop the collection and its items; NotFound if there is none."""
        coll = self.get(name)
        self._call(
            f"delete collection '{name}'",
            lambda c: c.drop_collection(coll.milvus, timeout=self.connection.timeout_s),
        )
        coll.close()
        self._forget(coll)
        logger.info("deleted Milvus collection '%s'", name)

    def list(self) -> list[MilvusCollection]:
        """Every collection, by name (what Milvus holds now)."""
        out = []
        names = self._milvus_names()
        for name in names:
            described = self._described(name)
            if described is not None:
                out.append(self._adopt(described))
        with self._lock:
            for name in set(self._collections) - set(names):
                self._collections.pop(name).close()
        return out

    def ensure(self, name: str, model: str, width: int) -> MilvusCollection:
        """The collection `name` of `model` (context layer `width` values wide), created
        (flat, mean pooled) if absent; Conflict if it holds other vectors."""
        try:
            coll = self.get(name)
        except NotFound:
            try:
                return self.create(name, model, width)
            except Conflict:
                coll = self.get(name)  # another worker made it first
        dim = pooled_dim(width, coll.info.pooling)
        if coll.info.model != model or coll.dim != dim:
            raise Conflict(
                f"collection '{name}' holds model '{coll.info.model}' vectors of dim {coll.dim}, "
                f"but model '{model}' gives dim {dim} ({coll.info.pooling} pooling); delete the "
                "collection or rename the model"
            )
        return coll

    def ping(self) -> None:
        """Unavailable unless Milvus answers now (for a readiness check)."""
        self._call("answer", lambda c: c.list_collections(timeout=self.connection.timeout_s))

    def unavailable(self) -> dict[str, str]:
        """Nothing is kept out of service here: Milvus answers for its own files."""
        return {}

    def storage_state(self, probe: bool = False) -> dict[str, Any]:
        """Milvus keeps the data: its own state is what /ready's ping reports."""
        return {
            "backend": "milvus",
            "writable": None,
            "detail": None,
            "since": None,
            "unavailable": {},
        }

    def snapshot_all(self) -> None:
        """Nothing to do: Milvus keeps its own data (the embedded manager saves indexes)."""

    def close_all(self) -> None:
        """Forget every collection and close the connection (on shutdown)."""
        with self._lock:
            collections = list(self._collections.values())
            self._collections.clear()
        for coll in collections:
            coll.close()
        self.connection.close()
