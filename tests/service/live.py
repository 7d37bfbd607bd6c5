"""A real `cpc-embed serve` process on 127.0.0.1, for the tests that need one.

`LiveServer` starts `python -m service.cli serve` (what `make serve` and the
Docker image run) on a free loopback port with the tiny test bundles, logs
to a file, and offers what the soak and shutdown tests look at: readiness,
the resident memory of the process (VmRSS from /proc/<pid>/status), the
JSON log lines, SIGTERM and the exit status.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from service.api.app import create_app
from service.config import Settings

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def app_in_thread(settings: Settings) -> Iterator[str]:
    """`create_app(settings)` on a uvicorn server in a thread on 127.0.0.1: yields host:port."""
    port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


class LiveServer:
    """`cpc-embed serve` in a child process; `env` adds CPC_* settings."""

    def __init__(self, models_dir: Path, data_dir: Path, log: Path, **env: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("CPC_")}
        child_env.update(
            CPC_MODELS_DIR=str(models_dir), CPC_DATA_DIR=str(data_dir), CPC_WARMUP="false"
        )
        child_env.update(env)
        cmd = [sys.executable, "-m", "service.cli", "serve"]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port), "--log-level", "info"]
        with log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=child_env, stdout=out, stderr=out)

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the server exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                if httpx.get(f"{self.base}/ready", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        pytest.fail(f"the server was not ready within {timeout} s:\n{self.log_text()}")

    def rss_kib(self) -> int:
        """Resident memory of the server process, in KiB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS line in /proc/<pid>/status")

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def log_records(self) -> list[dict[str, Any]]:
        """The JSON log lines (anything else in the file is left out)."""
        records = []
        for line in self.log_text().splitlines():
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                records.append(value)
        return records

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        """Make sure the process is gone (SIGKILL if it still runs)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
