"""The Fashion-MNIST corpus: IDX parsing, the PNG files, labels, the official split, errors."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.training.test_corpora import assert_consistent, parse, snapshot
from training.corpora import CorpusError
from training.corpora.cli import run_data_command
from training.corpora.fashion import (
    CLASSES,
    FASHION_DIR,
    IMAGES_MAGIC,
    LABELS_MAGIC,
    build_fashion,
    read_idx,
)

needs_package = pytest.mark.skipif(
    not FASHION_DIR.is_dir(),
    reason=f"{FASHION_DIR} is absent (apt-get install dataset-fashion-mnist)",
)


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """`array` (uint8) in the IDX format: the magic, one big-endian uint32 per dimension."""
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def make_idx_folder(root: Path, *, train: int = 23, test: int = 11, gz: bool = True) -> Path:
    """A tiny Fashion-MNIST folder: random 28x28 images, labels cycling through 0..9."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for prefix, n in (("train", train), ("t10k", test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        for kind, raw in (
            ("images-idx3", idx_bytes(images, IMAGES_MAGIC)),
            ("labels-idx1", idx_bytes(labels, LABELS_MAGIC)),
        ):
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                (root / f"{name}.gz").write_bytes(gzip.compress(raw))
            else:
                (root / name).write_bytes(raw)
    return root


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_gzipped_or_not(tmp_path: Path, gz: bool) -> None:
    src = make_idx_folder(tmp_path / "src", gz=gz)
    out = build_fashion(tmp_path / "out", src=src)
    rows = assert_consistent(out)
    assert sum(r.split == "train" for r in rows) == 23
    assert sum(r.split == "test" for r in rows) == 11
    assert {r.label for r in rows} == set(CLASSES)
    name = "t10k-images-idx3-ubyte"
    raw = (src / f"{name}.gz").read_bytes() if gz else (src / name).read_bytes()
    images = np.frombuffer(gzip.decompress(raw) if gz else raw, np.uint8, offset=16)
    images = images.reshape(-1, 28, 28)
    row = next(r for r in rows if r.split == "test" and r.extra["index"] == "7")
    assert row.path == "sneaker/test-07.png" and row.label == CLASSES[7] == "sneaker"
    png = Image.open(out / row.path)
    assert (png.mode, png.size) == ("L", (28, 28))
    assert np.array_equal(np.asarray(png), images[7])  # pixels as they are


def test_official_split_per_class_cap_and_rebuild(tmp_path: Path) -> None:
    src = make_idx_folder(tmp_path / "src")
    out = build_fashion(tmp_path / "out", per_class=2, src=src)
    rows = assert_consistent(out)
    for split in ("train", "test"):
        part = [r for r in rows if r.split == split]
        counts = {c: sum(r.label == c for r in part) for c in CLASSES}
        assert max(counts.values()) == 2
        # the first images of each class in file order
        assert [int(r.extra["index"]) for r in part] == sorted(int(r.extra["index"]) for r in part)
    # train labels run 0..9, 0..9, 0, 1, 2: classes 0-2 lose their third image; test keeps all
    assert sum(r.split == "train" for r in rows) == 20
    assert sum(r.split == "test" for r in rows) == 11
    assert all(r.path == f"{r.label}/{r.split}-{int(r.extra['index']):02d}.png" for r in rows)
    assert snapshot(out) == snapshot(build_fashion(tmp_path / "again", per_class=2, src=src))
    build_fashion(out, per_class=1, src=src)  # rebuilding replaces the earlier corpus
    assert len(assert_consistent(out)) == 20


def test_bad_magic_short_data_and_missing_files(tmp_path: Path) -> None:
    src = make_idx_folder(tmp_path / "src", gz=False)
    path = src / "t10k-labels-idx1-ubyte"
    good = path.read_bytes()
    path.write_bytes(IMAGES_MAGIC.to_bytes(4, "big") + good[4:])
    with pytest.raises(CorpusError, match="not an IDX file with magic 00000801"):
        read_idx(path, LABELS_MAGIC)
    path.write_bytes(good[:-1])
    with pytest.raises(CorpusError, match=r"header says \(11,\)"):
        build_fashion(tmp_path / "out", src=src)
    assert not (tmp_path / "out").exists()  # nothing written before the data is checked
    path.unlink()
    with pytest.raises(CorpusError, match="apt-get install dataset-fashion-mnist"):
        build_fashion(tmp_path / "out", src=src)
    with pytest.raises(CorpusError, match="no train-images-idx3-ubyte"):
        build_fashion(tmp_path / "out", src=tmp_path / "nowhere")


def test_cli_builds_fashion(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    src = make_idx_folder(tmp_path / "src")
    argv = ["data", "fashion", "--out", str(tmp_path / "out"), "--src", str(src)]
    with caplog.at_level(logging.INFO, logger="training.corpora.cli"):
        assert run_data_command(parse([*argv, "--per-class", "1"])) == 0
    assert "20 files, 10 labels, 10 train / 10 test" in caplog.text
    missing = ["data", "fashion", "--out", str(tmp_path / "x"), "--src", str(tmp_path / "no")]
    assert run_data_command(parse(missing)) == 1
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().err


@needs_package
def test_the_installed_package(tmp_path: Path) -> None:
    rows = assert_consistent(build_fashion(tmp_path / "out", per_class=3))
    assert len(rows) == 60 and {r.label for r in rows} == set(CLASSES)
    assert all(Image.open(tmp_path / "out" / r.path).size == (28, 28) for r in rows)
    assert max(int(r.extra["index"]) for r in rows if r.split == "train") < 60_000
