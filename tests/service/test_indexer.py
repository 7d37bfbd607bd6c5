"""`cpc-embed index`: bulk-embedding a folder into a collection without a server.

The vectors must be what /embed gives for the same files, ids are POSIX paths
relative to the folder, metadata comes from a CSV, a rerun skips what is stored,
bad files are counted, and the command and a server never share a data folder.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.cli import main
from service.config import Settings
from service.offline.index_command import IndexerError, run_index
from service.vectors.datalock import DataDirBusy, DataDirLock
from tests.service.conftest import TEXTS, audio_bytes, b64, image_bytes


@pytest.fixture
def clips(tmp_path: Path) -> Path:
    root = tmp_path / "clips"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.wav").write_bytes(audio_bytes(0.5, freq=220.0))
    (root / "sub" / "b.wav").write_bytes(audio_bytes(0.6, freq=880.0))
    (root / "sub" / "deeper" / "c.flac").write_bytes(
        audio_bytes(0.4, fmt="FLAC", subtype="PCM_16", freq=1500.0)
    )
    (root / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really")
    (root / "notes.txt").write_text("A text file among the clips.")
    (root / ".hidden.wav").write_bytes(audio_bytes(0.5))
    (root / "manifest.csv").write_text("path,speaker,take\na.wav,m3,1\n./sub/b.wav,f1,\n")
    return root


def settings(models_dir: Path, tmp_path: Path) -> Settings:
    return Settings(models_dir=models_dir, data_dir=tmp_path / "data")


def test_index_a_folder_then_serve_it(clips: Path, models_dir: Path, tmp_path: Path) -> None:
    s = settings(models_dir, tmp_path)
    report = run_index("clips", clips, settings=s, batch=2)
    assert (report.collection, report.model) == ("clips", "audio")
    assert (report.files, report.added, report.skipped, report.failed) == (5, 3, 0, 2)
    assert report.count == 3
    assert {line.split(":")[0] for line in report.failures} == {"broken.wav", "notes.txt"}

    with TestClient(create_app(s)) as c:
        assert c.get("/collections/clips").json() == {
            "name": "clips",
            "model": "audio",
            "dim": 16,
            "pooling": "mean",
            "count": 3,
            "index": "flat",
        }
        got = c.get("/collections/clips/items/sub/b.wav").json()
        assert got["metadata"] == {"speaker": "f1"}
        assert c.get("/collections/clips/items/a.wav").json()["metadata"] == {
            "speaker": "m3",
            "take": "1",
        }
        assert c.get("/collections/clips/items/sub/deeper/c.flac").json()["metadata"] == {}
        data = (clips / "sub" / "b.wav").read_bytes()
        embedded = c.post("/embed", json={"model": "audio", "inputs": [b64(data)]}).json()
        assert np.allclose(got["vector"], embedded["embeddings"][0], atol=1e-5)
        r = c.post("/search", json={"collection": "clips", "input": b64(data), "k": 1})
        assert r.json()["results"][0]["id"] == "sub/b.wav"
        assert c.get("/collections/clips/items/.hidden.wav").status_code == 404
        assert c.get("/collections/clips/items/manifest.csv").status_code == 404


def test_a_rerun_skips_what_is_stored(clips: Path, models_dir: Path, tmp_path: Path) -> None:
    s = settings(models_dir, tmp_path)
    run_index("clips", clips, settings=s)
    again = run_index("clips", clips, settings=s)
    assert (again.added, again.skipped, again.failed, again.count) == (0, 3, 2, 3)
    (clips / "sub" / "new.wav").write_bytes(audio_bytes(0.5, freq=330.0))
    more = run_index("clips", clips, settings=s)
    assert (more.added, more.skipped, more.count) == (1, 3, 4)


def test_cli_with_a_metadata_csv_and_text(
    models_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, text in enumerate(TEXTS):
        (docs / f"doc{i}.txt").write_text(text)
    table = tmp_path / "meta.csv"
    table.write_text("id,lang\ndoc0.txt,en\ndoc2.txt,fr\nmissing.txt,de\n")
    args = ["index", "docs", "--data", str(docs), "--metadata", str(table), "--batch", "2"]
    args += ["--data-dir", str(tmp_path / "data"), "--models-dir", str(models_dir)]
    with caplog.at_level(logging.INFO):
        assert main(args) == 0
    assert any("added 3" in r.getMessage() for r in caplog.records)
    with TestClient(create_app(settings(models_dir, tmp_path))) as c:
        assert c.get("/collections/docs").json()["model"] == "text"
        assert c.get("/collections/docs/items/doc2.txt").json()["metadata"] == {"lang": "fr"}
        r = c.post("/search", json={"collection": "docs", "input": TEXTS[1], "k": 1})
        assert r.json()["results"][0]["id"] == "doc1.txt"


def test_index_with_stats_pooling(clips: Path, models_dir: Path, tmp_path: Path) -> None:
    args = ["index", "voices", "--data", str(clips), "--pooling", "stats"]
    args += ["--data-dir", str(tmp_path / "data"), "--models-dir", str(models_dir)]
    assert main(args) == 0
    s = settings(models_dir, tmp_path)
    assert run_index("voices", clips, settings=s).skipped == 3  # it keeps its pooling
    run_index("plain", clips, settings=s)
    with pytest.raises(IndexerError, match="'plain' holds mean pooled vectors, not stats"):
        run_index("plain", clips, settings=s, pooling="stats")
    with TestClient(create_app(s)) as c:
        described = c.get("/collections/voices").json()
        assert (described["pooling"], described["dim"], described["count"]) == ("stats", 32, 3)
        data = (clips / "sub" / "b.wav").read_bytes()
        body = {"model": "audio", "inputs": [b64(data)], "pooling": "stats"}
        embedded = c.post("/embed", json=body).json()["embeddings"][0]
        got = c.get("/collections/voices/items/sub/b.wav").json()["vector"]
        np.testing.assert_allclose(got, embedded, atol=1e-5)
        r = c.post("/search", json={"collection": "voices", "input": b64(data), "k": 1})
        assert r.json()["results"][0]["id"] == "sub/b.wav"


def test_progress_is_logged_without_tqdm(
    clips: Path,
    models_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm -> ImportError
    with caplog.at_level(logging.INFO, logger="service.offline.index_command"):
        run_index("clips", clips, settings=settings(models_dir, tmp_path))
    messages = [r.getMessage() for r in caplog.records]
    assert "index clips: 5 file(s) to embed" in messages
    assert "index clips: 5/5 files" in messages
    assert any(m.startswith("skipping notes.txt: it is text, but model") for m in messages)


def test_the_model_and_the_modality(models_dir: Path, tmp_path: Path) -> None:
    pics = tmp_path / "pics"
    pics.mkdir()
    for seed in range(3):
        (pics / f"{seed}.png").write_bytes(image_bytes(seed=seed))
    s = settings(models_dir, tmp_path)
    assert run_index("pics", pics, settings=s).model == "image"
    with pytest.raises(IndexerError, match="holds vectors of model 'image', not 'audio'"):
        run_index("pics", pics, settings=s, model="audio")
    with pytest.raises(IndexerError, match="no bundle named 'nope'"):
        run_index("other", pics, settings=s, model="nope")
    report = run_index("forced", pics, settings=s, model="audio", index="ivf")
    assert (report.model, report.added, report.failed) == ("audio", 0, 3)


@pytest.mark.parametrize(
    ("setup", "words"),
    [
        (lambda d: None, "no files"),
        (lambda d: (d / "manifest.csv").write_text("file,x\na,b\n"), "`path` or `id` column"),
    ],
    ids=["empty", "csv-without-key"],
)
def test_usage_errors_exit_2(
    models_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    setup: object,
    words: str,
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    setup(folder)  # type: ignore[operator]
    common = ["--data-dir", str(tmp_path / "data"), "--models-dir", str(models_dir)]
    with caplog.at_level(logging.ERROR):
        assert main(["index", "c", "--data", str(folder), *common]) == 2
    assert any(words in r.getMessage() for r in caplog.records)
    with caplog.at_level(logging.ERROR):
        assert main(["index", "Bad/Name", "--data", str(folder), *common]) == 2
        assert main(["index", "c", "--data", str(tmp_path / "nowhere"), *common]) == 2
    assert any("invalid collection name" in r.getMessage() for r in caplog.records)
    assert any("not a folder" in r.getMessage() for r in caplog.records)


def test_index_and_a_server_never_share_a_data_dir(
    clips: Path, models_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = settings(models_dir, tmp_path)
    common = ["--data-dir", str(s.data_dir), "--models-dir", str(models_dir)]
    with TestClient(create_app(s)) as c:
        with caplog.at_level(logging.ERROR):
            assert main(["index", "clips", "--data", str(clips), *common]) == 2
        assert any("server is using" in r.getMessage() for r in caplog.records)
        assert c.get("/collections/clips").status_code == 404
        assert main(["index", "clips", "--data", str(clips), "--force", *common]) == 0
    with (
        DataDirLock(s.data_dir, exclusive=True),
        pytest.raises(DataDirBusy, match="cpc-embed index"),
        TestClient(create_app(s)),
    ):
        pass
    with TestClient(create_app(s)) as c:  # restarted: it sees what --force wrote
        assert c.get("/collections/clips").json()["count"] == 3
