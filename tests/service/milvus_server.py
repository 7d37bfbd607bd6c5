"""A real Milvus server for the tests of the Milvus collection backend, and a TCP relay.

`start_milvus` runs PyPI's `milvus-server` (Milvus standalone with embedded etcd,
RocksMQ and local storage) on a data folder of its own, in a process group of
its own, reads the proxy port it chose from `<data>/configs/milvus.yaml` (it
moves to the next port when the one asked for is taken) and waits until it
answers; `MilvusServer.stop` sends the group SIGTERM, then SIGKILL after 15 s.
Milvus binds fixed ports for its parts, so only one runs per machine: set
`CPC_TEST_MILVUS_URI` to reuse a server that is already running instead.

`Relay` forwards a local port to the server, so that a test can cut the
connection ("Milvus is down") and mend it without restarting Milvus.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

ENV_URI = "CPC_TEST_MILVUS_URI"
EXECUTABLE = "milvus-server"
STOP_GRACE_S = 15.0
_COMPONENTS = (
    "rootCoord",
    "proxy",
    "queryCoord",
    "queryNode",
    "indexNode",
    "dataCoord",
    "dataNode",
)
# Every part registers 127.0.0.1 (not the machine's first address), so that its traffic stays on
# loopback; a graceful stop gives up after 5 s (not 30 min), and the proxy ticks every 50 ms
# (not 200), which is how long a Strong read waits at most.
TEST_CONFIG: dict[str, str] = {
    **{f"{part}.ip": "127.0.0.1" for part in _COMPONENTS},
    "common.gracefulStopTimeout": "5",
    "proxy.timeTickInterval": "50",
}
RELAY_PORTS = (21000, 32000)  # below Linux's ephemeral ports (32768 and up)
_PORT_LINE = re.compile(r"^  port:\s*(\d+)")


def find_executable() -> str | None:
    """The `milvus-server` of this interpreter's environment, or of PATH, or None."""
    beside = Path(sys.executable).parent / EXECUTABLE
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(EXECUTABLE)


def proxy_port(config: Path) -> int | None:
    """The `proxy.port` of a milvus.yaml, or None while it is not written yet."""
    try:
        lines = config.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    in_proxy = False
    for line in lines:
        if line and not line[0].isspace() and not line.startswith("#"):
            in_proxy = line.rstrip() == "proxy:"
        elif in_proxy and (found := _PORT_LINE.match(line)):
            return int(found[1])
    return None


def _group_alive(pgid: int) -> bool:
    """Whether a process of group `pgid` still runs (zombies do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def _wait_group(pgid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _group_alive(pgid):
            return True
        time.sleep(0.2)
    return not _group_alive(pgid)


def stop_group(proc: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM to the process group that `proc` leads, SIGKILL after `grace_s`."""
    pgid = proc.pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    if not _wait_group(pgid, grace_s):
        logger.warning("milvus (group %d) still runs %.0f s after SIGTERM: SIGKILL", pgid, grace_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        _wait_group(pgid, 10.0)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def answers(uri: str, timeout_s: float = 3.0) -> bool:
    """Whether a Milvus server at `uri` lists its collections."""
    from pymilvus import MilvusClient

    try:
        client = MilvusClient(uri=uri, timeout=timeout_s, dedicated=True)
    except Exception:
        return False
    try:
        client.list_collections(timeout=timeout_s)
        return True
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            client.close()


@dataclass
class MilvusServer:
    """A running server: `uri`, and the process when the tests started it."""

    uri: str
    process: subprocess.Popen[bytes] | None = None
    data_dir: Path | None = None
    started_in_s: float = 0.0

    @property
    def port(self) -> int:
        return int(self.uri.rsplit(":", 1)[1])

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process)
            self.process = None

    def kill(self) -> None:
        """SIGKILL the whole server at once (a crash), leaving its data as it is on disk."""
        assert self.process is not None, "only a server the tests started can be killed"
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        _wait_group(self.process.pid, 10.0)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        self.process = None

    def restart(self, timeout_s: float = 180.0) -> None:
        """Start the server again on the same data folder and port, and wait until it answers."""
        assert self.data_dir is not None and self.process is None
        again = start_milvus(self.data_dir, self.port, timeout_s, register=False)
        self.uri, self.process, self.started_in_s = again.uri, again.process, again.started_in_s


STARTED: list[MilvusServer] = []  # the servers this process started, for tests that crash one


def start_milvus(
    data_dir: Path,
    port: int = 19530,
    timeout_s: float = 180.0,
    extra_config: dict[str, str] | None = None,
    *,
    register: bool = True,
) -> MilvusServer:
    """Start `milvus-server` on `data_dir` and wait until it answers (RuntimeError if not);
    `extra_config` (dotted milvus.yaml keys) goes on top of TEST_CONFIG. `register` adds it
    to STARTED."""
    exe = find_executable()
    if exe is None:
        raise RuntimeError(f"no {EXECUTABLE} executable (pip install milvus)")
    data_dir.mkdir(parents=True, exist_ok=True)
    cmd = [exe, "--data", str(data_dir), "--proxy-port", str(port)]
    for key, value in {**TEST_CONFIG, **(extra_config or {})}.items():
        cmd += ["--extra-config", f"{key}={value}"]
    log = (data_dir / "milvus-server.log").open("wb")
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    log.close()
    server = MilvusServer("", proc, data_dir)
    try:
        server.uri = _wait_ready(proc, data_dir, started + timeout_s)
    except BaseException:
        server.stop()
        raise
    server.started_in_s = time.monotonic() - started
    logger.info("milvus at %s answered after %.1f s", server.uri, server.started_in_s)
    if register:
        STARTED.append(server)
    return server


def _wait_ready(proc: subprocess.Popen[bytes], data_dir: Path, deadline: float) -> str:
    config = data_dir / "configs" / "milvus.yaml"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (data_dir / "milvus-server.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"milvus-server exited with {proc.returncode}: {tail}")
        port = proxy_port(config)
        if port is not None and answers(f"http://127.0.0.1:{port}"):
            return f"http://127.0.0.1:{port}"
        time.sleep(0.5)
    raise RuntimeError(f"milvus-server did not answer in time (data in {data_dir})")


# --- a relay that a test can cut -------------------------------------------------------------


@dataclass
class Relay:
    """Forwards 127.0.0.1:`port` to `target_port`; `cut()` drops every connection and
    refuses new ones, `mend()` accepts them again on the same port."""

    target_port: int
    port: int = 0
    _listener: socket.socket | None = None
    _pairs: list[tuple[socket.socket, socket.socket]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopped: bool = True

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Relay:
        # A port below the ephemeral range: while the relay is cut, a client that keeps
        # connecting to an ephemeral port can be handed that very port as its own source
        # port (a TCP self-connect), which would then hold it and stop `mend` from binding.
        for port in range(RELAY_PORTS[0] + os.getpid() % 1000, RELAY_PORTS[1]):
            with contextlib.suppress(OSError), socket.socket() as probe:
                probe.bind(("127.0.0.1", port))
                self.port = port
                break
        self.mend()
        return self

    def mend(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener, self._stopped = listener, False
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            self._stopped = True
            listener, self._listener = self._listener, None
            pairs, self._pairs = self._pairs, []
        if listener is not None:
            # shutdown first: close alone leaves a listener that a thread blocked in accept()
            # still holds, so it keeps listening and the port cannot be bound again
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for a, b in pairs:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._stopped:
                    client.close()
                    upstream.close()
                    return
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while True:
                ready, _, _ = select.select([a, b], [], [], 1.0)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()
