"""ItemStore on a real SQLite file: writes, atomicity, persistence, seqs and filters."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from service.errors import InvalidInput, NotFound
from service.vectors.filters import json_equal, parse_filter
from service.vectors.store import CollectionInfo, ItemStore, Original

DIM = 4


def vec(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ItemStore]:
    s = ItemStore.create(tmp_path / "items.sqlite3", CollectionInfo("c", "m", DIM, "flat"))
    yield s
    s.close()


def test_create_sets_wal_and_meta(store: ItemStore) -> None:
    assert store.info.name == "c" and store.info.dim == DIM and store.info.index == "flat"
    assert store.info.created_at
    conn = sqlite3.connect(store.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    assert store.count() == 0 and store.version() == 0


def test_upsert_get_replace_delete(store: ItemStore) -> None:
    out = store.upsert([("a", vec(1, 0, 0, 0), {"x": 1}), ("b", vec(0, 1, 0, 0), {})])
    assert [(i, old) for i, _, old in out] == [("a", None), ("b", None)]
    item = store.get("a")
    assert item is not None and item.metadata == {"x": 1}
    np.testing.assert_array_equal(item.vector, vec(1, 0, 0, 0))
    ((_, new_seq, old_seq),) = store.upsert([("a", vec(0, 0, 1, 0), {"x": 2})])
    assert old_seq == out[0][1] and new_seq > out[1][1]
    assert store.get("a").metadata == {"x": 2}  # type: ignore[union-attr]
    assert store.count() == 2
    assert store.delete("a") == new_seq
    assert store.get("a") is None and store.count() == 1
    with pytest.raises(NotFound):
        store.delete("a")
    assert store.version() == 3


def test_duplicate_id_in_one_batch_last_wins(store: ItemStore) -> None:
    out = store.upsert([("a", vec(1, 0, 0, 0), {"n": 1}), ("a", vec(0, 1, 0, 0), {"n": 2})])
    assert out[1][2] == out[0][1]
    assert store.get("a").metadata == {"n": 2}  # type: ignore[union-attr]
    assert store.count() == 1


def test_failing_batch_writes_nothing(store: ItemStore) -> None:
    store.upsert([("keep", vec(1, 0, 0, 0), {})])
    before = (store.count(), store.version(), store.all_seqs().tolist())
    with pytest.raises(InvalidInput):  # the CHECK on id length fails on the third row
        store.upsert(
            [("n1", vec(1, 0, 0, 0), {}), ("n2", vec(0, 1, 0, 0), {}), ("", vec(1, 1, 0, 0), {})]
        )
    assert (store.count(), store.version(), store.all_seqs().tolist()) == before
    assert store.get("n1") is None
    with pytest.raises(InvalidInput):  # validated before the transaction
        store.upsert([("n1", vec(1, 0, 0, 0), {}), ("n2", np.zeros(3, np.float32), {})])
    assert store.count() == 1


def test_persists_and_seqs_never_reused(tmp_path: Path) -> None:
    path = tmp_path / "items.sqlite3"
    s = ItemStore.create(path, CollectionInfo("c", "m", DIM, "ivf"))
    seqs = [seq for _, seq, _ in s.upsert([(f"i{n}", vec(n, 1, 0, 0), {"n": n}) for n in range(5)])]
    top = s.delete("i4")  # the highest seq
    s.close()
    s = ItemStore.open(path)
    assert s.info.index == "ivf" and s.count() == 4
    assert s.get("i2").metadata == {"n": 2}  # type: ignore[union-attr]
    ((_, fresh, _),) = s.upsert([("i4", vec(1, 1, 1, 1), {})])
    assert fresh > top and fresh not in seqs
    chunks = list(s.iter_all(batch=2))
    assert [len(c[0]) for c in chunks] == [2, 2, 1]
    all_seqs = np.concatenate([c[0] for c in chunks])
    assert all_seqs.tolist() == s.all_seqs().tolist() == sorted(all_seqs.tolist())
    assert chunks[0][1].shape == (2, DIM) and chunks[0][1].dtype == np.float32
    s.close()
    with pytest.raises(NotFound):
        s.count()


def test_get_by_seqs_and_vectors_for(store: ItemStore) -> None:
    out = store.upsert([(f"i{n}", vec(n, 1, 0, 0), {"n": n}) for n in range(4)])
    seqs = [seq for _, seq, _ in out]
    rows = store.get_by_seqs([seqs[2], 999, seqs[0]])
    assert [r.id for r in rows] == ["i2", "i0"] and rows[0].vector is None
    got_seqs, got_vecs = store.vectors_for(np.array([seqs[3], seqs[1], 12345]))
    assert got_seqs.tolist() == [seqs[1], seqs[3]]
    np.testing.assert_array_equal(got_vecs[1], vec(3, 1, 0, 0))


def test_filter_json_equality(store: ItemStore) -> None:
    metas = {
        "int": {"v": 1},
        "float": {"v": 1.0},
        "true": {"v": True},
        "str": {"v": "1"},
        "null": {"v": None},
        "absent": {},
        "list": {"v": [1, {"a": True}]},
        "obj": {"v": {"a": 1, "b": [2]}},
        "dots": {"a.b": "x", 'q"k': 5},
    }
    out = store.upsert([(name, vec(1, 0, 0, 0), m) for name, m in metas.items()])
    by_seq = {seq: name for name, seq, _ in out}

    def names(where: dict) -> set[str]:
        cond = parse_filter(where)
        assert cond is not None
        return {by_seq[s] for s in store.filter_seqs(cond).tolist()}

    assert names({"v": 1}) == {"int", "float"}
    assert names({"v": 1.0}) == {"int", "float"}
    assert names({"v": True}) == {"true"}
    assert names({"v": False}) == set()
    assert names({"v": "1"}) == {"str"}
    assert names({"v": None}) == {"null"}
    assert names({"v": [1.0, {"a": True}]}) == {"list"}
    assert names({"v": [1, {"a": 1}]}) == set()
    assert names({"v": {"eq": {"b": [2], "a": 1}}}) == {"obj"}
    assert names({"a.b": "x"}) == {"dots"}
    assert names({'q"k': 5}) == {"dots"}
    assert names({"v": 1, "a.b": "x"}) == set()
    assert parse_filter({}) is None  # an empty filter is no filter: nothing narrowed


def test_json_equal_rules() -> None:
    assert json_equal(1, 1.0) and not json_equal(1, True) and not json_equal(0, False)
    assert json_equal({"a": [1, None]}, {"a": [1.0, None]})
    assert not json_equal("1", 1) and not json_equal(None, 0) and not json_equal([1], [1, 2])


# -- originals ----------------------------------------------------------------------


def test_originals_are_written_replaced_and_deleted_with_their_items(store: ItemStore) -> None:
    pic, clip = Original("image/jpeg", b"\xff\xd8jpeg"), Original("audio/wav", b"RIFFwav")
    store.upsert([("a", vec(1, 0, 0, 0), {}), ("b", vec(0, 1, 0, 0), {})], [pic, None])
    assert store.get_original("a") == pic and store.get_original("b") is None
    assert store.original_types(["a", "b", "zz", "a"]) == {"a": "image/jpeg"}
    store.upsert([("a", vec(0, 0, 1, 0), {})], [clip])
    assert store.get_original("a") == clip
    store.upsert([("a", vec(0, 0, 1, 0), {})])  # replaced without one: the old one goes
    assert store.get_original("a") is None
    store.upsert([("b", vec(0, 1, 0, 0), {})], [pic])
    store.delete("b")
    assert store.get_original("b") is None and store.original_types(["b"]) == {}


def test_an_id_twice_in_a_batch_keeps_the_last_original(store: ItemStore) -> None:
    pic = Original("image/jpeg", b"one")
    store.upsert([("a", vec(1, 0, 0, 0), {}), ("a", vec(0, 1, 0, 0), {})], [pic, None])
    assert store.get_original("a") is None
    store.upsert([("a", vec(1, 0, 0, 0), {}), ("a", vec(0, 1, 0, 0), {})], [None, pic])
    assert store.get_original("a") == pic


def test_a_failed_batch_writes_no_original(store: ItemStore) -> None:
    with pytest.raises(InvalidInput):
        store.upsert(
            [("ok", vec(1, 0, 0, 0), {}), ("x" * 300, vec(0, 1, 0, 0), {})],
            [Original("text/plain", b"ok"), None],
        )
    assert store.get_original("ok") is None and store.count() == 0
    with pytest.raises(ValueError):
        store.upsert([("a", vec(1, 0, 0, 0), {})], [])


def test_a_store_file_from_before_originals_opens_and_keeps_them(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    old = ItemStore.create(path, CollectionInfo("c", "m", DIM, "flat"))
    old.upsert([("a", vec(1, 0, 0, 0), {"n": 1})])
    old.close()
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE originals")  # what a file of the previous version holds
    conn.commit()
    conn.close()
    reopened = ItemStore.open(path)
    try:
        assert reopened.get("a") is not None and reopened.get_original("a") is None
        reopened.upsert([("b", vec(0, 1, 0, 0), {})], [Original("text/plain", b"hi")])
        assert reopened.get_original("b") == Original("text/plain", b"hi")
    finally:
        reopened.close()


def test_the_pooling_is_stored_and_older_files_are_mean_pooled(tmp_path: Path) -> None:
    stats = ItemStore.create(
        tmp_path / "stats.sqlite3", CollectionInfo("s", "m", 8, "flat", "stats")
    )
    stats.close()
    reopened = ItemStore.open(tmp_path / "stats.sqlite3")
    assert (reopened.info.pooling, reopened.info.format) == ("stats", 2)
    reopened.close()
    path = tmp_path / "old.sqlite3"
    ItemStore.create(path, CollectionInfo("c", "m", DIM, "flat")).close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone() == ("1",)
    conn.execute(
        "DELETE FROM meta WHERE key = 'pooling'"
    )  # what a file of the previous version holds
    conn.commit()
    conn.close()
    old = ItemStore.open(path)
    assert (old.info.pooling, old.info.format) == ("mean", 1)
    old.close()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO meta (key, value) VALUES ('pooling', 'max')")
    conn.commit()
    conn.close()
    with pytest.raises(ValueError, match="unknown pooling 'max'"):
        ItemStore.open(path)
