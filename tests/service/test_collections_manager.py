"""CollectionManager and Collection on real files: validation, reopening, snapshots, threads."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from service.errors import Conflict, InvalidInput, NotFound, TooLarge
from service.vectors.collection import INDEX_FILE
from service.vectors.manager import CollectionManager

DIM = 16


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[CollectionManager]:
    m = CollectionManager(tmp_path, max_metadata_bytes=200)
    m.open_all()
    yield m
    m.close_all()


def unit(i: int, dim: int = DIM) -> list[float]:
    v = np.zeros(dim)
    v[i % dim] = 1.0
    v[(i * 7 + 3) % dim] += 0.5
    return v.tolist()


def test_create_describe_list_delete(manager: CollectionManager, tmp_path: Path) -> None:
    coll = manager.create("docs", "text", DIM)
    assert coll.describe() == {
        "name": "docs",
        "model": "text",
        "dim": DIM,
        "pooling": "mean",
        "count": 0,
        "index": "flat",
    }
    assert (tmp_path / "collections" / "docs" / "items.sqlite3").is_file()
    with pytest.raises(Conflict):
        manager.create("docs", "text", DIM)
    with pytest.raises(InvalidInput):
        manager.create("other", "text", DIM, index="annoy")
    manager.create("b-2", "audio", 8, index="ivf")
    assert [c.name for c in manager.list()] == ["b-2", "docs"]
    manager.delete("docs")
    assert not (tmp_path / "collections" / "docs").exists()
    with pytest.raises(NotFound):
        manager.get("docs")
    with pytest.raises(NotFound):
        manager.delete("docs")
    with pytest.raises(NotFound):
        coll.search(unit(0), 3)  # a handle kept after the delete
    assert manager.create("docs", "text", 4).dim == 4


@pytest.mark.parametrize("name", ["a/b", "..", "Upper", "x" * 65, "", "_lead", "a b", "é"])
def test_bad_collection_names(manager: CollectionManager, name: str) -> None:
    with pytest.raises(InvalidInput):
        manager.create(name, "text", DIM)


def test_item_validation(manager: CollectionManager) -> None:
    coll = manager.create("c", "m", DIM)
    bad_vectors = {
        "nan": [float("nan")] + [0.0] * (DIM - 1),
        "inf": [float("inf")] + [0.0] * (DIM - 1),
        "zero": [0.0] * DIM,
        "strings": ["1"] * DIM,
        "nested": [[1.0] * DIM],
        "empty": [],
    }
    for vector in bad_vectors.values():
        with pytest.raises(InvalidInput):
            coll.upsert([("a", vector, None)])
    with pytest.raises(Conflict, match="vector has 12 values, collection 'c' has dim 16"):
        coll.upsert([("a", [1.0] * 12, None)])
    for metadata in ([1, 2], "text", 3, {1: "non-string key"}, {"x": float("nan")}):
        with pytest.raises(InvalidInput):
            coll.upsert([("a", unit(0), metadata)])  # type: ignore[list-item]
    with pytest.raises(TooLarge):
        coll.upsert([("a", unit(0), {"blob": "x" * 300})])
    for item_id in ("", "x" * 257, "tab\there", "nl\n", "nul\x00", "del\x7f", 5):
        with pytest.raises(InvalidInput):
            coll.upsert([(item_id, unit(0), None)])  # type: ignore[list-item]
    ok_ids = ["a/b", "..", "../../etc/passwd", "ü-∑ 空白", "x" * 256]
    assert coll.upsert([(i, unit(n), None) for n, i in enumerate(ok_ids)]) == ok_ids
    assert coll.get("../../etc/passwd").id == "../../etc/passwd"
    with pytest.raises(InvalidInput):
        coll.upsert([])
    assert coll.count() == len(ok_ids)  # the failed batches wrote nothing
    with pytest.raises(InvalidInput):
        coll.search(unit(0), 0)
    with pytest.raises(InvalidInput):
        coll.search(unit(0), 3, filter=["not", "an", "object"])


def test_upsert_get_search_delete(manager: CollectionManager) -> None:
    coll = manager.create("c", "m", DIM)
    coll.upsert([(f"i{n}", unit(n), {"even": n % 2 == 0, "n": n}) for n in range(10)])
    item = coll.get("i3")
    assert item.metadata == {"even": False, "n": 3}
    assert item.vector is not None and abs(float(np.linalg.norm(item.vector)) - 1) < 1e-6
    hits = coll.search(np.array(unit(3)) * 5, 3)
    assert hits[0].id == "i3" and abs(hits[0].score - 1.0) < 1e-5 and hits[0].score <= 1.0
    assert all(h.metadata["even"] for h in coll.search(unit(3), 10, filter={"even": True}))
    assert len(coll.search(unit(3), 10, filter={"even": True})) == 5
    assert coll.search(unit(3), 10, filter={"even": 1}) == []  # true is not 1
    coll.upsert([("i3", unit(5), {"moved": True})])
    assert coll.get("i3").metadata == {"moved": True} and coll.count() == 10
    assert {h.id for h in coll.search(unit(5), 2)} == {"i3", "i5"}
    coll.delete("i3")
    with pytest.raises(NotFound):
        coll.get("i3")
    with pytest.raises(NotFound):
        coll.delete("i3")
    assert "i3" not in {h.id for h in coll.search(unit(5), 10)}


@pytest.mark.parametrize("index", ["flat", "ivf"])
def test_reopen_finds_everything(tmp_path: Path, index: str) -> None:
    m = CollectionManager(tmp_path)
    m.open_all()
    coll = m.create("c", "m", DIM, index=index)
    coll.upsert([(f"i{n}", unit(n), {"n": n}) for n in range(40)])
    coll.delete("i0")
    m.close_all()
    assert (tmp_path / "collections" / "c" / INDEX_FILE).is_file()
    m = CollectionManager(tmp_path)
    m.open_all()
    coll = m.get("c")
    assert coll.describe()["count"] == 39 and coll.describe()["index"] == index
    assert coll.search(unit(7), 1)[0].id in {f"i{n}" for n in range(1, 40) if n % DIM == 7}
    assert coll.get("i39").metadata == {"n": 39}
    m.close_all()


def test_stale_or_corrupt_snapshot_is_rebuilt(tmp_path: Path) -> None:
    m = CollectionManager(tmp_path)
    coll = m.create("c", "m", DIM)
    coll.upsert([(f"i{n}", unit(n), None) for n in range(20)])
    coll.snapshot()  # snapshot holds i0..i19
    coll.delete("i1")  # after the snapshot: the snapshot still has i1
    coll.upsert([("new", unit(3), None), ("i2", unit(9), None)])
    coll.store.close()  # a crash: no snapshot at close
    m2 = CollectionManager(tmp_path)
    m2.open_all()
    c2 = m2.get("c")
    ids = [h.id for h in c2.search(unit(1), 100)]
    assert "i1" not in ids and "new" in ids and sorted(ids) == sorted(set(ids))
    assert len(ids) == 20 and c2._index.ntotal == 20
    m2.close_all()
    snapshot = tmp_path / "collections" / "c" / INDEX_FILE
    snapshot.write_bytes(snapshot.read_bytes()[:100])  # truncated
    m3 = CollectionManager(tmp_path)
    m3.open_all()
    assert len(m3.get("c").search(unit(1), 100)) == 20
    m3.close_all()


def test_ensure(manager: CollectionManager) -> None:
    first = manager.ensure("audio", "audio", DIM)
    assert manager.ensure("audio", "audio", DIM) is first
    with pytest.raises(Conflict):
        manager.ensure("audio", "audio", DIM * 2)


def test_the_pooling_is_kept_and_ensure_follows_it(tmp_path: Path) -> None:
    m = CollectionManager(tmp_path)
    m.open_all()
    assert m.ensure("audio", "audio", DIM).info.pooling == "mean"
    m.delete("audio")
    spread = m.create("audio", "audio", 2 * DIM, pooling="stats")
    assert spread.describe()["pooling"] == "stats" and spread.dim == 2 * DIM
    spread.upsert([("a", unit(0, 2 * DIM), None)])
    with pytest.raises(InvalidInput, match="unknown pooling 'none'"):
        m.create("other", "audio", DIM, pooling="none")  # type: ignore[arg-type]
    m.close_all()
    again = CollectionManager(tmp_path)
    again.open_all()
    coll = again.get("audio")
    assert (coll.info.pooling, coll.dim, coll.count()) == ("stats", 2 * DIM, 1)
    assert again.ensure("audio", "audio", DIM) is coll  # the model's width: stats gives 2x
    with pytest.raises(Conflict, match="stats pooling"):
        again.ensure("audio", "audio", 2 * DIM)
    again.close_all()


@pytest.mark.parametrize(("index", "batches", "distinct"), [("flat", 40, 10), ("ivf", 100, 100)])
def test_concurrent_searches_never_see_partial_batches(
    tmp_path: Path, index: str, batches: int, distinct: int
) -> None:
    # ivf: 800 items cross the training threshold (39 * 16), so a retrain is swapped in
    manager = CollectionManager(tmp_path, index_params={"ivf": {"nlist": 16}})
    coll = manager.create("c", "m", DIM, index=index)
    batch = 8  # every batch writes 8 items under one tag; searches must see all 8 or none
    errors: list[BaseException] = []
    stop = threading.Event()

    def search() -> None:
        try:
            while not stop.is_set():
                counts: dict[str, int] = {}
                for hit in coll.search(unit(0), 1000):
                    counts[hit.metadata["tag"]] = counts.get(hit.metadata["tag"], 0) + 1
                assert all(c == batch for c in counts.values()), counts
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=search) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for b in range(batches):
            tag = f"b{b % distinct}"  # flat: batches 10..39 replace earlier ones id for id
            coll.upsert([(f"{tag}-{i}", unit(b + i), {"tag": tag}) for i in range(batch)])
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[0]
    assert coll.count() == distinct * batch
    if index == "ivf":
        assert coll._index.trained  # type: ignore[attr-defined]
    manager.close_all()


def test_ivf_collection_trains_snapshots_and_reopens(tmp_path: Path) -> None:
    params = {"ivf": {"nlist": 16}}
    m = CollectionManager(tmp_path, snapshot_every=500, index_params=params)
    coll = m.create("v", "m", DIM, index="ivf")
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((800, DIM))
    for start in range(0, 800, 100):
        coll.upsert([(f"i{n}", vectors[n], {"n": n}) for n in range(start, start + 100)])
    snapshot = tmp_path / "collections" / "v" / INDEX_FILE
    assert snapshot.is_file()  # written after 500 item writes
    assert coll._index.trained  # type: ignore[attr-defined]
    coll.delete("i5")
    hits = coll.search(vectors[7], 3)
    assert hits[0].id == "i7" and "i5" not in {h.id for h in coll.search(vectors[5], 800)}
    assert [h.id for h in coll.search(vectors[7], 10, filter={"n": 640})] == ["i640"]
    m.close_all()
    m = CollectionManager(tmp_path, index_params=params)
    m.open_all()
    again = m.get("v")
    assert again._index.trained and again._index.ntotal == 799  # type: ignore[attr-defined]
    assert again.search(vectors[7], 1)[0].id == "i7"
    m.close_all()
