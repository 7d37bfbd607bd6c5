"""Whether the data folder takes durable writes now, and what a failed write means.

Every store write that the disk refuses comes through `StorageHealth.error_for`:
a full disk or quota (SQLITE_FULL, ENOSPC, EDQUOT) and a read-only file system
become `InsufficientStorage` (507) naming the data folder, any other I/O error
`Unavailable` (503). Nothing of such a write is kept (SQLite rolls the whole
transaction back), so the client may send it again once space is freed. The
folder is marked not writable until a write succeeds again, or until `probe`
(asked by /ready while writes fail) manages to write and remove a file of
`probe_bytes`: no restart is needed. What an operator sees and does:
docs/operations.md.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from service.errors import CPCError, InsufficientStorage, Unavailable

logger = logging.getLogger(__name__)

Reason = Literal["full", "read_only", "io"]
Operation = Literal["write", "create", "snapshot"]

PROBE_FILE = ".cpc-embed.probe"
_SQLITE_FULL = 13  # primary result codes (the low byte of an extended one)
_SQLITE_IOERR = 10
_SQLITE_READONLY = 8
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def storage_reason(exc: BaseException) -> Reason | None:
    """What kind of storage failure `exc` is, or None when it is not one."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        primary = None if code is None else code & 0xFF
        if primary == _SQLITE_FULL or "database or disk is full" in str(exc):
            return "full"
        if primary == _SQLITE_READONLY:
            return "read_only"
        if primary == _SQLITE_IOERR or "disk I/O error" in str(exc):
            return "io"
        return None
    if isinstance(exc, OSError):
        if exc.errno in _FULL_ERRNOS:
            return "full"
        if exc.errno == errno.EROFS:
            return "read_only"
        if exc.errno == errno.EIO:
            return "io"
    return None


def _write_probe(folder: Path, size: int) -> OSError | None:
    """Write `size` bytes (fsynced) to a probe file in `folder` and remove it; the error
    that refused it, or None."""
    path = folder / PROBE_FILE
    try:
        with open(path, "wb") as fh:
            fh.write(b"\0" * size)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        return exc
    finally:
        with contextlib.suppress(OSError):  # a read-only folder refuses even this
            path.unlink(missing_ok=True)
    return None


def data_dir_problem(data_dir: Path) -> str | None:
    """Why `data_dir` cannot hold collections (one line), or None; a missing folder is
    created when its parent exists (a first start), and a file is written and removed in
    it to see that it takes writes."""
    where = f"the data folder {data_dir} (CPC_DATA_DIR)"
    if not data_dir.exists():
        if not data_dir.parent.is_dir():
            return f"{where} does not exist, nor does {data_dir.parent}: create it or mount it"
        try:
            data_dir.mkdir()
        except OSError as exc:
            return f"{where} does not exist and cannot be created: {exc.strerror}"
    if not data_dir.is_dir():
        return f"{where} is not a folder"
    refused = _write_probe(data_dir, 0)
    if refused is not None:
        read_only = refused.errno in (errno.EROFS, errno.EACCES)
        return f"{where} {'is read-only' if read_only else 'cannot be written'}: {refused.strerror}"
    return None


# A refused write, by reason: what the folder is, and what to do. Full and read-only are
# 507 (it cannot be stored); any other I/O error 503 (it may pass).
_REFUSALS: dict[Reason, tuple[str, str]] = {
    "full": ("is full", "free space there and send it again (no restart is needed)"),
    "read_only": ("is read-only", "make it writable and send it again"),
    "io": ("failed to write", "check the disk and send it again"),
}


class StorageHealth:
    """The write state of one data folder, shared by all of its collections. Thread-safe.

    `listeners` are called with `(operation, reason)` on every storage failure (the
    app counts them in cpc_storage_failures_total).
    """

    def __init__(self, folder: Path, probe_bytes: int = 1 << 20) -> None:
        self.folder = Path(folder)
        self.probe_bytes = probe_bytes
        self.listeners: list[Callable[[Operation, Reason], None]] = []
        self._lock = threading.Lock()
        self._problem: str | None = None
        self._since: float | None = None

    @property
    def writable(self) -> bool:
        return self._problem is None

    def error_for(self, exc: BaseException, operation: Operation = "write") -> CPCError | None:
        """The domain error of an operation that failed with `exc` (and the folder marked
        not writable), or None when `exc` is not a storage failure."""
        reason = storage_reason(exc)
        if reason is None:
            return None
        state, advice = _REFUSALS[reason]
        cause = f" ({exc})" if reason == "io" else ""
        detail = (
            f"the data folder {self.folder} (CPC_DATA_DIR) {state}{cause}: nothing of this "
            f"write was kept; {advice}"
        )
        error: CPCError = (
            Unavailable(detail, retry_after_s=5) if reason == "io" else InsufficientStorage(detail)
        )
        self._record(operation, reason, detail)
        return error

    def snapshot_failed(self, exc: BaseException) -> None:
        """Count a snapshot the disk refused (the store holds everything; it is retried)."""
        reason = storage_reason(exc) or "io"
        for listener in self.listeners:
            listener("snapshot", reason)

    def _record(self, operation: Operation, reason: Reason, detail: str) -> None:
        with self._lock:
            first = self._problem is None
            self._problem = detail
            if first:
                self._since = time.time()
        if first:
            logger.error("writes fail: %s", detail)
        for listener in self.listeners:
            listener(operation, reason)

    def succeeded(self) -> None:
        """A durable write went through: the folder takes writes again."""
        if self._problem is None:
            return
        with self._lock:
            was, self._problem, self._since = self._problem, None, None
        if was is not None:
            logger.warning("the data folder %s takes writes again", self.folder)

    def probe(self) -> bool:
        """Whether the folder takes writes; while it does not, try to write (and fsync and
        remove) `probe_bytes` in it, and mark it writable if that works."""
        if self._problem is None:
            return True
        if _write_probe(self.folder, self.probe_bytes) is not None:
            return False
        self.succeeded()
        return True

    def describe(self) -> dict[str, Any]:
        """The `storage` field of /ready."""
        with self._lock:  # detail and since of the same refusal
            problem, since = self._problem, self._since
        return {
            "backend": "embedded",
            "writable": problem is None,
            "detail": problem,
            "since": None
            if since is None
            else datetime.fromtimestamp(since, UTC).isoformat(timespec="seconds"),
        }
