"""SIGKILL at random moments during snapshots, collection creation and deletion, and
`cpc-embed index`; after each kill the data folder is opened again (what a restart does)
and must hold every acknowledged write, no acknowledged delete, and no stray file.

KILLS kills per kind, each after a random delay once the process is under way, on
one data folder that grows from kill to kill. The snapshot and lifecycle writers
are tests/service/crash_worker.py (acknowledgements: its ack lines); the bulk load
is the real `cpc-embed index --vectors`, whose acknowledged rows are those a
second SQLite reader saw committed before the kill.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.errors import NotFound
from service.offline.vector_files import FORMAT
from service.vectors.collection import STORE_FILE, Collection
from service.vectors.manager import CollectionManager
from tests.service.conftest import unit
from tests.service.crash_worker import COLLECTION, DIM, vector_for

KILLS = 20
MAX_DELAY_S = 0.5  # a kill comes this long at most after the process got under way
INDEX_ITEMS = 40_000
INDEX_BATCH = 250
CHECKED = 300  # vectors compared per check (every id is checked for presence)

logger = logging.getLogger(__name__)


@dataclass
class Run:
    """One killed process: the lines it printed before the kill."""

    lines: list[dict[str, Any]] = field(default_factory=list)

    def acked(self) -> list[dict[str, Any]]:
        return [line for line in self.lines if "ack" in line]

    def in_flight(self) -> dict[str, Any] | None:
        """The operation begun and not acknowledged when the kill came (if any)."""
        begun = [line for line in self.lines if "begin" in line or "ack" in line]
        return begun[-1] if begun and "begin" in begun[-1] else None


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CPC_")}


def run_and_kill(command: list[str], rng: random.Random) -> Run:
    """Start `command`, read its JSON lines, SIGKILL it a random moment after its `ready`
    line, and return what it printed."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=_env())
    assert proc.stdout is not None
    run, under_way = Run(), threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for text in proc.stdout:
            line = json.loads(text)
            run.lines.append(line)
            if "ready" in line:
                under_way.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert under_way.wait(60), "the worker never got under way"
    time.sleep(rng.uniform(0.0, MAX_DELAY_S))
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL, "the worker ended before the kill"
    reader.join(10)
    return run


def _stray_files(data_dir: Path) -> list[str]:
    root = data_dir / "collections"
    stray = [p.name for p in root.iterdir() if p.name.startswith((".new-", ".deleted-"))]
    stray += [p.name for p in root.glob("*/.*.tmp")]
    return stray


def _reopen(data_dir: Path, leftovers: list[str] | None = None) -> CollectionManager:
    """Open the folder as a restart does (adding what the crash left to `leftovers`)."""
    if leftovers is not None and (data_dir / "collections").is_dir():
        leftovers.extend(_stray_files(data_dir))
    manager = CollectionManager(data_dir)
    manager.open_all()
    assert manager.unavailable() == {}
    assert _stray_files(data_dir) == [], "a leftover survived the restart"
    return manager


def _vector(coll: Collection, item_id: str) -> np.ndarray:
    vector = coll.get(item_id).vector
    assert vector is not None
    return vector


