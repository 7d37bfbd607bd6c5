"""The training loop on tiny synthetic corpora: learning, exact resume, curves, bad data."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import make_audio_folder
from tests.training.tiny import tiny_config
from training.data import DataError, load_datasets
from training.train import MAX_NONFINITE_IN_A_ROW, TrainingDiverged, build_trainer, train

MODALITIES = ("audio", "image", "text")


@pytest.mark.parametrize("modality", MODALITIES)
def test_a_few_steps_lower_the_loss(
    modality: str, corpora: dict[str, Path], tmp_path: Path
) -> None:
    cfg = tiny_config(modality)
    trainer = build_trainer(cfg, load_datasets(cfg, corpora[modality], tmp_path))
    losses = [trainer.step().loss.item() for _ in range(40)]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.05, losses


def _weights(trainer_model: torch.nn.Module, criterion: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        **{f"m.{k}": v for k, v in trainer_model.state_dict().items()},
        **{f"c.{k}": v for k, v in criterion.state_dict().items()},
    }


@pytest.mark.parametrize("modality", MODALITIES)
def test_resume_continues_exactly(modality: str, corpora: dict[str, Path], tmp_path: Path) -> None:
    n = 5
    straight = train(
        tiny_config(modality, steps=2 * n), corpora[modality], tmp_path / "a", progress=False
    )
    first = train(tiny_config(modality, steps=n), corpora[modality], tmp_path / "b", progress=False)
    assert first.step_count == n
    resumed = train(
        None, corpora[modality], tmp_path / "b", resume=True, steps=2 * n, progress=False
    )
    assert resumed.step_count == 2 * n
    a = _weights(straight.model, straight.criterion)
    b = _weights(resumed.model, resumed.criterion)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_interrupted_run_resumes_exactly(corpora: dict[str, Path], tmp_path: Path) -> None:
    straight = train(
        tiny_config("audio", steps=8), corpora["audio"], tmp_path / "a", progress=False
    )
    train(
        tiny_config("audio", steps=8), corpora["audio"], tmp_path / "b", stop_at=3, progress=False
    )
    resumed = train(None, corpora["audio"], tmp_path / "b", resume=True, progress=False)
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_run_folder_has_checkpoint_config_and_curves(
    corpora: dict[str, Path], tmp_path: Path
) -> None:
    train(tiny_config("audio", steps=4), corpora["audio"], tmp_path, progress=False)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert {"model", "criterion", "optimizer", "scheduler", "rng", "config", "step"} <= set(ckpt)
    assert ckpt["config"]["model"]["channels"] == 16
    rows = (tmp_path / "curves.csv").read_text().splitlines()
    assert rows[0].split(",")[:3] == ["step", "loss", "mi_bound"]
    assert "acc_k1" in rows[0] and "acc_k4" in rows[0]
    assert len(rows) == 3  # steps 2 and 4
    assert (tmp_path / "curves.png").stat().st_size > 1000
    assert (tmp_path / "config.json").is_file()


def test_empty_folder_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no wav/flac/ogg/mp3 files"):
        load_datasets(tiny_config("audio"), tmp_path / "empty", tmp_path / "run")


def test_unreadable_files_are_skipped_with_a_count(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = make_audio_folder(tmp_path / "data", files=3)
    (data / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    (data / "noise.mp3").write_bytes(b"\x00" * 100)
    with caplog.at_level(logging.WARNING):
        sets = load_datasets(tiny_config("audio"), data, tmp_path / "run")
    assert sets.train.describe()["files"] == 3
    assert "skipped 2 of 5 audio files" in caplog.text


def test_nothing_readable_is_fatal(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.wav").write_bytes(b"not audio at all")
    with pytest.raises(DataError, match="none of the 1 audio files could be read"):
        load_datasets(tiny_config("audio"), data, tmp_path / "run")


def test_window_longer_than_every_file(tmp_path: Path) -> None:
    data = make_audio_folder(tmp_path / "data", files=2, seconds=0.1)
    with pytest.raises(DataError, match="longer than every file"):
        load_datasets(tiny_config("audio"), data, tmp_path / "run")


def test_bf16_autocast_trains_on_the_cpu_with_an_fp32_loss(
    corpora: dict[str, Path], tmp_path: Path
) -> None:
    cfg = tiny_config("audio")
    cfg.precision = "bf16"  # forced: this CPU may lack native bf16, autocast still works
    trainer = build_trainer(cfg, load_datasets(cfg, corpora["audio"], tmp_path))
    assert trainer.amp == torch.bfloat16
    out = trainer.step()
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())


def test_several_folders_train_as_one(tmp_path: Path) -> None:
    first = make_audio_folder(tmp_path / "a", files=3)
    second = make_audio_folder(tmp_path / "b", files=2, seed=1)
    cfg = tiny_config("audio")
    cfg.data.val_fraction = 0.0
    sets = load_datasets(cfg, [first, second], tmp_path / "run")
    assert sets.train.describe()["files"] == 5
    assert sets.description["folders"] == [str(first.resolve()), str(second.resolve())]
    assert sets.description["folder"] == str(first.resolve())  # the default calibration data
    assert "folders" not in load_datasets(cfg, first, tmp_path / "run").description
    with pytest.raises(DataError, match="does not exist"):
        load_datasets(cfg, [first, tmp_path / "missing"], tmp_path / "run")


def test_text_chunks_give_one_sentence_documents_several_steps(tmp_path: Path) -> None:
    data = tmp_path / "short"
    data.mkdir()
    for i in range(12):
        (data / f"q{i}.txt").write_text(f"A single sentence of quote number {i} ends here.")
    cfg = tiny_config("text")
    cfg.model.chunk_tokens = 4  # type: ignore[union-attr]
    sets = load_datasets(cfg, data, tmp_path / "run")
    units = sets.train.describe()["sentences"]
    assert units >= 2 * sets.train.describe()["documents"]  # several units per one-sentence text
    trainer = build_trainer(cfg, sets)
    batch = sets.train.sample(4, np.random.default_rng(0))
    assert batch.shape[2] <= 4  # each unit holds at most chunk_tokens ids
    assert np.isfinite(trainer.step().loss.item())


def test_a_non_finite_step_is_skipped_and_a_diverged_run_stops(
    corpora: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = tiny_config("audio")
    trainer = build_trainer(cfg, load_datasets(cfg, corpora["audio"], tmp_path))
    trainer.step()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    good = trainer.data.train.sample

    def nan_batch(n: int, rng: np.random.Generator) -> np.ndarray:
        return np.full((n, 4096), np.nan, np.float32)

    setattr(trainer.data.train, "sample", nan_batch)  # noqa: B010
    with caplog.at_level(logging.WARNING):
        trainer.step()
    assert "non-finite loss or gradient, update skipped" in caplog.text
    assert trainer.step_count == 2 and trainer.skipped_steps == 1
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, before[k]), k  # the bad step changed nothing
    setattr(trainer.data.train, "sample", good)  # noqa: B010
    trainer.step()
    assert trainer.nonfinite_in_a_row == 0
    assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values())
    setattr(trainer.data.train, "sample", nan_batch)  # noqa: B010
    with pytest.raises(TrainingDiverged, match="20 steps in a row"):
        for _ in range(MAX_NONFINITE_IN_A_ROW):
            trainer.step()
