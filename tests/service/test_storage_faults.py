"""A data folder on a disk that fills up, or that is read-only, through the real app.

A 4 MiB tmpfs (small_disk.py: root only, skipped elsewhere) is filled by
concurrent writers over HTTP (uvicorn in a thread) while snapshots run every
0.2 s. Every refused write must be a 507 naming the data folder, never a 500;
reads and searches go on; /ready and the metrics say so; once space is freed,
writes succeed again in the same process; after a restart every acknowledged
item holds its exact vector and no refused one exists.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.config import Settings
from tests.service.conftest import started, unit
from tests.service.live import app_in_thread
from tests.service.small_disk import fill, mounted_tmpfs

WRITERS = 4
ITEMS_PER_REQUEST = 20
PAD = "x" * 1500  # metadata per item: the disk fills in about a hundred requests
FULL_IN_A_ROW = 15  # refusals in a row after which a writer stops
MAX_REQUESTS = 400  # per writer, in case the disk never filled
COLLECTION = "filling"

logger = logging.getLogger(__name__)


@dataclass
class Writer:
    number: int
    dim: int
    acked: dict[str, list[float]] = field(default_factory=dict)
    refused: set[str] = field(default_factory=set)
    statuses: dict[int, int] = field(default_factory=dict)
    bad: list[str] = field(default_factory=list)  # answers that are neither 200 nor a good 507

    def run(self, base: str, data_dir: Path) -> None:
        rng = random.Random(self.number)
        in_a_row = 0
        with httpx.Client(base_url=base, timeout=30.0) as client:
            for i in range(MAX_REQUESTS):
                items: list[dict[str, Any]] = [
                    {
                        "id": f"w{self.number}/{i}/{j}",
                        "vector": [rng.gauss(0.0, 1.0) for _ in range(self.dim)],
                        "metadata": {"pad": PAD},
                    }
                    for j in range(ITEMS_PER_REQUEST)
                ]
                r = client.post(f"/collections/{COLLECTION}/items", json={"items": items})
                self.statuses[r.status_code] = self.statuses.get(r.status_code, 0) + 1
                if r.status_code == 200:
                    self.acked.update((it["id"], it["vector"]) for it in items)
                    in_a_row = 0
                    continue
                detail = r.json().get("detail", "")
                if r.status_code != 507 or str(data_dir) not in detail:
                    self.bad.append(f"{r.status_code}: {detail}")
                self.refused.update(it["id"] for it in items)
                in_a_row += 1
                if in_a_row >= FULL_IN_A_ROW:
                    return


@contextlib.contextmanager
def data_on_small_disk(tmp_path: Path, size: str) -> Iterator[tuple[Path, Path]]:
    """`(disk, data_dir)`: a tmpfs of `size` and an empty data folder on it."""
    with mounted_tmpfs(tmp_path / "disk", size) as disk:
        data_dir = disk / "data"
        data_dir.mkdir()
        yield disk, data_dir


def _settings(models_dir: Path, data_dir: Path, **extra: Any) -> Settings:
    return Settings(
        models_dir=models_dir,
        data_dir=data_dir,
        warmup=False,
        snapshot_interval_s=0.2,
        storage_probe_bytes=65536,
        **extra,
    )


def test_a_disk_that_fills_up_refuses_writes_with_507_and_recovers(
    models_dir: Path, tmp_path: Path
) -> None:
    with data_on_small_disk(tmp_path, "4m") as (disk, data_dir):
        ballast = disk / "ballast"
        ballast.write_bytes(b"\0" * (1 << 20))  # freed later: the space that returns
        settings = _settings(models_dir, data_dir, ready_requires_storage=True)
        with app_in_thread(settings) as host:
            base = f"http://{host}"
            with httpx.Client(base_url=base, timeout=30.0) as client:
                created = client.put(f"/collections/{COLLECTION}", json={"model": "audio"})
                assert created.status_code == 201, created.text
                dim = created.json()["dim"]
                assert client.get("/ready").json()["storage"]["writable"] is True

                writers = [Writer(n, dim) for n in range(WRITERS)]
                threads = [threading.Thread(target=w.run, args=(base, data_dir)) for w in writers]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(timeout=300)
                statuses = {
                    code: sum(w.statuses.get(code, 0) for w in writers)
                    for code in {c for w in writers for c in w.statuses}
                }
                assert [b for w in writers for b in w.bad] == [], statuses
                assert statuses.get(500, 0) == 0
                assert statuses.get(507, 0) >= WRITERS * FULL_IN_A_ROW, statuses
                acked = {k: v for w in writers for k, v in w.acked.items()}
                refused = {i for w in writers for i in w.refused}
                logger.info(
                    "filled: answers %s, %d items acknowledged, %d refused",
                    statuses,
                    len(acked),
                    len(refused),
                )
                assert len(acked) >= 10 * ITEMS_PER_REQUEST, statuses

                # Full: reads and searches go on; /ready and the metrics say so.
                count = client.get(f"/collections/{COLLECTION}").json()["count"]
                assert count == len(acked), "a refused write became visible"
                some_id, some_vector = next(iter(acked.items()))
                got = client.get(f"/collections/{COLLECTION}/items/{some_id}")
                assert got.status_code == 200
                hit = client.post(
                    "/search", json={"collection": COLLECTION, "vector": some_vector, "k": 1}
                )
                assert hit.status_code == 200 and hit.json()["results"][0]["id"] == some_id
                ready = client.get("/ready")
                assert ready.status_code == 503, ready.text
                assert str(data_dir) in ready.json()["detail"]
                assert ready.json()["storage"]["writable"] is False
                metrics = client.get("/metrics").text
                assert "cpc_storage_writable 0.0" in metrics
                assert 'cpc_storage_failures_total{operation="write",reason="full"}' in metrics

                # Space returns: /ready (its probe) turns 200 and writes succeed, without
                # a restart.
                ballast.unlink()
                ready = client.get("/ready")
                assert ready.status_code == 200 and ready.json()["storage"]["writable"] is True
                one: dict[str, Any] = {
                    "id": "after",
                    "vector": [1.0] * dim,
                    "metadata": {"pad": PAD},
                }
                again = client.post(f"/collections/{COLLECTION}/items", json={"items": [one]})
                assert again.status_code == 200, again.text
                acked["after"] = one["vector"]
                assert "cpc_storage_writable 1.0" in client.get("/metrics").text

        leftovers = [p.name for p in data_dir.rglob("*") if p.name.endswith(".tmp")]
        assert leftovers == [] and not (data_dir / ".cpc-embed.probe").exists()

        # A restart holds every acknowledged item exactly, and nothing refused.
        with started(_settings(models_dir, data_dir)) as client:
            assert client.get(f"/collections/{COLLECTION}").json()["count"] == len(acked)
            for item_id, vector in acked.items():
                r = client.get(f"/collections/{COLLECTION}/items/{item_id}")
                assert r.status_code == 200, f"acknowledged {item_id} is lost"
                assert np.allclose(r.json()["vector"], unit(vector), atol=1e-6)
            for item_id in sorted(refused)[:200]:
                r = client.get(f"/collections/{COLLECTION}/items/{item_id}")
                assert r.status_code == 404, f"refused {item_id} became visible"
            for item_id, vector in list(acked.items())[:: max(1, len(acked) // 100)]:
                body = {"collection": COLLECTION, "vector": vector, "k": 1}
                (hit,) = client.post("/search", json=body).json()["results"]
                assert hit["id"] == item_id and hit["score"] == pytest.approx(1.0, abs=1e-5)


def test_by_default_ready_stays_200_while_writes_fail(models_dir: Path, tmp_path: Path) -> None:
    with data_on_small_disk(tmp_path, "2m") as (disk, data_dir):
        with started(_settings(models_dir, data_dir)) as client:
            dim = client.put("/collections/small", json={"model": "audio"}).json()["dim"]
            ballast = fill(disk)
            item = {"id": "a", "vector": [1.0] * dim, "metadata": {"pad": PAD * 40}}
            r = client.post("/collections/small/items", json={"items": [item]})
            assert r.status_code == 507 and str(data_dir) in r.json()["detail"]
            created = client.put("/collections/other", json={"model": "audio"})
            assert created.status_code == 507, created.text
            ready = client.get("/ready")
            assert ready.status_code == 200
            storage = ready.json()["storage"]
            assert storage["writable"] is False and str(data_dir) in storage["detail"]
            assert storage["since"]
            assert client.get("/collections/small").json()["count"] == 0
            ballast.unlink()
            r = client.post("/collections/small/items", json={"items": [item]})
            assert r.status_code == 200
            assert client.get("/ready").json()["storage"]["writable"] is True
            assert client.put("/collections/other", json={"model": "audio"}).status_code == 201
        assert sorted(p.name for p in (data_dir / "collections").iterdir()) == [
            "audio",
            "image",
            "other",
            "small",
            "text",
        ]
