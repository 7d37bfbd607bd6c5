"""Training data sampling: shapes, determinism under a seed, and the image patch jitter."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.conftest import make_audio_folder
from tests.training.tiny import tiny_config
from training.data import list_files, load_datasets, load_image_dataset


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
