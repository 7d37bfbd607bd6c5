"""Who may write a data folder: servers share it, `cpc-embed index` needs it alone.

A server keeps each collection's FAISS index in memory, built from the store
when it starts; rows that another process writes to the store (SQLite in WAL
mode is safe for that) stay invisible to it until it restarts. So a server
holds a shared lock on `<data_dir>/.cpc-embed.lock` while it runs, and
`cpc-embed index` takes an exclusive one: it refuses to run beside a server,
and a server refuses to start while an `index` run writes. The locks are
`flock` locks, which the system drops when the process ends, even on SIGKILL,
so a crash never leaves a stale lock behind. Where `fcntl` does not exist
(Windows), no lock is taken.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import TracebackType

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

LOCK_FILE = ".cpc-embed.lock"


class DataDirBusy(RuntimeError):
    """The data folder is locked by another process in a way that excludes this one."""


class DataDirLock:
    """A shared (server) or exclusive (`cpc-embed index`) lock on a data folder."""

    def __init__(self, data_dir: Path, *, exclusive: bool) -> None:
        self.path = Path(data_dir) / LOCK_FILE
        self.exclusive = exclusive
        self._fd: int | None = None

    def acquire(self) -> DataDirLock:
        """Take the lock without waiting; DataDirBusy says who holds it."""
        if fcntl is None or self._fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        mode = fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataDirBusy(self._busy_message()) from None
        self._fd = fd
        return self

    def _busy_message(self) -> str:
        folder = self.path.parent
        if self.exclusive:
            return (
                f"a cpc-embed server is using {folder}: stop it before `cpc-embed index` "
                "(or pass --force and restart the server afterwards, since a running server "
                "does not see items written by another process)"
            )
        return (
            f"`cpc-embed index` is writing to {folder} (CPC_DATA_DIR); start the server "
            "once it has finished"
        )

    def release(self) -> None:
        if self._fd is not None and fcntl is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
        self._fd = None

    def __enter__(self) -> DataDirLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
