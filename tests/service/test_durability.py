"""Acknowledged writes survive kill -9: a real server process (`cpc-embed serve` on 127.0.0.1) is
killed with SIGKILL in the middle of a stream of concurrent upserts, restarted, and must
hold every acknowledged item exactly, with no index entry that lacks a store row.

Bounded: 8 threads of at most 30 requests of 1 to 3 items each; the kill comes after
60 acknowledged requests; periodic index snapshots (every 0.3 s) run meanwhile, so the
restart also reconciles a stale snapshot with the store.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.service.conftest import unit
from tests.service.live import LiveServer

THREADS = 8
REQUESTS_PER_THREAD = 30
KILL_AFTER_ACKS = 60
DIM = 16
COLLECTION = "audio"
SNAPSHOTS = {"CPC_SNAPSHOT_INTERVAL_S": "0.3"}  # stale snapshots the restart must reconcile

Value = tuple[list[float], dict[str, Any]]


@dataclass
class Writer:
    """One thread of upserts; it owns its ids, so its own order decides each id's value."""

    number: int
    base: str
    unavailable_ok: bool = False  # a 503 (the collection backend is down) ends it, unacknowledged
    acked: dict[str, Value] = field(default_factory=dict)
    replaced: dict[str, list[float]] = field(default_factory=dict)  # id -> an older vector
    in_flight: dict[str, Value] = field(default_factory=dict)  # the request cut by the kill
    requests: int = 0
    error: str | None = None  # an unexpected answer (a thread cannot fail the test itself)

    def item(self, rng: random.Random, item_id: str) -> dict[str, Any]:
        vector = [rng.gauss(0.0, 1.0) for _ in range(DIM)]
        metadata = {
            "writer": self.number,
            "label": rng.choice(["α", "b/c", 'd"e', "日本"]) + str(rng.random()),
            "score": rng.random(),
            "tags": [rng.randint(0, 9) for _ in range(rng.randint(0, 3))],
            "nested": {"ok": rng.random() < 0.5, "none": None},
        }
        return {"id": item_id, "vector": vector, "metadata": metadata}

    def run(self, stop: threading.Event, acks: list[int], lock: threading.Lock) -> None:
        rng = random.Random(self.number)
        with httpx.Client(base_url=self.base, timeout=10.0) as client:
            for i in range(REQUESTS_PER_THREAD):
                if stop.is_set():
                    return
                ids = [f"w{self.number}/r{i}/{j}" for j in range(rng.randint(1, 3))]
                if self.acked and rng.random() < 0.3:
                    ids[0] = rng.choice(sorted(self.acked))  # replace one of ours
                items = [self.item(rng, item_id) for item_id in ids]
                self.in_flight = {it["id"]: (it["vector"], it["metadata"]) for it in items}
                try:
                    r = client.post(f"/collections/{COLLECTION}/items", json={"items": items})
                except httpx.TransportError:
                    return  # the server is gone: this request is unacknowledged
                if r.status_code == 503 and self.unavailable_ok and r.json().get("detail"):
                    return  # refused whole, with a reason: this request is unacknowledged
                if r.status_code != 200:
                    self.error = f"{r.status_code}: {r.text}"
                    return
                for item_id, value in self.in_flight.items():
                    if item_id in self.acked:
                        self.replaced[item_id] = self.acked[item_id][0]
                    self.acked[item_id] = value
                self.in_flight = {}
                self.requests += 1
                with lock:
                    acks[0] += 1


def stream_and_kill(
    server: LiveServer, kill: Callable[[], None] | None = None, unavailable_ok: bool = False
) -> list[Writer]:
    """Eight writers against `server`, and `kill` (default: SIGKILL of the server) once
    KILL_AFTER_ACKS requests were acknowledged."""
    writers = [Writer(n, server.base, unavailable_ok) for n in range(THREADS)]
    stop, lock, acks = threading.Event(), threading.Lock(), [0]
    threads = [threading.Thread(target=w.run, args=(stop, acks, lock)) for w in writers]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20.0
    while acks[0] < KILL_AFTER_ACKS and time.monotonic() < deadline:
        time.sleep(0.005)
    (kill or server.stop)()  # SIGKILL, with requests in flight
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert [w.error for w in writers if w.error] == []
    assert acks[0] >= KILL_AFTER_ACKS, "the server acknowledged too few writes"
    assert sum(w.requests for w in writers) < THREADS * REQUESTS_PER_THREAD, "no kill mid-stream"
    return writers


def test_acknowledged_upserts_survive_sigkill(
    models_dir: Path, tmp_path: Path, servers: list[LiveServer]
) -> None:
    data_dir = tmp_path / "data"
    servers.append(LiveServer(models_dir, data_dir, tmp_path / "server.log", **SNAPSHOTS))
    servers[0].wait_ready()
    writers = stream_and_kill(servers[0])

    servers.append(LiveServer(models_dir, data_dir, tmp_path / "server.log", **SNAPSHOTS))
    servers[1].wait_ready()
    check_acknowledged(servers[1].base, writers)


def check_acknowledged(base: str, writers: list[Writer]) -> None:
    """Every acknowledged item is there with what was acknowledged last, an unacknowledged
    one whole or not at all, and search finds exactly the stored items."""
    with httpx.Client(base_url=base, timeout=30.0) as client:
        present: set[str] = set()
        for w in writers:
            for item_id, (vector, metadata) in w.acked.items():
                candidates = [(vector, metadata)]
                if item_id in w.in_flight:  # its replacement may or may not have landed
                    candidates.append(w.in_flight[item_id])
                r = client.get(f"/collections/{COLLECTION}/items/{item_id}")
                assert r.status_code == 200, f"acknowledged {item_id} is lost"
                got = r.json()
                assert any(
                    np.allclose(got["vector"], unit(v), atol=1e-6) and got["metadata"] == m
                    for v, m in candidates
                ), f"{item_id} does not hold what was acknowledged"
                present.add(item_id)
            for item_id, (vector, metadata) in w.in_flight.items():
                if item_id in w.acked:
                    continue
                r = client.get(f"/collections/{COLLECTION}/items/{item_id}")
                if r.status_code == 200:  # an unacknowledged write may land, but whole
                    assert np.allclose(r.json()["vector"], unit(vector), atol=1e-6)
                    assert r.json()["metadata"] == metadata
                    present.add(item_id)
                else:
                    assert r.status_code == 404

        count = client.get(f"/collections/{COLLECTION}").json()["count"]
        assert count == len(present)
        assert f'cpc_collection_items{{collection="{COLLECTION}"}} {float(count)}' in (
            client.get("/metrics").text
        )
        # Every index entry has a row: a search over everything returns exactly the items.
        r = client.post(
            "/search", json={"collection": COLLECTION, "vector": [1.0] * DIM, "k": count}
        )
        found = [hit["id"] for hit in r.json()["results"]]
        assert len(found) == count and set(found) == present

        for w in writers:
            for item_id, (vector, _) in w.acked.items():
                if item_id in w.in_flight:
                    continue
                body = {"collection": COLLECTION, "vector": vector, "k": 1}
                (hit,) = client.post("/search", json=body).json()["results"]
                assert hit["id"] == item_id and hit["score"] == pytest.approx(1.0, abs=1e-5)
            for item_id, old in w.replaced.items():
                body = {"collection": COLLECTION, "vector": old, "k": 1}
                (hit,) = client.post("/search", json=body).json()["results"]
                assert not (hit["id"] == item_id and hit["score"] > 0.9999), "a stale vector"
