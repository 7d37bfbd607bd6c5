"""Damaged files on start, through the real app and `cpc-embed check`.

Two collections are written and closed cleanly (so everything is in the main
SQLite file and the snapshot); then one file of one of them is damaged: bytes
flipped, cut in half, or emptied. A damaged snapshot is ignored and rebuilt
from the store (every item found by search); a damaged store takes only its
collection out of service (503 with a `detail`, listed under `unavailable`,
the file left unchanged) while the other one serves. `cpc-embed check` finds
each problem and exits 1, and 0 on a sound folder.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from service.config import Settings
from service.offline.check import check_data_dir
from service.vectors.collection import INDEX_FILE, STORE_FILE
from service.vectors.manager import CollectionManager
from tests.service.conftest import started

DIM = 8
ITEMS = 300
PAGE = 4096  # SQLite's default page size

logger = logging.getLogger(__name__)


def _vectors(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(ITEMS, DIM)).astype(np.float32)


def _lay_out(data_dir: Path) -> None:
    """Collections `good` and `hurt` with ITEMS items each, closed with their snapshots."""
    manager = CollectionManager(data_dir)
    manager.open_all()
    for seed, name in enumerate(("good", "hurt")):
        coll = manager.create(name, model="audio", dim=DIM)
        vectors = _vectors(seed)
        coll.upsert([(f"{name}-{i}", vectors[i], {"i": i}) for i in range(ITEMS)])
    manager.close_all()  # the snapshots, and the WAL folded into the main files


def _flip(path: Path) -> None:
    """Invert the first 16 bytes of every page after the first (the b-tree page headers;
    in a snapshot, bytes spread over the whole file)."""
    data = bytearray(path.read_bytes())
    step = PAGE if path.name == STORE_FILE else max(1, len(data) // 16)
    for start in range(step, len(data), step):
        for i in range(start, min(start + 16, len(data))):
            data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _halve(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


DAMAGES: dict[str, Callable[[Path], None]] = {"flip": _flip, "halve": _halve, "empty": _empty}


def _settings(models_dir: Path, data_dir: Path) -> Settings:
    return Settings(models_dir=models_dir, data_dir=data_dir, warmup=False)


def _check_command(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "check", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_snapshot_is_rebuilt_from_the_store(
    damage: str, models_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tmp_path / "data"
    _lay_out(data_dir)
    DAMAGES[damage](data_dir / "collections" / "hurt" / INDEX_FILE)
    report = check_data_dir(data_dir)
    assert [p for p in report.problems if p.startswith("hurt:")], report
    assert len(report.problems) == 1

    vectors = _vectors(1)
    with caplog.at_level(logging.WARNING), started(_settings(models_dir, data_dir)) as client:
        assert client.get("/ready").status_code == 200
        assert client.get("/collections/hurt").json()["count"] == ITEMS
        for i in range(0, ITEMS, 10):
            body = {"collection": "hurt", "vector": vectors[i].tolist(), "k": 1}
            (hit,) = client.post("/search", json=body).json()["results"]
            assert hit["id"] == f"hurt-{i}" and hit["score"] == pytest.approx(1.0, abs=1e-5)
    assert "ignoring index snapshot" in caplog.text
    assert check_data_dir(data_dir).problems == []  # the shutdown wrote a sound one


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_store_takes_only_its_collection_out_of_service(
    damage: str, models_dir: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    _lay_out(data_dir)
    store = data_dir / "collections" / "hurt" / STORE_FILE
    DAMAGES[damage](store)
    damaged = store.read_bytes()

    checked = _check_command(data_dir)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert "PROBLEM  hurt:" in checked.stdout and "ok       good: 300 item(s)" in checked.stdout

    vectors = _vectors(0)
    with started(_settings(models_dir, data_dir)) as client:
        assert client.get("/ready").status_code == 200
        storage = client.get("/ready").json()["storage"]
        assert list(storage["unavailable"]) == ["hurt"]
        listed = client.get("/collections").json()
        assert "hurt" not in [c["name"] for c in listed["collections"]]
        assert [u["name"] for u in listed["unavailable"]] == ["hurt"]
        routes = [
            ("GET", "/collections/hurt", None),
            ("GET", "/collections/hurt/items/hurt-1", None),
            ("POST", "/collections/hurt/items", {"items": [{"id": "x", "vector": [1.0] * DIM}]}),
            ("POST", "/search", {"collection": "hurt", "vector": [1.0] * DIM, "k": 1}),
            ("DELETE", "/collections/hurt", None),
            ("PUT", "/collections/hurt", {"model": "audio"}),
        ]
        for method, path, body in routes:
            r = client.request(method, path, json=body)
            expected = 409 if method == "PUT" else 503
            assert r.status_code == expected, (method, path, r.text)
            detail = r.json()["detail"]
            assert "'hurt'" in detail and "out of service" in detail, detail
        assert "cpc_collections_unavailable 1.0" in client.get("/metrics").text
        # The other collection serves as usual.
        assert client.get("/collections/good").json()["count"] == ITEMS
        body = {"collection": "good", "vector": vectors[7].tolist(), "k": 1}
        assert client.post("/search", json=body).json()["results"][0]["id"] == "good-7"
    assert store.read_bytes() == damaged, "a damaged store was written to"
    logger.info("damage %s: %d routes answered 503/409", damage, len(routes))


def test_check_passes_a_sound_folder_and_notes_leftovers(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    _lay_out(data_dir)
    (data_dir / "collections" / ".new-x-0123").mkdir()
    (data_dir / "collections" / "good" / f".{INDEX_FILE}.99.tmp").write_bytes(b"half")
    checked = _check_command(data_dir)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "ok       good: 300 item(s), snapshot current" in checked.stdout
    assert "ok       hurt: 300 item(s), snapshot current" in checked.stdout
    assert checked.stdout.count("note     ") == 2
    missing = _check_command(tmp_path / "nowhere")
    assert missing.returncode == 2 and "nowhere" in missing.stderr
