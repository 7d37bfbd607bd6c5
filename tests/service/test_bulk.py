"""`cpc-embed embed-folder`: offline bulk embedding to a .npz, resumable, loadable by `index`.

Real onnxruntime sessions of the tiny bundles, real files: the vectors must be
what /embed returns, an interrupted run must resume without redoing the
files it saved, a rerun after adding files embeds only those, and `cpc-embed
index --vectors` must store the same items as `index --data`.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.cli import main
from service.offline.embed_folder import run_embed_folder
from service.offline.index_command import IndexerError, run_index
from service.offline.pipeline import FilePipeline, Progress
from service.offline.vector_files import VectorFileError, load_vectors
from tests.service.conftest import audio_bytes, b64, image_bytes
from tests.service.test_indexer import settings

GOOD = ["a.wav", "b.wav", "sub/c.flac", "sub/d.wav", "sub/deeper/e.wav"]


@pytest.fixture
def clips(tmp_path: Path) -> Path:
    root = tmp_path / "clips"
    (root / "sub" / "deeper").mkdir(parents=True)
    for i, name in enumerate(GOOD):
        fmt = "FLAC" if name.endswith(".flac") else "WAV"
        (root / name).write_bytes(audio_bytes(0.3 + 0.1 * i, fmt=fmt, freq=200.0 + 300 * i))
    (root / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really")
    (root / "notes.txt").write_text("A text file among the clips.")
    (root / ".hidden.wav").write_bytes(audio_bytes(0.5))
    (root / "manifest.csv").write_text("path,speaker\na.wav,m3\nsub/c.flac,f1\n")
    return root


def test_vectors_are_what_embed_returns(clips: Path, models_dir: Path, tmp_path: Path) -> None:
    s = settings(models_dir, tmp_path)
    out = tmp_path / "out" / "clips.npz"
    report = run_embed_folder("audio", clips, out, settings=s, batch=2, workers=3)
    assert (report.files, report.embedded, report.skipped, report.failed) == (7, 5, 0, 2)
    got = load_vectors(out)
    assert got.ids == GOOD and got.model == "audio" and got.dim == 16
    assert got.vectors.dtype == np.float32
    assert set(got.failed) == {"broken.wav", "notes.txt"}
    assert got.meta["layer"] == "context" and got.meta["pooling"] == "mean"
    assert not (out.parent / ".clips.npz.parts").exists()
    with TestClient(create_app(s)) as c:
        files = [b64((clips / name).read_bytes()) for name in GOOD]
        embedded = c.post("/embed", json={"model": "audio", "inputs": files}).json()
    want = np.array(embedded["embeddings"], dtype=np.float32)
    np.testing.assert_allclose(got.vectors, want, atol=1e-5)


def test_an_interrupted_run_resumes_without_redoing_saved_files(
    clips: Path, models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = settings(models_dir, tmp_path)
    straight = tmp_path / "straight.npz"
    run_embed_folder("audio", clips, straight, settings=s)
    out = tmp_path / "resumed.npz"
    prepared: list[str] = []
    original = FilePipeline.prepare
    stop_at: str | None = "d.wav"

    def spy(self: FilePipeline, path: Path) -> object:
        if path.name == stop_at:
            raise KeyboardInterrupt  # as Ctrl-C would, in the middle of the run
        prepared.append(path.name)
        return original(self, path)

    monkeypatch.setattr(FilePipeline, "prepare", spy)
    with pytest.raises(KeyboardInterrupt):
        run_embed_folder("audio", clips, out, settings=s, batch=1, workers=1, shard_size=1)
    assert not out.exists()
    assert len(list((tmp_path / ".resumed.npz.parts").glob("part-*.npz"))) == 3  # a, b, c

    prepared.clear()
    stop_at = None
    report = run_embed_folder("audio", clips, out, settings=s, batch=1, workers=1)
    assert (report.skipped, report.embedded, report.failed) == (3, 2, 2)
    assert sorted(prepared) == ["broken.wav", "d.wav", "e.wav", "notes.txt"]
    a, b = load_vectors(straight), load_vectors(out)
    assert a.ids == b.ids
    np.testing.assert_array_equal(a.vectors, b.vectors)


def test_a_rerun_embeds_only_new_files(clips: Path, models_dir: Path, tmp_path: Path) -> None:
    s = settings(models_dir, tmp_path)
    out = tmp_path / "v.npz"
    run_embed_folder("audio", clips, out, settings=s)
    (clips / "new.wav").write_bytes(audio_bytes(0.4, freq=1234.0))
    report = run_embed_folder("audio", clips, out, settings=s)
    assert (report.embedded, report.skipped, report.failed, report.count) == (1, 5, 2, 6)
    assert "new.wav" in load_vectors(out).ids


def test_another_model_into_the_same_output_is_refused(
    clips: Path, models_dir: Path, tmp_path: Path
) -> None:
    s = settings(models_dir, tmp_path)
    out = tmp_path / "v.npz"
    run_embed_folder("audio", clips, out, settings=s)
    pics = tmp_path / "pics"
    pics.mkdir()
    (pics / "p.png").write_bytes(image_bytes())
    with pytest.raises(VectorFileError, match="holds vectors of model 'audio', not 'image'"):
        run_embed_folder(str(models_dir / "image"), pics, out, settings=s)


def test_index_loads_the_output_like_it_indexes_the_folder(
    clips: Path, models_dir: Path, tmp_path: Path
) -> None:
    s = settings(models_dir, tmp_path)
    out = tmp_path / "v.npz"
    run_embed_folder("audio", clips, out, settings=s)
    manifest = clips / "manifest.csv"
    report = run_index("fromfile", None, settings=s, vectors=out, metadata_csv=manifest)
    assert (report.model, report.added, report.failed, report.count) == ("audio", 5, 0, 5)
    assert run_index("fromfile", None, settings=s, vectors=out).skipped == 5
    run_index("fromdir", clips, settings=s)
    with pytest.raises(IndexerError, match="holds vectors of model 'audio', not 'image'"):
        run_index("fromfile", None, settings=s, vectors=out, model="image")
    with TestClient(create_app(s)) as c:
        for name in GOOD:
            a = c.get(f"/collections/fromfile/items/{name}").json()
            b = c.get(f"/collections/fromdir/items/{name}").json()
            np.testing.assert_allclose(a["vector"], b["vector"], atol=1e-6)
            assert a["metadata"] == b["metadata"]
        assert c.get("/collections/fromfile/items/a.wav").json()["metadata"] == {"speaker": "m3"}


def test_command_line(
    clips: Path, models_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "cli.npz"
    models = ["--models-dir", str(models_dir)]
    assert main(["embed-folder", "audio", str(clips), "--out", str(out), *models]) == 0
    assert len(load_vectors(out).ids) == 5
    common = ["--data-dir", str(tmp_path / "data"), *models]
    assert main(["index", "c", "--vectors", str(out), *common]) == 0
    with caplog.at_level(logging.ERROR):
        assert main(["embed-folder", "nope", str(clips), "--out", str(out), *models]) == 2
        assert main(["embed-folder", "audio", str(clips), "--out", str(tmp_path / "x.csv")]) == 2
        assert main(["index", "c", "--vectors", str(clips / "a.wav"), *common]) == 2
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "neither a bundle folder nor a bundle" in messages
    assert "must name a .npz file" in messages
    assert "not a cpc-embed vectors file" in messages


def test_stats_pooling_from_embed_folder_to_a_collection(
    clips: Path, models_dir: Path, tmp_path: Path
) -> None:
    s = settings(models_dir, tmp_path)
    out = tmp_path / "stats.npz"
    args = ["embed-folder", "audio", str(clips), "--out", str(out), "--pooling", "stats"]
    assert main([*args, "--models-dir", str(models_dir), "--batch", "2"]) == 0
    got = load_vectors(out)
    assert got.ids == GOOD and got.dim == 32 and got.pooling == "stats"
    np.testing.assert_allclose(np.linalg.norm(got.vectors, axis=1), 1.0, atol=1e-5)
    files = [b64((clips / name).read_bytes()) for name in GOOD]
    with TestClient(create_app(s)) as c:
        r = c.post("/embed", json={"model": "audio", "inputs": files, "pooling": "stats"})
    np.testing.assert_allclose(got.vectors, r.json()["embeddings"], atol=1e-5)
    with pytest.raises(VectorFileError, match="pooling 'stats', not 'mean'"):
        run_embed_folder("audio", clips, out, settings=s)  # mean vectors into a stats file

    assert run_index("spread", None, settings=s, vectors=out).added == 5
    mean_out = tmp_path / "mean.npz"
    run_embed_folder("audio", clips, mean_out, settings=s)
    with pytest.raises(IndexerError, match="'spread' holds stats pooled vectors, not mean"):
        run_index("spread", None, settings=s, vectors=mean_out)
    with pytest.raises(IndexerError, match="holds stats pooled vectors, not last"):
        run_index("other", None, settings=s, vectors=out, pooling="last")
    with TestClient(create_app(s)) as c:
        described = c.get("/collections/spread").json()
        assert (described["pooling"], described["dim"], described["count"]) == ("stats", 32, 5)
        r = c.post("/search", json={"collection": "spread", "input": files[3], "k": 2})
        assert r.json()["results"][0]["id"] == GOOD[3]


def test_an_empty_stats_output_has_the_stats_dim(models_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "e.npz"
    run_embed_folder("audio", empty, out, settings=settings(models_dir, tmp_path), pooling="stats")
    assert load_vectors(out).vectors.shape == (0, 32)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_draws_a_bar_on_a_terminal() -> None:
    stream = _Terminal()
    progress = Progress(4, "embed-folder x", stream=stream)
    progress.update(2)
    progress.update(2)
    progress.close()
    text = stream.getvalue()
    assert text.startswith("\r") and text.endswith("\n")
    assert "[########################] 4/4 files" in text


def test_the_benchmark_runs_end_to_end(models_dir: Path, tmp_path: Path) -> None:
    from bench import embed_folder

    args = ["--models-dir", str(models_dir), "--modalities", "audio", "--limit", "4"]
    assert embed_folder.main([*args, "--concurrency", "2", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "embed_folder.json").read_text())
    (row,) = report["results"]
    assert row["offline"]["files"] == row["service"]["files"] == 4
    assert row["service"]["errors"] == 0 and row["offline"]["failed"] == 0
    assert "| audio (synthetic) | 4 |" in (tmp_path / "embed_folder.md").read_text()
