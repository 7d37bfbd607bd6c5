"""The built-in corpora: manifests, determinism, labels, leak-free splits and clear errors."""

from __future__ import annotations

import argparse
import logging
import shutil
from collections import defaultdict
from pathlib import Path

import pytest
import soundfile as sf

from tests.conftest import make_text_folder
from training.corpora import CorpusError
from training.corpora.cli import add_data_command, run_data_command
from training.corpora.images import SHAPES, build_images
from training.corpora.manifest import (
    MANIFEST_NAME,
    Row,
    assign_splits,
    prepare_output,
    read_manifest,
    write_manifest,
)
from training.corpora.speech import MISSING, build_speech, make_sentences
from training.corpora.text import FORTUNES_DIR, build_fortunes, build_text_folder

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (apt-get install)"
)
needs_fortunes = pytest.mark.skipif(
    not FORTUNES_DIR.is_dir(), reason=f"{FORTUNES_DIR} is absent (apt-get install fortunes)"
)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` (relative POSIX path → bytes)."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def labels_by_split(rows: list[Row]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        found[row.split].add(row.label)
    return found


def assert_consistent(folder: Path) -> list[Row]:
    """The manifest lists exactly the data files, each once, with a valid split."""
    rows = read_manifest(folder)
    listed = [r.path for r in rows]
    assert len(listed) == len(set(listed))
    on_disk = {p for p in snapshot(folder) if not p.endswith(MANIFEST_NAME)}
    assert set(listed) == on_disk
    return rows


def test_manifest_round_trip(tmp_path: Path) -> None:
    rows = [
        Row("a/x.wav", "a", "train", {"speaker": "a", "sentence": 'He said, "hi".'}),
        Row("b/y.wav", "b", "test", {"voice": "en+m3"}),
    ]
    write_manifest(tmp_path, rows)
    header = (tmp_path / MANIFEST_NAME).read_text(encoding="utf-8").splitlines()[0]
    assert header == "path,label,split,speaker,sentence,voice"
    back = read_manifest(tmp_path)
    assert [(r.path, r.label, r.split) for r in back] == [(r.path, r.label, r.split) for r in rows]
    assert back[0].extra == {"speaker": "a", "sentence": 'He said, "hi".', "voice": ""}
    with pytest.raises(CorpusError, match="split"):
        Row("c.wav", "c", "validation")
    with pytest.raises(CorpusError, match=r"no manifest\.csv"):
        read_manifest(tmp_path / "nowhere")


def test_assign_splits_is_seeded_and_order_free() -> None:
    keys = [f"k{i}" for i in range(20)]
    splits = dict(zip(keys, assign_splits(keys, seed=3, test_fraction=0.25), strict=True))
    reversed_splits = assign_splits(keys[::-1], seed=3, test_fraction=0.25)
    assert dict(zip(keys[::-1], reversed_splits, strict=True)) == splits
    assert sum(s == "test" for s in splits.values()) == 5
    assert assign_splits(keys, seed=4, test_fraction=0.25) != list(splits.values())
    assert assign_splits(["a", "b"], seed=0, test_fraction=0.01).count("test") == 1
    assert assign_splits(["a"], seed=0, test_fraction=0.5) == ["train"]


def test_prepare_output_refuses_foreign_files(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(CorpusError, match="not empty"):
        prepare_output(tmp_path)
    assert (tmp_path / "mine.txt").exists()


def test_images_are_deterministic_labelled_and_split(tmp_path: Path) -> None:
    first = build_images(tmp_path / "a", per_class=3, size=16, seed=0)
    again = build_images(tmp_path / "b", per_class=3, size=16, seed=0)
    other = build_images(tmp_path / "c", per_class=3, size=16, seed=1, digits=False)
    assert snapshot(first) == snapshot(again)
    a, c = snapshot(first), snapshot(other)
    assert any(a[p] != c[p] for p in c if p.endswith(".png"))
    rows = assert_consistent(first)
    shapes = [r for r in rows if r.extra["set"] == "shapes"]
    digits = [r for r in rows if r.extra["set"] == "digits"]
    assert len({r.label for r in shapes}) == len(SHAPES) >= 10
    assert {r.label for r in digits} == {str(d) for d in range(10)}
    for part in (shapes, digits):
        by_split = labels_by_split(part)
        assert by_split["train"] == by_split["test"] == {r.label for r in part}
    # each set is a corpus folder of its own, with paths relative to it
    assert len(assert_consistent(first / "shapes")) == len(shapes)
    assert len(assert_consistent(first / "digits")) == len(digits) == 30
    # rebuilding over an earlier corpus replaces it
    build_images(first, per_class=2, size=16, seed=0, digits=False)
    assert len(assert_consistent(first)) == 2 * len(SHAPES)


def test_sentences_are_distinct_and_seeded() -> None:
    sentences = make_sentences(500, seed=0)
    assert len(set(sentences)) == 500
    assert make_sentences(500, seed=0) == sentences
    assert make_sentences(500, seed=1) != sentences


@needs_espeak
def test_speech_is_deterministic_and_split_by_sentence(tmp_path: Path) -> None:
    first = build_speech(tmp_path / "a", speakers=3, utterances_per_speaker=4, seed=0)
    again = build_speech(tmp_path / "b", speakers=3, utterances_per_speaker=4, seed=0)
    other = build_speech(tmp_path / "c", speakers=3, utterances_per_speaker=4, seed=1)
    assert snapshot(first) == snapshot(again)
    assert (first / MANIFEST_NAME).read_bytes() != (other / MANIFEST_NAME).read_bytes()
    rows = assert_consistent(first)
    assert len({r.label for r in rows}) >= 3
    assert len({r.extra["voice"] for r in rows}) == 3
    by_split = labels_by_split(rows)
    assert by_split["train"] == by_split["test"] == {r.label for r in rows}
    train = {r.extra["sentence"] for r in rows if r.split == "train"}
    test = {r.extra["sentence"] for r in rows if r.split == "test"}
    assert train and test and not train & test
    info = sf.info(first / rows[0].path)
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert info.duration == pytest.approx(float(rows[0].extra["seconds"]), abs=1e-3)


def test_missing_espeak_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(CorpusError) as caught:
        build_speech(tmp_path / "speech", speakers=2, utterances_per_speaker=2)
    assert str(caught.value) == MISSING == "espeak-ng is not installed: apt-get install espeak-ng"
    code = run_data_command(parse(["data", "speech", "--out", str(tmp_path / "cli")]))
    assert code == 1
    assert capsys.readouterr().err == f"cpc-embed data: error: {MISSING}\n"


def test_fortune_files_are_parsed(tmp_path: Path) -> None:
    src = tmp_path / "fortunes"
    src.mkdir()
    quotes = "\n".join(f"Quote {i} about _\bc_\ba_\bt_\bs.\n%" for i in range(10))
    (src / "cats").write_text(quotes + "\n", encoding="utf-8")
    (src / "dogs").write_text("Woof.\n%\nQuote 1 about cats.\n%\n", encoding="utf-8")
    (src / "cats.dat").write_bytes(b"\x00\x01")
    out = build_fortunes(tmp_path / "out", min_per_category=3, src=src)
    rows = assert_consistent(out)
    assert {r.label for r in rows} == {"cats"}  # dogs: 1 quote left after de-duplication
    assert (out / rows[0].path).read_text(encoding="utf-8") == "Quote 0 about cats.\n"
    with pytest.raises(CorpusError, match="apt-get install fortune-mod fortunes"):
        build_fortunes(tmp_path / "none", src=tmp_path / "no-such-folder")


@needs_fortunes
def test_fortunes_corpus_from_the_package(tmp_path: Path) -> None:
    out = build_fortunes(tmp_path / "a", max_per_category=5, seed=0)
    rows = assert_consistent(out)
    assert len({r.label for r in rows}) >= 10
    assert all(n <= 5 for n in _counts(rows).values())
    by_split = labels_by_split(rows)
    assert by_split["train"] == by_split["test"]
    train = {r.path for r in rows if r.split == "train"}
    assert not train & {r.path for r in rows if r.split == "test"}
    assert snapshot(out) == snapshot(build_fortunes(tmp_path / "b", max_per_category=5, seed=0))
    assert snapshot(out) != snapshot(build_fortunes(tmp_path / "c", max_per_category=5, seed=1))


def _counts(rows: list[Row]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for row in rows:
        counts[row.label] += 1
    return counts


def test_generic_text_folder(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_text_folder(src / "news", files=5, seed=0)
    make_text_folder(src / "sport", files=5, seed=1)
    (src / "sport" / "notes.md").write_text("not text corpus material")
    out = build_text_folder(src, tmp_path / "out", seed=0)
    rows = assert_consistent(out)
    assert {r.label for r in rows} == {"news", "sport"} and len(rows) == 10
    assert all((out / r.path).read_bytes() == (src / r.path).read_bytes() for r in rows)
    by_split = labels_by_split(rows)
    assert by_split["train"] == by_split["test"] == {"news", "sport"}
    train = {r.path for r in rows if r.split == "train"}
    assert not train & {r.path for r in rows if r.split == "test"}
    again = build_text_folder(src, tmp_path / "again", seed=0)
    assert snapshot(out) == snapshot(again)
    with pytest.raises(CorpusError, match="outside"):
        build_text_folder(src, src / "out")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cpc-embed")
    add_data_command(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_data_command_builds_and_summarises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    args = parse(["data", "images", "--out", str(tmp_path), "--per-class", "2", "--size", "12"])
    with caplog.at_level(logging.INFO, logger="training.corpora.cli"):
        assert run_data_command(args) == 0
    assert f"{2 * len(SHAPES) + 20} files, {len(SHAPES) + 10} labels" in caplog.text
    src = make_text_folder(tmp_path / "docs" / "topic", files=4)
    args = parse(["data", "text", "--out", str(tmp_path / "t"), "--src", str(src.parent)])
    assert run_data_command(args) == 0
    assert len(read_manifest(tmp_path / "t")) == 4
