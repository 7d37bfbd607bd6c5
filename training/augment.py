"""Time-domain augmentation of audio training crops (after Kharitonov et al. 2020).

Each crop of a batch gets every chosen effect (`gain`, `noise`, `bandreject`,
`reverb`) with probability `AUGMENT_P`, drawn from the dataset's generator (so
a resumed run draws the same ones). Pitch and speed are left out on purpose.
The effects, their ranges and why: docs/training.md (Train on your own files).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

AUGMENT_P = 0.5  # chance that each chosen effect touches a given crop
GAIN_DB = 6.0  # largest level change
SNR_DB = (5.0, 30.0)  # additive white noise
BAND = (0.1, 0.3)  # share of the spectrum a band-reject removes
RT60_S = (0.1, 0.5)  # reverberation time of the synthetic room
WET = (0.2, 0.6)  # share of reverberant signal in the mix
_EPS = 1e-8


def check_augmentations(names: Sequence[str]) -> None:
    unknown = [n for n in names if n not in EFFECTS]
    if unknown:
        raise ValueError(f"unknown audio augmentation(s) {unknown}; known: {tuple(EFFECTS)}")


def _convolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """The first len(x) samples of the linear convolution x * h, through the FFT."""
    n = len(x) + len(h) - 1
    return np.fft.irfft(np.fft.rfft(x, n) * np.fft.rfft(h, n), n)[: len(x)]


def _room(rate: int, rng: np.random.Generator) -> np.ndarray:
    rt60 = rng.uniform(*RT60_S)
    t = np.arange(int(rt60 * rate)) / rate
    tail = rng.standard_normal(len(t)) * np.exp(-6.9 * t / rt60)  # -60 dB at rt60
    tail[0] = 1.0
    return tail / np.linalg.norm(tail)


def _gain(x: np.ndarray, rate: int, rng: np.random.Generator) -> np.ndarray:
    return x * 10.0 ** (rng.uniform(-GAIN_DB, GAIN_DB) / 20.0)


def _noise(x: np.ndarray, rate: int, rng: np.random.Generator) -> np.ndarray:
    power = np.mean(x**2) + _EPS
    snr = 10.0 ** (rng.uniform(*SNR_DB) / 10.0)
    return x + rng.standard_normal(len(x)) * np.sqrt(power / snr)


def _bandreject(x: np.ndarray, rate: int, rng: np.random.Generator) -> np.ndarray:
    spectrum = np.fft.rfft(x)
    width = int(rng.uniform(*BAND) * len(spectrum))
    start = int(rng.integers(0, len(spectrum) - width + 1))
    spectrum[start : start + width] = 0.0
    return np.fft.irfft(spectrum, n=len(x))


def _reverb(x: np.ndarray, rate: int, rng: np.random.Generator) -> np.ndarray:
    wet = rng.uniform(*WET)
    return (1 - wet) * x + wet * _convolve(x, _room(rate, rng))


Effect = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]  # (crop, rate, rng)
EFFECTS: dict[str, Effect] = {
    "gain": _gain,
    "noise": _noise,
    "bandreject": _bandreject,
    "reverb": _reverb,
}


def augment_batch(
    crops: np.ndarray, names: Sequence[str], rate: int, rng: np.random.Generator
) -> np.ndarray:
    """float32 [B, T] crops with the effects `names` (checked once, by `check_augmentations`
    when the dataset loads) applied independently per crop."""
    out = np.array(crops, dtype=np.float64)  # [B, T]
    for name in names:
        for b in np.flatnonzero(rng.random(len(out)) < AUGMENT_P):
            out[b] = EFFECTS[name](out[b], rate, rng)
    return out.astype(np.float32)
