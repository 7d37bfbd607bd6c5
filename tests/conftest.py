"""Fixtures shared by the whole suite: tiny synthetic corpora made in memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

TOPICS = (
    ["cat", "dog", "bird", "fish", "mouse", "horse", "cow", "sheep"],
    ["red", "blue", "green", "yellow", "purple", "orange", "black", "white"],
    ["run", "jump", "swim", "climb", "walk", "dance", "sing", "read"],
    ["house", "tree", "river", "mountain", "road", "city", "field", "lake"],
)


def make_audio_folder(
    root: Path, files: int = 6, seconds: float = 1.0, rate: int = 16000, seed: int = 0
) -> Path:
    """Sine chords with noise, one per file, at `rate` Hz."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    for i in range(files):
        freqs = rng.uniform(100, 2000, size=3)
        wave = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) for f in freqs) / 3
        wave = wave * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t))
        wave = wave + 0.01 * rng.standard_normal(len(t))
        sf.write(root / f"clip{i}.wav", (0.5 * wave).astype(np.float32), rate, subtype="PCM_16")
    return root


def make_image_folder(root: Path, files: int = 12, size: int = 40, seed: int = 0) -> Path:
    """Stripes and blobs in random colours, PNG."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(files):
        period = rng.uniform(4, 12)
        pattern = np.sin(2 * np.pi * (xx if i % 2 else yy) / period)[..., None]
        colour = rng.uniform(0, 1, size=3)
        img = 0.5 + 0.4 * pattern * colour + 0.05 * rng.standard_normal((size, size, 3))
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(root / f"img{i}.png")
    return root


def make_text_folder(root: Path, files: int = 8, sentences: int = 12, seed: int = 0) -> Path:
    """Documents of short random sentences, each document on one topic's words."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        words = TOPICS[i % len(TOPICS)]
        doc = " ".join(
            " ".join(rng.choice(words, size=rng.integers(3, 9))).capitalize() + "."
            for _ in range(sentences)
        )
        (root / f"doc{i}.txt").write_text(doc, encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("corpora")
    return {
        "audio": make_audio_folder(root / "audio"),
        "image": make_image_folder(root / "image"),
        "text": make_text_folder(root / "text"),
    }
