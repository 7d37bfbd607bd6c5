"""A process that writes to a data folder until it is killed: the subject of test_crashes.py.

    python -m tests.service.crash_worker MODE DATA_DIR SEED

`snapshots`: upserts of BATCH items into collection `c`, a delete of one of
them, and an index snapshot after each. `lifecycle`: creates a collection,
fills it, and deletes the one before. Before each operation it prints
`{"begin": ...}` and after it `{"ack": ...}` (one JSON line each, flushed): an
acknowledged operation is one whose ack line was read. Vectors follow from
the ids (`vector_for`), so the checker can recompute them.
"""

from __future__ import annotations

import json
import random
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from service.errors import NotFound
from service.vectors.manager import CollectionManager

DIM = 16
BATCH = 200
LIFECYCLE_ITEMS = 20
COLLECTION = "c"


def vector_for(item_id: str) -> np.ndarray:
    """The vector an item of this id is written with."""
    rng = np.random.default_rng(zlib.crc32(item_id.encode()))
    return rng.normal(size=DIM).astype(np.float32)


def _say(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def _items(ids: list[str]) -> list[tuple[str, np.ndarray, dict[str, Any]]]:
    return [(i, vector_for(i), {"id": i}) for i in ids]


def snapshots(manager: CollectionManager, seed: int) -> None:
    try:
        coll = manager.get(COLLECTION)
    except NotFound:
        _say(begin="create", name=COLLECTION)
        coll = manager.create(COLLECTION, model="audio", dim=DIM)
        _say(ack="create", name=COLLECTION)
    rng = random.Random(seed)
    mine: list[str] = []
    for n in range(10**6):
        ids = [f"s{seed}-{n}-{j}" for j in range(BATCH)]
        _say(begin="upsert", ids=ids)
        coll.upsert(_items(ids))
        _say(ack="upsert", ids=ids)
        mine.extend(ids)
        gone = mine.pop(rng.randrange(len(mine)))
        _say(begin="delete", id=gone)
        coll.delete(gone)
        _say(ack="delete", id=gone)
        _say(begin="snapshot")
        coll.snapshot()
        _say(ack="snapshot")


def lifecycle(manager: CollectionManager, seed: int) -> None:
    previous: str | None = None
    for n in range(10**6):
        name = f"t{seed}-{n}"
        _say(begin="create", name=name)
        coll = manager.create(name, model="audio", dim=DIM)
        _say(ack="create", name=name)
        ids = [f"{name}/{j}" for j in range(LIFECYCLE_ITEMS)]
        _say(begin="upsert", name=name, ids=ids)
        coll.upsert(_items(ids))
        _say(ack="upsert", name=name, ids=ids)
        if previous is not None:
            _say(begin="drop", name=previous)
            manager.delete(previous)
            _say(ack="drop", name=previous)
        previous = name


def main() -> None:
    mode, data_dir, seed = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    manager = CollectionManager(data_dir, snapshot_every=10**9)
    manager.open_all()
    _say(ready=True)
    {"snapshots": snapshots, "lifecycle": lifecycle}[mode](manager, seed)


if __name__ == "__main__":
    main()
