"""Bounded load and soak on loopback: mixed traffic, zero 5xx, no lost write, bounded memory.

Concurrent asyncio clients (httpx) drive a real `cpc-embed serve` process on
127.0.0.1 with a mix of embeds (all three modalities), upserts, searches,
deletes and reads. Each client owns its ids, so it knows what the store must
hold: afterwards every acknowledged upsert is there with its vector and
metadata, and every acknowledged delete is gone. The resident memory of the
server (VmRSS) is read after a warm-up and at the end. The short form runs in
the default suite; the 60-second form with 32 clients is marked slow. The
figures (requests, statuses, errors, lost writes, memory) are logged and
written to `soak-report.json` in the test's temporary folder; wall-clock
times are reported, never asserted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.service.conftest import TEXTS, audio_bytes, b64, image_bytes, unit
from tests.service.live import LiveServer

logger = logging.getLogger(__name__)

COLLECTION = "soak"
DIM = 16
AUDIO = b64(audio_bytes(0.4))
IMAGE = b64(image_bytes("PNG", 32, 32))
OPS = ("embed", "upsert", "search", "delete", "get")
WEIGHTS = (3, 3, 3, 1, 1)


@dataclass
class Client:
    """One simulated client: its own ids and what the server acknowledged for them."""

    number: int
    present: dict[str, tuple[list[float], dict[str, Any]]] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)  # 5xx, transport errors, surprises
    made: int = 0

    def vector(self, rng: random.Random) -> list[float]:
        return [rng.gauss(0.0, 1.0) for _ in range(DIM)]

    async def step(self, http: httpx.AsyncClient, rng: random.Random) -> None:
        op = rng.choices(OPS, WEIGHTS)[0]
        if op == "delete" and not self.present:
            op = "upsert"
        try:
            await getattr(self, op)(http, rng)
        except httpx.HTTPError as exc:
            self.failures.append(f"{op}: {type(exc).__name__}: {exc}")

    def answer(self, op: str, r: httpx.Response, expected: int = 200) -> bool:
        self.statuses[r.status_code] += 1
        if r.status_code != expected:
            self.failures.append(f"{op}: {r.status_code} {r.text[:300]}")
        return r.status_code == expected

    async def embed(self, http: httpx.AsyncClient, rng: random.Random) -> None:
        model, value = rng.choice([("text", rng.choice(TEXTS)), ("audio", AUDIO), ("image", IMAGE)])
        r = await http.post("/embed", json={"model": model, "inputs": [value] * rng.randint(1, 3)})
        self.answer("embed", r)

    async def upsert(self, http: httpx.AsyncClient, rng: random.Random) -> None:
        ids = [f"c{self.number}/{self.made + i}" for i in range(rng.randint(1, 4))]
        self.made += len(ids)
        if self.present and rng.random() < 0.3:
            ids[0] = rng.choice(sorted(self.present))  # replace one of ours
        values = {i: (self.vector(rng), {"c": self.number, "r": rng.random()}) for i in ids}
        items = [{"id": i, "vector": v, "metadata": m} for i, (v, m) in values.items()]
        r = await http.post(f"/collections/{COLLECTION}/items", json={"items": items})
        if self.answer("upsert", r):
            self.present.update(values)
            self.deleted.difference_update(values)

    async def search(self, http: httpx.AsyncClient, rng: random.Random) -> None:
        body: dict[str, Any] = {"collection": COLLECTION, "k": rng.randint(1, 20)}
        if rng.random() < 0.2:
            body["input"] = rng.choice(TEXTS)
        else:
            body["vector"] = self.vector(rng)
        if rng.random() < 0.3:
            body["filter"] = {"c": self.number}
        self.answer("search", await http.post("/search", json=body))

    async def delete(self, http: httpx.AsyncClient, rng: random.Random) -> None:
        item_id = rng.choice(sorted(self.present))
        if self.answer("delete", await http.delete(f"/collections/{COLLECTION}/items/{item_id}")):
            del self.present[item_id]
            self.deleted.add(item_id)

    async def get(self, http: httpx.AsyncClient, rng: random.Random) -> None:
        if not self.present:
            self.answer("get", await http.get(f"/collections/{COLLECTION}"))
            return
        item_id = rng.choice(sorted(self.present))
        self.answer("get", await http.get(f"/collections/{COLLECTION}/items/{item_id}"))


async def drive(base: str, clients: list[Client], seconds: float) -> None:
    limits = httpx.Limits(max_connections=len(clients), max_keepalive_connections=len(clients))
    async with httpx.AsyncClient(base_url=base, timeout=60.0, limits=limits) as http:
        stop_at = time.monotonic() + seconds

        async def loop(client: Client) -> None:
            rng = random.Random(client.number)
            while time.monotonic() < stop_at:
                await client.step(http, rng)

        await asyncio.gather(*(loop(c) for c in clients))


def lost_writes(base: str, clients: list[Client]) -> list[str]:
    """Acknowledged upserts that are not there as written, and deletes that came back."""
    lost: list[str] = []
    with httpx.Client(base_url=base, timeout=30.0) as http:
        for client in clients:
            for item_id, (vector, metadata) in client.present.items():
                r = http.get(f"/collections/{COLLECTION}/items/{item_id}")
                if r.status_code != 200:
                    lost.append(f"{item_id}: {r.status_code}")
                elif r.json()["metadata"] != metadata or not np.allclose(
                    r.json()["vector"], unit(vector), atol=1e-6
                ):
                    lost.append(f"{item_id}: not as acknowledged")
            for item_id in client.deleted:
                if http.get(f"/collections/{COLLECTION}/items/{item_id}").status_code != 404:
                    lost.append(f"{item_id}: deleted, yet present")
        count = http.get(f"/collections/{COLLECTION}").json()["count"]
    expected = sum(len(c.present) for c in clients)
    if count != expected:
        lost.append(f"the collection holds {count} items, not {expected}")
    return lost


def soak(models_dir: Path, tmp_path: Path, clients: int, seconds: float) -> dict[str, Any]:
    server = LiveServer(models_dir, tmp_path / "data", tmp_path / "server.log")
    try:
        server.wait_ready()
        r = httpx.put(f"{server.base}/collections/{COLLECTION}", json={"model": "text"})
        assert r.status_code == 201, r.text
        warm = [Client(number=10_000 + n) for n in range(4)]
        asyncio.run(drive(server.base, warm, 1.0))
        rss_before = server.rss_kib()
        crowd = [Client(number=n) for n in range(clients)]
        started = time.monotonic()
        asyncio.run(drive(server.base, crowd, seconds))
        elapsed = time.monotonic() - started
        rss_after = server.rss_kib()
        everyone = warm + crowd
        lost = lost_writes(server.base, everyone)
    finally:
        server.stop()
    statuses: Counter[int] = sum((c.statuses for c in everyone), Counter())
    report = {
        "clients": clients,
        "seconds": round(elapsed, 1),
        "requests": sum(statuses.values()),
        "requests_per_s": round(sum(c.statuses.total() for c in crowd) / elapsed, 1),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "server_errors": sum(v for k, v in statuses.items() if k >= 500),
        "failures": [f for c in everyone for f in c.failures][:20],
        "acknowledged_present": sum(len(c.present) for c in everyone),
        "acknowledged_deleted": sum(len(c.deleted) for c in everyone),
        "lost_writes": lost[:20],
        "rss_kib_before": rss_before,
        "rss_kib_after": rss_after,
        "rss_growth": round(rss_after / rss_before - 1.0, 3),
    }
    (tmp_path / "soak-report.json").write_text(json.dumps(report, indent=1))
    logger.info("soak report: %s", json.dumps(report))
    return report


def check(report: dict[str, Any], max_growth: float) -> None:
    assert report["server_errors"] == 0, report
    assert report["failures"] == [], report
    assert report["lost_writes"] == [], report
    assert report["acknowledged_present"] > 0 and report["requests"] > 0, report
    assert report["rss_growth"] < max_growth, report


def test_soak_short(models_dir: Path, tmp_path: Path) -> None:
    check(soak(models_dir, tmp_path, clients=8, seconds=5.0), max_growth=0.5)


@pytest.mark.slow
def test_soak_60_seconds_32_clients(models_dir: Path, tmp_path: Path) -> None:
    check(soak(models_dir, tmp_path, clients=32, seconds=60.0), max_growth=0.5)
