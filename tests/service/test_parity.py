"""The served vector equals the training package's torch embedding of the same file.

For each modality: the file is read through training's own path
(`load_audio`, `load_image` + `image_to_array` + `array_to_patches`,
`TextTokenizer`), run through the torch CPCModel the bundle was exported
from, c is mean-pooled and normalised, and compared with POST /embed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from service.preprocess import (
    TextTokenizer,
    array_to_patches,
    image_to_array,
    load_audio,
    load_image,
)
from tests.service.conftest import TEXTS, TinyBundle, audio_bytes, b64, image_bytes
from training.config import AudioModelConfig, ImageModelConfig, TextModelConfig
from training.data import image_spec, text_spec

MIN_COSINE = 0.9999


def torch_embedding(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """Mean-pooled, normalised c of one input (batch of one)."""
    with torch.no_grad():
        _, c = model(torch.from_numpy(x[None]))
    pooled = c.reshape(-1, c.shape[-1]).mean(dim=0).numpy().astype(np.float64)
    return pooled / np.linalg.norm(pooled)


def served(client: TestClient, model: str, inputs: list[str]) -> np.ndarray:
    r = client.post("/embed", json={"model": model, "inputs": inputs})
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["embeddings"], dtype=np.float64)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize(("seconds", "rate"), [(0.5, 16000), (1.7, 44100), (0.04, 16000)])
def test_audio_parity(
    client: TestClient,
    tiny_bundles: dict[str, TinyBundle],
    tmp_path: Path,
    seconds: float,
    rate: int,
) -> None:
    bundle = tiny_bundles["audio"]
    assert isinstance(bundle.cfg.model, AudioModelConfig)
    data = audio_bytes(seconds, rate=rate, subtype="PCM_16", channels=2)
    path = tmp_path / "clip.wav"
    path.write_bytes(data)
    wave = load_audio(path, bundle.cfg.model.sample_rate)
    expected = torch_embedding(bundle.model, wave)
    got = served(client, "audio", [b64(data)])[0]
    assert cosine(got, expected) >= MIN_COSINE


@pytest.mark.parametrize(
    ("fmt", "size"), [("PNG", (48, 40)), ("JPEG", (90, 33)), ("GIF", (20, 64))]
)
def test_image_parity(
    client: TestClient,
    tiny_bundles: dict[str, TinyBundle],
    tmp_path: Path,
    fmt: str,
    size: tuple[int, int],
) -> None:
    bundle = tiny_bundles["image"]
    assert isinstance(bundle.cfg.model, ImageModelConfig)
    data = image_bytes(fmt, *size, seed=4)
    path = tmp_path / f"picture.{fmt.lower()}"
    path.write_bytes(data)
    spec = image_spec(bundle.cfg.model)
    patches = array_to_patches(image_to_array(load_image(path), spec.image_size), spec)
    expected = torch_embedding(bundle.model, patches)
    got = served(client, "image", [b64(data)])[0]
    assert cosine(got, expected) >= MIN_COSINE


def test_text_parity(client: TestClient, tiny_bundles: dict[str, TinyBundle]) -> None:
    bundle = tiny_bundles["text"]
    assert isinstance(bundle.cfg.model, TextModelConfig)
    tokenizer = TextTokenizer.from_file(
        bundle.folder / "tokenizer.json", text_spec(bundle.cfg.model)
    )
    docs = [*TEXTS, " ".join(TEXTS * 3)]
    got = served(client, "text", docs)
    for doc, vec in zip(docs, got, strict=True):
        ids, _ = tokenizer.encode_document(doc)
        assert cosine(vec, torch_embedding(bundle.model, ids)) >= MIN_COSINE


def test_batched_audio_matches_torch_one_at_a_time(
    client: TestClient, tiny_bundles: dict[str, TinyBundle], tmp_path: Path
) -> None:
    bundle = tiny_bundles["audio"]
    clips = [audio_bytes(s, freq=f) for s, f in ((0.9, 220), (0.1, 440), (0.4, 880))]
    got = served(client, "audio", [b64(c) for c in clips])
    for i, (clip, vec) in enumerate(zip(clips, got, strict=True)):
        path = tmp_path / f"{i}.wav"
        path.write_bytes(clip)
        wave = load_audio(path, 16000)
        assert cosine(vec, torch_embedding(bundle.model, wave)) >= MIN_COSINE
