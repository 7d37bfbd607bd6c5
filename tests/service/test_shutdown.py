"""Graceful shutdown: SIGTERM drains the requests in flight, closes the store, exits 0.

A real `cpc-embed serve` process takes acknowledged writes, then a few
upserts whose bodies trickle in over a second or so (in flight from the
server's side) when SIGTERM arrives. Each of them must still be answered
200, the process must exit with status 0 within a bound, its log must say
that draining began at the signal, and a new process on the same data
folder must find every acknowledged item, with the index snapshot written
at shutdown already up to date. The signal hook that turns /ready to 503 is
tested on its own (uvicorn stops accepting connections at once, so no new
request could see that 503 over HTTP without racing it).
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from types import FrameType, SimpleNamespace
from typing import Any

import httpx
import numpy as np

from service.api.app import start_draining_on_signals
from service.api.routes.health import not_ready_reason
from service.api.shutdown import drain_on_signals
from tests.service.conftest import random_vectors, unit
from tests.service.live import LiveServer

COLLECTION = "audio"  # created on start for the tiny audio bundle (dim 16)
SLOW_REQUESTS = 4
CHUNKS = 12
CHUNK_PAUSE_S = 0.1
EXIT_BOUND_S = 30.0


def items(prefix: str, n: int, seed: int) -> list[dict[str, Any]]:
    return [
        {"id": f"{prefix}{i}", "vector": v, "metadata": {"n": i}}
        for i, v in enumerate(random_vectors(n, seed=seed))
    ]


async def trickle(body: bytes, started: asyncio.Event) -> AsyncIterator[bytes]:
    """`body` in CHUNKS pieces, a pause between each: a request that stays in flight."""
    size = -(-len(body) // CHUNKS)
    for start in range(0, len(body), size):
        yield body[start : start + size]
        started.set()
        await asyncio.sleep(CHUNK_PAUSE_S)


async def slow_upserts_then_sigterm(server: LiveServer) -> list[httpx.Response]:
    bodies = [
        json.dumps({"items": items(f"slow{n}-", 3, seed=10 + n)}) for n in range(SLOW_REQUESTS)
    ]
    events = [asyncio.Event() for _ in bodies]
    async with httpx.AsyncClient(base_url=server.base, timeout=30.0) as http:
        tasks = [
            asyncio.create_task(
                http.post(
                    f"/collections/{COLLECTION}/items",
                    content=trickle(body.encode(), event),
                    headers={"content-type": "application/json"},
                )
            )
            for body, event in zip(bodies, events, strict=True)
        ]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 30)
        await asyncio.sleep(3 * CHUNK_PAUSE_S)
        server.terminate()
        return list(await asyncio.gather(*tasks))


def test_sigterm_finishes_in_flight_requests_and_exits_0(
    models_dir: Path, tmp_path: Path, servers: list[LiveServer]
) -> None:
    data_dir = tmp_path / "data"
    first = LiveServer(models_dir, data_dir, tmp_path / "first.log")
    servers.append(first)
    first.wait_ready()
    before = items("pre", 20, seed=1)
    r = httpx.post(f"{first.base}/collections/{COLLECTION}/items", json={"items": before})
    assert r.status_code == 200, r.text

    answers = asyncio.run(slow_upserts_then_sigterm(first))
    assert [a.status_code for a in answers] == [200] * SLOW_REQUESTS, [a.text for a in answers]
    assert first.wait(EXIT_BOUND_S) == 0, first.log_text()
    records = first.log_records()
    assert any("SIGTERM received: draining" in r.get("message", "") for r in records)
    assert not [r for r in records if r.get("level") in ("error", "critical")]
    assert (data_dir / "collections" / COLLECTION / "index.faiss").is_file()

    second = LiveServer(models_dir, data_dir, tmp_path / "second.log")
    servers.append(second)
    second.wait_ready()
    acknowledged = before + [
        item for n in range(SLOW_REQUESTS) for item in items(f"slow{n}-", 3, seed=10 + n)
    ]
    with httpx.Client(base_url=second.base, timeout=10.0) as http:
        assert http.get(f"/collections/{COLLECTION}").json()["count"] == len(acknowledged)
        for item in acknowledged:
            got = http.get(f"/collections/{COLLECTION}/items/{item['id']}").json()
            assert np.allclose(got["vector"], unit(item["vector"]), atol=1e-6)
            assert got["metadata"] == item["metadata"]
    reopened = [r["message"] for r in second.log_records() if "snapshot of version" in r["message"]]
    assert any(f"'{COLLECTION}'" in m and "removed 0, added 0" in m for m in reopened), reopened
    second.terminate()
    assert second.wait(EXIT_BOUND_S) == 0


def test_the_drain_hook_runs_first_then_the_servers_handler() -> None:
    calls: list[tuple[str, int]] = []

    def servers_handler(signum: int, frame: FrameType | None) -> None:
        calls.append(("server", signum))

    previous = signal.signal(signal.SIGTERM, servers_handler)
    try:
        restore = drain_on_signals(lambda signum: calls.append(("drain", signum)))
        signal.raise_signal(signal.SIGTERM)
        assert calls == [("drain", signal.SIGTERM), ("server", signal.SIGTERM)]
        restore()
        assert signal.getsignal(signal.SIGTERM) is servers_handler
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_the_app_is_draining_as_soon_as_the_signal_arrives() -> None:
    state = SimpleNamespace(draining=False)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)

    async def main() -> None:
        restore = start_draining_on_signals(state)
        try:
            assert not_ready_reason(state) is None or not state.draining
            signal.raise_signal(signal.SIGTERM)
            assert state.draining is True
            assert "shutting down" in str(not_ready_reason(state))
            await asyncio.sleep(0)  # the log line is written from the loop
        finally:
            restore()

    try:
        asyncio.run(main())
    finally:
        signal.signal(signal.SIGTERM, previous)
