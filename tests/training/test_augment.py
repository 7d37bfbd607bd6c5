"""Audio augmentation of training crops: each effect does what it says, seeded, per crop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import make_audio_folder
from tests.training.tiny import tiny_config
from training.augment import AUGMENT_P, augment_batch
from training.data import load_datasets

RATE = 16000


def tone_batch(n: int = 64, length: int = 4096) -> np.ndarray:
    t = np.arange(length) / RATE
    return np.stack([0.3 * np.sin(2 * np.pi * (200 + 10 * i) * t) for i in range(n)]).astype(
        np.float32
    )


def changed(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    return ~np.isclose(before, after, atol=1e-6).all(axis=1)


def test_effects_touch_about_half_the_crops_and_are_seeded() -> None:
    x = tone_batch()
    a = augment_batch(x, ["noise"], RATE, np.random.default_rng(0))
    b = augment_batch(x, ["noise"], RATE, np.random.default_rng(0))
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and a.shape == x.shape
    share = changed(x, a).mean()
    assert abs(share - AUGMENT_P) < 0.2
    assert not np.array_equal(a, augment_batch(x, ["noise"], RATE, np.random.default_rng(1)))


def test_gain_scales_and_noise_keeps_its_snr() -> None:
    x = tone_batch()
    gained = augment_batch(x, ["gain"], RATE, np.random.default_rng(0))
    for row, out in zip(x, gained, strict=True):
        ratio = np.linalg.norm(out) / np.linalg.norm(row)
        assert 10 ** (-6 / 20) - 1e-4 <= ratio <= 10 ** (6 / 20) + 1e-4
        np.testing.assert_allclose(out, row * ratio, atol=1e-5)
    noisy = augment_batch(x, ["noise"], RATE, np.random.default_rng(0))
    for row, out in zip(x[changed(x, noisy)], noisy[changed(x, noisy)], strict=True):
        snr = 10 * np.log10(np.mean(row**2) / np.mean((out - row) ** 2))
        assert 4.0 < snr < 31.0


def test_bandreject_empties_one_band_and_reverb_adds_a_tail() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 4096)).astype(np.float32) * 0.1
    cut = augment_batch(x, ["bandreject"], RATE, np.random.default_rng(0))
    for out in cut[changed(x, cut)]:
        power = np.abs(np.fft.rfft(out)) ** 2
        empty = power < 1e-6 * power.max()
        assert 0.09 * len(power) <= empty.sum() <= 0.31 * len(power) + 1
    click = np.zeros((16, 8000), dtype=np.float32)
    click[:, 0] = 1.0
    wet = augment_batch(click, ["reverb"], RATE, np.random.default_rng(0))
    touched = changed(click, wet)
    assert touched.any()
    assert (np.abs(wet[touched, 1000:]).sum(axis=1) > 0).all()  # a decaying tail after the click
    assert (wet[~touched, 1:] == 0).all()


def test_training_crops_are_augmented_when_asked(tmp_path: Path) -> None:
    data = make_audio_folder(tmp_path / "data", files=3)
    cfg = tiny_config("audio")
    plain = load_datasets(cfg, data, tmp_path / "run").train.sample(8, np.random.default_rng(0))
    cfg.data.audio_augment = ("noise", "reverb")
    sets = load_datasets(cfg, data, tmp_path / "run")
    noisy = sets.train.sample(8, np.random.default_rng(0))
    assert noisy.shape == plain.shape and not np.array_equal(noisy, plain)
    cfg.data.audio_augment = ("pitch",)
    with pytest.raises(ValueError, match="unknown audio augmentation"):
        load_datasets(cfg, data, tmp_path / "run")
