"""The real-voices corpus: speaker folders copied, labelled, split per speaker without leaks."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from training.corpora import CorpusError
from training.corpora.cli import add_data_command, run_data_command
from training.corpora.manifest import MANIFEST_NAME, read_manifest
from training.corpora.voices import (
    SOURCES,
    Source,
    build_voices,
    folder_source,
    sources_named,
)

RATE = 8000


def write_clip(path: Path, seconds: float, freq: float, fmt: str = "WAV") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * RATE)) / RATE
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), RATE, format=fmt)


def make_speakers(root: Path, counts: dict[str, int]) -> Path:
    """`root/<speaker>/...` with nested folders, a silence/ folder and too-short clips."""
    for k, (speaker, n) in enumerate(counts.items()):
        for i in range(n):
            sub = "digits" if i % 3 == 0 else ""
            write_clip(root / speaker / sub / f"p{i:03d}.wav", 0.5 + 0.01 * i, 200 + 50 * k)
        write_clip(root / speaker / "silence" / "1.wav", 1.0, 1)
        write_clip(root / speaker / "click.wav", 0.05, 300)
        (root / speaker / "notes.txt").write_text("not audio")
    return root


def test_voices_are_copied_labelled_and_split_per_speaker(tmp_path: Path) -> None:
    src = make_speakers(tmp_path / "src", {"anna": 10, "bert": 12, "carl": 3})
    out = build_voices(tmp_path / "out", sources=[folder_source(src)], min_files=5, seed=0)
    rows = read_manifest(out)
    # carl has too few recordings; silence/, the click and the text file are left out
    assert Counter(r.label for r in rows) == {"anna": 10, "bert": 12}
    assert not any("silence" in r.path or "click" in r.path for r in rows)
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert on_disk == {r.path for r in rows} | {MANIFEST_NAME}
    # nested folders are flattened into the name; the bytes are the original file's
    nested = next(r for r in rows if r.extra["original"] == "anna/digits/p000.wav")
    assert nested.path == "anna/digits__p000.wav"
    assert (out / nested.path).read_bytes() == (src / "anna/digits/p000.wav").read_bytes()
    assert float(nested.extra["seconds"]) == pytest.approx(0.5, abs=1e-3)
    # each speaker is split on its own: 20% test, both splits hold both speakers
    for speaker, n in (("anna", 10), ("bert", 12)):
        mine = [r for r in rows if r.label == speaker]
        assert sum(r.split == "test" for r in mine) == round(0.2 * n)
    train = {r.path for r in rows if r.split == "train"}
    test = {r.path for r in rows if r.split == "test"}
    assert train and test and not train & test
    # the same seed gives the same corpus; another seed another split
    again = build_voices(tmp_path / "again", sources=[folder_source(src)], min_files=5, seed=0)
    assert [(r.path, r.split) for r in read_manifest(again)] == [(r.path, r.split) for r in rows]
    other = build_voices(tmp_path / "other", sources=[folder_source(src)], min_files=5, seed=1)
    assert [r.split for r in read_manifest(other)] != [r.split for r in rows]


def test_packaged_sources_prefix_their_speakers(tmp_path: Path) -> None:
    games = make_speakers(tmp_path / "kt", {"fr": 6, "ru": 6})
    asterisk = make_speakers(tmp_path / "ast", {"en_US_f_Allison": 6})
    sources = [
        Source("asterisk", asterisk, SOURCES["asterisk"].packages),
        Source("ktuberling", games, SOURCES["ktuberling"].packages),
    ]
    rows = read_manifest(build_voices(tmp_path / "out", sources=sources, min_files=5))
    assert {r.label for r in rows} == {"en_US_f_Allison", "ktuberling-fr", "ktuberling-ru"}
    assert {r.extra["source"] for r in rows} == {"asterisk", "ktuberling"}


def test_missing_packages_and_unknown_sources_are_one_line_errors(tmp_path: Path) -> None:
    gone = Source("asterisk", tmp_path / "nowhere", SOURCES["asterisk"].packages)
    with pytest.raises(CorpusError, match="apt-get install asterisk-core-sounds"):
        build_voices(tmp_path / "out", sources=[gone])
    with pytest.raises(CorpusError, match="unknown voice source"):
        sources_named(["asterisk", "youtube"])
    one = make_speakers(tmp_path / "one", {"solo": 6})
    with pytest.raises(CorpusError, match="needs two"):
        build_voices(tmp_path / "out", sources=[folder_source(one)], min_files=5)
    assert not (tmp_path / "out").exists()


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cpc-embed")
    add_data_command(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_data_voices_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = make_speakers(tmp_path / "src", {"a": 5, "b": 5})
    argv = ["data", "voices", "--out", str(tmp_path / "out"), "--src", str(src)]
    assert run_data_command(parse([*argv, "--min-files", "5"])) == 0
    assert len(read_manifest(tmp_path / "out")) == 10
    assert run_data_command(parse([*argv, "--min-files", "6"])) == 1
    assert "needs two" in capsys.readouterr().err
    bad = ["data", "voices", "--out", str(tmp_path / "x"), "--sources", "asterisk,nope"]
    assert run_data_command(parse(bad)) == 1
    assert "unknown voice source" in capsys.readouterr().err


@pytest.mark.skipif(
    not any(SOURCES["asterisk"].speaker_folders()),
    reason="the Asterisk sound packages are not installed (.ci/run installs them)",
)
def test_installed_asterisk_voices(tmp_path: Path) -> None:
    rows = read_manifest(build_voices(tmp_path / "voices"))
    per_speaker = Counter(r.label for r in rows)
    assert len(per_speaker) >= 2 and min(per_speaker.values()) >= 100
    assert {r.extra["source"] for r in rows} == {"asterisk"}
    info = sf.info(tmp_path / "voices" / rows[0].path)
    assert info.channels == 1 and info.samplerate == 8000
