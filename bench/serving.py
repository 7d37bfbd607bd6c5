"""Shared pieces of the serving benchmarks: the service as a subprocess, a load generator.

`ServiceProcess` starts `cpc-embed serve` (as `python -m service.cli serve`,
the same code) on 127.0.0.1 and a free port, with CPC_MODELS_DIR set and a
fresh CPC_DATA_DIR in a temporary folder; every other CPC_* setting comes from
the caller's environment, so `CPC_BATCH_WAIT_MS=1 python -m bench.embed` runs
the service with that setting. It waits for `/ready`, and stops the server
with SIGTERM (its graceful shutdown) and, after a grace period, SIGKILL.

`closed_loop` is the load generator: C concurrent clients on one httpx
connection pool, each sending its next request as soon as the previous one
answered, until a deadline or a request count is reached (both always
bounded). Latencies are measured per successful request; any other status or
transport error counts as an error. `/proc` readers give the server's RSS and
CPU time; `scrape` reads a family of the Prometheus text of `/metrics`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import httpx
import numpy as np

from bench.machine import machine_info
from bench.rawhttp import RawHttpClient, RawHttpError

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
JSON_HEADERS = {"content-type": "application/json"}
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def proc_status(pid: int) -> dict[str, int]:
    """The kB fields of /proc/<pid>/status (VmRSS, VmHWM, ...)."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            parts = value.split()
            if len(parts) == 2 and parts[1] == "kB":
                out[key] = int(parts[0])
    return out


def rss_kb(pid: int) -> int:
    """Resident set size of a process, in kB."""
    return proc_status(pid)["VmRSS"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def latency_ms(latencies_s: list[float]) -> dict[str, float | None]:
    """p50, p95, p99 and mean of latencies in seconds, as milliseconds."""
    if not latencies_s:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "mean_ms": None}
    ms = np.asarray(latencies_s) * 1000.0
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {
        "p50_ms": round(float(p50), 3),
        "p95_ms": round(float(p95), 3),
        "p99_ms": round(float(p99), 3),
        "mean_ms": round(float(ms.mean()), 3),
    }


def scrape(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Samples of metric `name` in Prometheus text format, keyed by their sorted labels."""
    out: dict[tuple[tuple[str, str], ...], float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or match.group(1) != name:
            continue
        labels = tuple(sorted(_LABEL.findall(match.group(2) or "")))
        out[labels] = float(match.group(3))
    return out


def batch_histogram(text: str, model: str) -> tuple[float, float]:
    """(sum, count) of `cpc_inference_batch_size` for `model` (0, 0 before any call)."""
    key = (("model", model),)
    total = scrape(text, "cpc_inference_batch_size_sum").get(key, 0.0)
    count = scrape(text, "cpc_inference_batch_size_count").get(key, 0.0)
    return total, count


def auth_headers() -> dict[str, str]:
    """The bearer header the service wants when CPC_API_KEY is set in the environment."""
    key = os.environ.get("CPC_API_KEY")
    return {"authorization": f"Bearer {key}"} if key else {}


class ServiceProcess:
    """`cpc-embed serve` in a subprocess on 127.0.0.1; a context manager that stops it."""

    def __init__(
        self,
        models_dir: Path,
        *,
        log_level: str = "warning",
        start_timeout_s: float = 180.0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.models_dir = Path(models_dir).resolve()
        self.log_level = log_level
        self.start_timeout_s = start_timeout_s
        self.extra_env = env or {}
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("the service is not running")
        return self._proc.pid

    @property
    def log_path(self) -> Path:
        assert self._tmp is not None
        return Path(self._tmp.name) / "server.log"

    def log_tail(self, lines: int = 10) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except (OSError, AssertionError):
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def start(self) -> ServiceProcess:
        """Start the server and wait until /ready answers 200 (a few tries for a port race)."""
        self._tmp = tempfile.TemporaryDirectory(prefix="cpc-bench-")
        try:
            if self._start():
                return self
        except BaseException:
            self.stop(grace_s=5.0)
            raise
        tail = self.log_tail()
        self.stop(grace_s=5.0)
        raise RuntimeError(f"the service did not become ready; its log ends:\n{tail}")

    def _start(self) -> bool:
        assert self._tmp is not None
        for attempt in range(3):
            self.port = free_port()
            env = {
                **os.environ,
                **self.extra_env,
                "CPC_MODELS_DIR": str(self.models_dir),
                "CPC_DATA_DIR": str(Path(self._tmp.name) / "data"),
            }
            cmd = [sys.executable, "-m", "service.cli", "serve", "--host", HOST]
            cmd += ["--port", str(self.port), "--log-level", self.log_level]
            with open(self.log_path, "ab") as log:
                self._proc = subprocess.Popen(
                    cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            started = time.perf_counter()
            if self._wait_ready():
                logger.info(
                    "service pid %d ready on %s in %.1f s",
                    self._proc.pid,
                    self.url,
                    time.perf_counter() - started,
                )
                return True
            if self._proc.poll() is None or "address already in use" not in self.log_tail().lower():
                return False  # still starting after start_timeout_s, or failed for good
            logger.warning("port %d was taken (try %d); another port", self.port, attempt + 1)
        return False

    def _wait_ready(self) -> bool:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout_s
        with httpx.Client(base_url=self.url, timeout=5.0) as client:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    return False
                with contextlib.suppress(httpx.HTTPError):
                    if client.get("/ready").status_code == 200:
                        return True
                time.sleep(0.1)
        return False

    def get(self, path: str) -> httpx.Response:
        with httpx.Client(base_url=self.url, timeout=30.0, headers=auth_headers()) as client:
            return client.get(path)

    def stop(self, grace_s: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace_s`; returns the exit status."""
        proc, self._proc = self._proc, None
        code = None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(grace_s)
                except subprocess.TimeoutExpired:
                    logger.warning("the service ignored SIGTERM for %.0f s; killing it", grace_s)
                    proc.kill()
                    proc.wait(10)
            code = proc.returncode
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        return code

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass
class LoadResult:
    """What one closed-loop run measured."""

    concurrency: int
    requests: int = 0
    errors: int = 0
    elapsed_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)
    client_cpu_s: float = 0.0

    def summary(self, inputs_per_request: int = 1) -> dict[str, Any]:
        ok = len(self.latencies_s)
        rate = ok / self.elapsed_s if self.elapsed_s > 0 else 0.0
        return {
            "concurrency": self.concurrency,
            "requests": self.requests,
            "errors": self.errors,
            "error_samples": self.error_samples,
            "elapsed_s": round(self.elapsed_s, 3),
            "requests_per_s": round(rate, 2),
            "inputs_per_s": round(rate * inputs_per_request, 2),
            **latency_ms(self.latencies_s),
            "client_cpu_s": round(self.client_cpu_s, 3),
        }


