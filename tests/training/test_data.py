"""Training data sampling: shapes, determinism under a seed, the image patch jitter and
the share of each data folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import make_audio_folder, make_text_folder
from tests.training.tiny import tiny_config
from training.data import DataError, list_files, load_datasets, load_image_dataset


def test_samples_follow_the_seed(corpora: dict[str, Path], tmp_path: Path) -> None:
    for modality in ("audio", "image", "text"):
        data = load_datasets(tiny_config(modality), corpora[modality], tmp_path / modality).train
        a = data.sample(3, np.random.default_rng(5))
        b = data.sample(3, np.random.default_rng(5))
        assert a.shape[0] == 3 and np.array_equal(a, b)


def test_patch_jitter_changes_patches_independently(corpora: dict[str, Path]) -> None:
    model = tiny_config("image").model
    files = list_files(corpora["image"], (".png",))
    plain = load_image_dataset(files, model).sample(2, np.random.default_rng(0))
    jittered = load_image_dataset(files, model, patch_jitter=0.4).sample(
        2, np.random.default_rng(0)
    )
    assert plain.shape == jittered.shape == (2, 7, 7, 3, 8, 8)
    ratio = jittered.std(axis=(3, 4, 5)) / (plain.std(axis=(3, 4, 5)) + 1e-6)
    assert ratio.std() > 0.05  # each patch got its own gain


def test_split_keeps_only_the_manifest_split(tmp_path: Path) -> None:
    data = make_audio_folder(tmp_path / "d", files=4)
    rows = ["path,label,split"] + [
        f"clip{i}.wav,x,{'train' if i < 3 else 'test'}" for i in range(4)
    ]
    (data / "manifest.csv").write_text("\n".join(rows) + "\n")
    names = [p.name for p in list_files(data, (".wav",), "train")]
    assert names == ["clip0.wav", "clip1.wav", "clip2.wav"]


def _flat_images(root: Path, files: int, value: int) -> Path:
    root.mkdir(parents=True)
    for i in range(files):
        Image.fromarray(np.full((40, 40, 3), value, dtype=np.uint8)).save(root / f"img{i}.png")
    return root


def test_folder_weights_give_each_folder_its_share(tmp_path: Path) -> None:
    dark = _flat_images(tmp_path / "dark", 30, 20)
    bright = _flat_images(tmp_path / "bright", 3, 235)
    cfg = tiny_config("image")
    cfg.data.val_fraction = 0.0

    def bright_share(weights: tuple[float, ...]) -> float:
        cfg.data.folder_weights = weights
        data = load_datasets(cfg, [dark, bright], tmp_path / "run").train
        batch = data.sample(600, np.random.default_rng(0))
        return float((batch.mean(axis=(1, 2, 3, 4, 5)) > 0.5).mean())

    assert abs(bright_share(()) - 3 / 33) < 0.04  # pooled: as many as it holds
    assert abs(bright_share((1.0, 1.0)) - 0.5) < 0.06
    assert abs(bright_share((1.0, 3.0)) - 0.75) < 0.06
    assert bright_share((1.0, 0.0)) == 0.0


def test_folder_weights_pad_text_parts_to_one_width(
    corpora: dict[str, Path], tmp_path: Path
) -> None:
    long = make_text_folder(tmp_path / "long", files=4, sentences=12, seed=1)
    cfg = tiny_config("text")
    cfg.data.folder_weights = (1.0, 1.0)
    data = load_datasets(cfg, [corpora["text"], long], tmp_path / "run").train
    a, b = (data.sample(16, np.random.default_rng(3)) for _ in range(2))
    assert a.shape[:2] == (16, cfg.data.window) and np.array_equal(a, b)


def test_folder_weights_must_match_the_folders(corpora: dict[str, Path], tmp_path: Path) -> None:
    cfg = tiny_config("image")
    for weights, message in (((1.0,), "1 weights for 2 data folders"), ((0.0, 0.0), "not all")):
        cfg.data.folder_weights = weights
        with pytest.raises(DataError, match=message):
            load_datasets(cfg, [corpora["image"], corpora["image"]], tmp_path / "run")