def _check_items(manager: CollectionManager, name: str, present: set[str]) -> None:
    """The collection holds exactly `present`, with their vectors (a sample of CHECKED),
    and its index finds exactly them."""
    coll = manager.get(name)
    stored, _ = coll.page(len(present) + 1)
    assert {item.id for item in stored} == present
    for item_id in sorted(present)[:: max(1, len(present) // CHECKED)]:
        assert np.allclose(_vector(coll, item_id), unit(vector_for(item_id)), atol=1e-6)
    if present:
        query = np.ones(DIM, dtype=np.float32)
        assert {hit.id for hit in coll.search(query, k=len(present))} == present


def _worker(mode: str, data_dir: Path, seed: int) -> list[str]:
    return [sys.executable, "-m", "tests.service.crash_worker", mode, str(data_dir), str(seed)]


@dataclass
class Tally:
    """What the kills of one test cut short, and what the restarts removed."""

    kinds: dict[str, int] = field(default_factory=dict)  # operation cut -> kills
    leftovers: list[str] = field(default_factory=list)


def killed_runs(
    mode: str, data_dir: Path, rng: random.Random, tally: Tally
) -> Iterator[tuple[Run, dict[str, Any] | None, CollectionManager]]:
    """KILLS runs of the worker in `mode`, each killed: its lines, the operation the kill
    cut short (if any) and the folder opened again (closed when the next run starts)."""
    for seed in range(KILLS):
        run = run_and_kill(_worker(mode, data_dir, seed), rng)
        cut = run.in_flight()
        kind = cut["begin"] if cut else "between"
        tally.kinds[kind] = tally.kinds.get(kind, 0) + 1
        manager = _reopen(data_dir, tally.leftovers)
        try:
            yield run, cut, manager
        finally:
            manager.close_all()


def test_sigkill_during_upserts_deletes_and_snapshots(tmp_path: Path) -> None:
    data_dir, rng = tmp_path / "data", random.Random(1)
    present: set[str] = set()
    deleted: set[str] = set()
    tally = Tally()
    for run, cut, manager in killed_runs("snapshots", data_dir, rng, tally):
        for line in run.acked():
            if line["ack"] == "upsert":
                present.update(line["ids"])
            elif line["ack"] == "delete":
                present.discard(line["id"])
                deleted.add(line["id"])
        coll = manager.get(COLLECTION)
        if cut is not None and cut["begin"] == "upsert":  # whole or not at all
            landed = [coll.store.get(i) is not None for i in cut["ids"]]
            assert all(landed) or not any(landed), "half an upsert landed"
            if all(landed):
                present.update(cut["ids"])
        if cut is not None and cut["begin"] == "delete" and coll.store.get(cut["id"]) is None:
            present.discard(cut["id"])
            deleted.add(cut["id"])
        assert not any(coll.store.get(i) is not None for i in deleted), "a delete came back"
        _check_items(manager, COLLECTION, present)
    assert tally.kinds.get("snapshot", 0) >= 1, f"no kill came during a snapshot: {tally}"
    logger.info(
        "snapshots: %d kills, cut during %s; %d leftovers removed; %d items, %d deletes checked",
        KILLS,
        tally.kinds,
        len(tally.leftovers),
        len(present),
        len(deleted),
    )


def test_sigkill_during_collection_create_and_delete(tmp_path: Path) -> None:
    data_dir, rng = tmp_path / "data", random.Random(2)
    alive: dict[str, set[str]] = {}  # acknowledged collections and their acknowledged items
    dropped: set[str] = set()
    tally = Tally()
    for run, cut, manager in killed_runs("lifecycle", data_dir, rng, tally):
        for line in run.acked():
            if line["ack"] == "create":
                alive[line["name"]] = set()
            elif line["ack"] == "upsert":
                alive[line["name"]].update(line["ids"])
            elif line["ack"] == "drop":
                alive.pop(line["name"])
                dropped.add(line["name"])
        names = {coll.name for coll in manager.list()}
        if cut is not None and cut["name"] in names and cut["begin"] == "create":
            alive[cut["name"]] = set()  # it landed whole
        if cut is not None and cut["begin"] == "upsert":
            got = manager.get(cut["name"]).count()
            assert got in (0, len(cut["ids"])), "half an upsert landed"
            if got:
                alive[cut["name"]].update(cut["ids"])
        if cut is not None and cut["begin"] == "drop" and cut["name"] not in names:
            alive.pop(cut["name"])
            dropped.add(cut["name"])
        assert names == set(alive), "a collection was lost, or a deleted one came back"
        for name, ids in alive.items():
            _check_items(manager, name, ids)
    logger.info(
        "lifecycle: %d kills, cut during %s; %d leftovers removed; %d collections, %d deleted",
        KILLS,
        tally.kinds,
        len(tally.leftovers),
        len(alive),
        len(dropped),
    )


def _vectors_file(path: Path, models_dir: Path) -> tuple[list[str], np.ndarray]:
    bundle = json.loads((models_dir / "audio" / "bundle.json").read_text())
    ids = [f"bulk/{i:06d}" for i in range(INDEX_ITEMS)]
    dim = int(bundle["dims"]["context"])
    vectors = np.random.default_rng(0).normal(size=(INDEX_ITEMS, dim)).astype(np.float32)
    meta = {"format": FORMAT, "model": "audio", "pooling": "mean"}
    empty = np.zeros(0, dtype="<U1")
    np.savez(
        path,
        ids=np.array(ids),
        vectors=vectors,
        failed_ids=empty,
        failed_reasons=empty,
        meta=np.array(json.dumps(meta)),
    )
    return ids, vectors


def _committed(store: Path, stop: threading.Event, seen: list[int]) -> None:
    """Poll the rows a second reader sees committed (the index run's acknowledgements)."""
    while not stop.is_set():
        with contextlib.suppress(sqlite3.Error):  # not created yet, or busy
            seen.append(_count(store))
        time.sleep(0.01)


def test_sigkill_during_bulk_index(tmp_path: Path, models_dir: Path) -> None:
    data_dir, rng = tmp_path / "data", random.Random(3)
    npz = tmp_path / "bulk.npz"
    ids, vectors = _vectors_file(npz, models_dir)
    expected = {item_id: unit(v) for item_id, v in zip(ids, vectors, strict=True)}
    store = data_dir / "collections" / "bulk" / STORE_FILE
    command = [
        sys.executable,
        "-m",
        "service.cli",
        "index",
        "bulk",
        "--vectors",
        str(npz),
        "--batch",
        str(INDEX_BATCH),
        "--data-dir",
        str(data_dir),
        "--models-dir",
        str(models_dir),
    ]
    kills = finished = 0
    checked = 0
    while kills < KILLS:
        before = _count(store)
        seen: list[int] = []
        stop = threading.Event()
        poller = threading.Thread(target=_committed, args=(store, stop, seen), daemon=True)
        proc = subprocess.Popen(command, env=_env(), stderr=subprocess.DEVNULL)
        poller.start()
        while not seen or max(seen) <= before:  # under way: it committed a batch
            if proc.poll() is not None:
                break
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, MAX_DELAY_S))
        proc.send_signal(signal.SIGKILL)
        code = proc.wait(30)
        stop.set()
        poller.join(10)
        if code != -signal.SIGKILL:  # it had finished: start the load again
            assert code == 0
            finished += 1
            _reset(data_dir)
            continue
        kills += 1
        manager = _reopen(data_dir)
        try:
            coll = manager.get("bulk")
            count = coll.count()
            assert count >= max(seen, default=0), "committed rows were lost"
            assert count % INDEX_BATCH == 0 or count == INDEX_ITEMS, "half a batch landed"
            stored, _ = coll.page(INDEX_ITEMS)
            for item in stored[:: max(1, len(stored) // 50)]:
                assert np.allclose(_vector(coll, item.id), expected[item.id], atol=1e-6)
                checked += 1
        finally:
            manager.close_all()
    done = subprocess.run(command, env=_env(), capture_output=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr
    manager = _reopen(data_dir)
    try:
        coll = manager.get("bulk")
        assert coll.count() == INDEX_ITEMS
        stored, _ = coll.page(INDEX_ITEMS)
        assert [item.id for item in stored] == ids
    finally:
        manager.close_all()
    logger.info(
        "index: %d kills (%d runs finished first), %d items checked", kills, finished, checked
    )


def _count(store: Path) -> int:
    """The rows of `store` committed now, as another process sees them (0 before it exists)."""
    if not store.exists():
        return 0
    db = sqlite3.connect(store, timeout=1)
    try:
        return int(db.execute("SELECT count(*) FROM items").fetchone()[0])
    finally:
        db.close()


def _reset(data_dir: Path) -> None:
    manager = CollectionManager(data_dir)
    manager.open_all()
    with contextlib.suppress(NotFound):
        manager.delete("bulk")
    manager.close_all()