def make_client(base_url: str, concurrency: int, timeout_s: float = 60.0) -> RawHttpClient:
    """The load generator's client: one keep-alive connection per concurrent client.

    `bench.rawhttp`, not httpx: httpx's own CPU would be taken from the service
    under test on a machine this small.
    """
    return RawHttpClient(base_url, concurrency, headers=auth_headers(), timeout_s=timeout_s)


class PostClient(Protocol):
    """What `closed_loop` needs of a client (RawHttpClient and httpx.AsyncClient both fit)."""

    async def post(self, path: str, *, content: bytes, headers: dict[str, str]) -> Any: ...


async def closed_loop(
    client: PostClient,
    path: str,
    body_for: Callable[[int], bytes],
    *,
    concurrency: int,
    duration_s: float,
    max_requests: int,
    first: int = 0,
) -> LoadResult:
    """`concurrency` clients POST `body_for(i)` to `path` back to back.

    Stops starting requests at `duration_s` or after `max_requests`, whichever
    comes first; requests in flight then are awaited and counted. `i` runs
    from `first` so that consecutive runs can draw different inputs.
    """
    if concurrency < 1 or max_requests < 0 or duration_s <= 0:
        raise ValueError("concurrency >= 1, max_requests >= 0 and duration_s > 0 are needed")
    result = LoadResult(concurrency)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration_s
    issued = 0

    async def one_client() -> None:
        nonlocal issued
        while issued < max_requests and loop.time() < deadline:
            index = first + issued
            issued += 1
            body = body_for(index)
            started = time.perf_counter()
            try:
                response = await client.post(path, content=body, headers=JSON_HEADERS)
            except (httpx.HTTPError, RawHttpError) as exc:
                _failed(result, f"request {index}: {type(exc).__name__}: {exc}")
                continue
            if response.status_code == 200:
                result.latencies_s.append(time.perf_counter() - started)
            else:
                _failed(result, f"request {index}: {response.status_code} {response.text[:200]}")

    cpu0, started = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    result.elapsed_s = time.perf_counter() - started
    result.client_cpu_s = time.process_time() - cpu0
    result.requests = issued
    return result


def _failed(result: LoadResult, message: str) -> None:
    result.errors += 1
    if len(result.error_samples) < 5:
        result.error_samples.append(message)


SERVICE_SETTINGS = (
    "batch_wait_ms",
    "max_inference_batch",
    "intra_op_threads",
    "use_quantized",
    "max_queue",
)


def report_header(settings: Any, args: Any) -> dict[str, Any]:
    """What every serving result starts with: machine, service settings, parameters, note."""
    return {
        "machine": machine_info(),
        "settings": {key: getattr(settings, key) for key in SERVICE_SETTINGS},
        "params": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k not in ("out", "note")
        },
        "note": args.note,
    }
