"""One connection to a Milvus server, and pymilvus's errors as the service's own.

`MilvusConnection.call(what, fn)` runs `fn(client)` with a `pymilvus.MilvusClient`
made on first use. No pymilvus exception leaves it: a collection Milvus does not
know raises `CollectionMissing` (the caller says which, as NotFound), one not
loaded `CollectionNotLoaded`, and everything else `service.errors.Unavailable`
(503) with a detail that says what failed. When the server cannot be reached
the client is dropped and calls fail at once, with the seconds to wait as
`retry_after_s`, until a backoff (doubling from `backoff_s[0]` up to
`backoff_s[1]`) has passed; the next call then connects anew.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from service.errors import Unavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")

COLLECTION_NOT_FOUND = 100  # Milvus's error codes
COLLECTION_NOT_LOADED = 101
CONNECT_FAILED = 2  # pymilvus: the server cannot be reached
_UNREACHABLE_WORDS = ("unavailable", "deadline", "timeout", "timed out", "connection", "connect")
_MAX_REASON = 300


class CollectionMissing(Exception):
    """Milvus has no collection of that name (deleted, or never made)."""


class CollectionNotLoaded(Exception):
    """The collection exists but is not loaded into memory, so it cannot be read."""


def safe_address(uri: str) -> str:
    """`uri` without credentials or a path, to be shown in errors and logs."""
    parts = urlsplit(uri if "://" in uri else f"http://{uri}")
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}:{parts.port}" if parts.port else f"{parts.scheme}://{host}"


def _reason(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    text = " ".join(str(message).split())
    return text if len(text) <= _MAX_REASON else text[:_MAX_REASON] + "..."


def _unreachable(exc: BaseException) -> bool:
    """Whether `exc` says the server could not be reached (rather than refused the call)."""
    if getattr(exc, "code", None) == CONNECT_FAILED:
        return True
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & {"RpcError", "ConnectError", "MilvusUnavailableException"}:
        return True
    if names & {"ConnectionNotExistException", "OSError", "TimeoutError"}:
        return True
    return any(word in _reason(exc).lower() for word in _UNREACHABLE_WORDS)


def _default_factory(uri: str, token: str, db_name: str, timeout_s: float) -> Any:
    from pymilvus import MilvusClient

    # pymilvus configures its logger on import and logs every failed call as an ERROR with
    # a traceback; this module reports each failure once, as a warning, so it stays quiet.
    logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
    return MilvusClient(uri=uri, token=token, db_name=db_name, timeout=timeout_s, dedicated=True)


class MilvusConnection:
    """A lazily made, re-made-after-failure pymilvus client. Thread-safe."""

    def __init__(
        self,
        uri: str,
        *,
        token: str = "",
        db_name: str = "",
        timeout_s: float = 10.0,
        backoff_s: tuple[float, float] = (0.5, 30.0),
        factory: Callable[[str, str, str, float], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.uri = uri
        self.address = safe_address(uri)
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self._token = token
        self._db_name = db_name
        self._factory = factory or _default_factory
        self._clock = clock
        self._lock = threading.Lock()
        self._client: Any = None
        self._failures = 0
        self._retry_at = 0.0
        self._last_reason = ""
        self._closed = False

    # -- the client ----------------------------------------------------------------------------

    def _get_client(self) -> Any:
        with self._lock:
            if self._closed:
                raise Unavailable(f"the connection to Milvus at {self.address} is closed")
            if self._client is not None:
                return self._client
            wait = self._retry_at - self._clock()
            if wait > 0:
                raise Unavailable(
                    f"the Milvus vector database at {self.address} is unreachable "
                    f"({self._last_reason}); the next try is in {wait:.1f} s",
                    retry_after_s=wait,
                )
            try:
                self._client = self._factory(self.uri, self._token, self._db_name, self.timeout_s)
            except Exception as exc:
                raise self._failed_locked("connect", exc) from None
            if self._failures:
                logger.info("connected to Milvus at %s again", self.address)
            self._failures = 0
            return self._client

    def _failed_locked(self, what: str, exc: BaseException) -> Unavailable:
        """Drop the client and start (or lengthen) the backoff; the lock is held."""
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
        self._failures += 1
        first, most = self.backoff_s
        wait = min(most, first * 2 ** (self._failures - 1))
        self._retry_at = self._clock() + wait
        self._last_reason = _reason(exc)
        logger.warning(
            "Milvus at %s is unreachable (%s: %s); next try in %.1f s",
            self.address,
            what,
            self._last_reason,
            wait,
        )
        return Unavailable(
            f"the Milvus vector database at {self.address} is unreachable "
            f"({self._last_reason}); try again in {wait:.1f} s",
            retry_after_s=wait,
        )

    # -- calls ---------------------------------------------------------------------------------

    def call(self, what: str, fn: Callable[[Any], T]) -> T:
        """`fn(client)`, with its failures turned into the exceptions of the module docstring;
        `what` names the operation in errors ("search collection 'x'")."""
        client = self._get_client()
        try:
            return fn(client)
        except Exception as exc:
            raise self._translate(what, client, exc) from None

    def _translate(self, what: str, client: Any, exc: Exception) -> Exception:
        code = getattr(exc, "code", None)
        if code == COLLECTION_NOT_FOUND:
            return CollectionMissing(_reason(exc))
        if code == COLLECTION_NOT_LOADED or "not loaded" in _reason(exc).lower():
            return CollectionNotLoaded(_reason(exc))
        if _unreachable(exc):
            with self._lock:
                if self._client is client:
                    return self._failed_locked(what, exc)
            return Unavailable(
                f"the Milvus vector database at {self.address} is unreachable ({_reason(exc)})",
                retry_after_s=self.backoff_s[0],
            )
        logger.warning("Milvus at %s failed to %s: %r", self.address, what, exc)
        return Unavailable(f"the Milvus vector database failed to {what}: {_reason(exc)}")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
