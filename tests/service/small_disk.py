"""A small tmpfs of its own, for the tests of what a full or read-only disk does.

Mounting needs root (`.ci/run` runs as root); elsewhere, or where the container
does not allow `mount`, the tests that need one skip and say why.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def mounted_tmpfs(path: Path, size: str, *, read_only: bool = False) -> Iterator[Path]:
    """A tmpfs of `size` (mount's syntax: "4m") at `path`, unmounted at the end."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (.ci/run runs as root)")
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"this machine does not allow mounting a tmpfs: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder: Path, name: str = "ballast") -> Path:
    """Write zeros into `folder` until the file system is full; return the file."""
    path = folder / name
    with open(path, "ab", buffering=0) as fh:
        for block in (65536, 4096, 512, 1):  # then the last few bytes
            with contextlib.suppress(OSError):
                while True:
                    fh.write(b"\0" * block)
    return path
