"""The collection backend interface: what the API and the operations ask of collections.

Two backends implement it: the embedded one (`manager.CollectionManager` of
`collection.Collection`s: SQLite + FAISS in this process) and Milvus
(`milvus.MilvusCollections` of `milvus.MilvusCollection`s). The HTTP contract
is the same on both; docs/api.md says where their guarantees differ.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from service.inference.pooling import VectorPooling
from service.vectors.collection import SearchHit
from service.vectors.store import CollectionInfo, Item, Original


class CollectionHandle(Protocol):
    """One collection."""

    info: CollectionInfo
    cheap_count: bool  # whether count() is cheap enough to follow every write

    @property
    def name(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def count(self) -> int: ...

    def describe(self) -> dict[str, Any]: ...

    def upsert(
        self,
        items: Sequence[tuple[str, Any, Mapping[str, Any] | None]],
        originals: Sequence[Original | None] | None = None,
    ) -> list[str]: ...

    def delete(self, item_id: str) -> None: ...

    def get(self, item_id: str) -> Item: ...

    def get_original(self, item_id: str) -> Original: ...

    def original_types(self, ids: Sequence[str]) -> dict[str, str]: ...

    def sample(self, limit: int) -> tuple[int, list[Item]]: ...

    def search(self, vector: object, k: int = 10, filter: object = None) -> list[SearchHit]: ...

    def page(self, limit: int, after: str | None = None) -> tuple[list[Item], str | None]: ...


class CollectionBackend(Protocol):
    """Every collection of one store: a data folder, or a Milvus database."""

    def open_all(self) -> None: ...

    def create(
        self,
        name: str,
        model: str,
        dim: int,
        index: str = "flat",
        pooling: VectorPooling = "mean",
    ) -> CollectionHandle: ...

    def get(self, name: str) -> CollectionHandle: ...

    def delete(self, name: str) -> None: ...

    def list(self) -> Sequence[CollectionHandle]: ...

    def ensure(self, name: str, model: str, width: int) -> CollectionHandle: ...

    def ping(self) -> None:
        """Unavailable unless the backend can serve now (for /ready)."""

    def unavailable(self) -> dict[str, str]:
        """The collections kept out of service (damaged files), and why."""
        ...

    def storage_state(self, probe: bool = False) -> dict[str, Any]:
        """The `storage` field of /ready: whether writes can be made durable now (`probe`:
        while they cannot, try again)."""
        ...

    def snapshot_all(self) -> None: ...

    def close_all(self) -> None: ...
