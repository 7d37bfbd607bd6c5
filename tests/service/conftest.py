"""Fixtures of the service tests: tiny untrained bundles and clients of apps that serve them.

The bundles are exported once per session from tiny random models (audio,
image and text, named after their modality) with the training package's own
exporter; the torch models stay available for the parity tests. `make_client`
builds an app with any settings and enters `TestClient` as a context manager,
so the lifespan (loading, warm-up) runs. The media helpers make test files in
memory.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from fastapi.testclient import TestClient
from PIL import Image

from service.api.app import create_app
from service.config import Settings
from tests.conftest import TOPICS
from tests.service.live import LiveServer
from tests.training.tiny import tiny_config
from training.config import TrainConfig
from training.export.onnx_export import export_model
from training.models.cpc import CPCModel, build_model
from training.tokenizer import train_tokenizer

MODALITIES = ("audio", "image", "text")
SR = 16000


@dataclass
class TinyBundle:
    """An exported bundle and the torch model it came from."""

    folder: Path
    model: CPCModel
    cfg: TrainConfig


def tokenizer_corpus() -> list[str]:
    rng = np.random.default_rng(0)
    return [
        " ".join(rng.choice(words, size=6)).capitalize() + "."
        for _ in range(40)
        for words in TOPICS
    ]


@pytest.fixture(scope="session")
def tiny_bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TinyBundle]:
    root = tmp_path_factory.mktemp("models")
    out: dict[str, TinyBundle] = {}
    for seed, modality in enumerate(MODALITIES):
        cfg = tiny_config(modality)
        torch.manual_seed(seed)
        model = build_model(cfg).eval()
        tokenizer = None
        if modality == "text":
            tokenizer = train_tokenizer(tokenizer_corpus(), 300, root.parent / "tok" / "tok.json")
        export_model(model, cfg, root / modality, name=modality, tokenizer_path=tokenizer)
        out[modality] = TinyBundle(root / modality, model, cfg)
    return out


@pytest.fixture(scope="session")
def models_dir(tiny_bundles: dict[str, TinyBundle]) -> Path:
    return next(iter(tiny_bundles.values())).folder.parent


MakeClient = Callable[..., TestClient]


@pytest.fixture
def make_client(models_dir: Path, tmp_path: Path) -> Iterator[MakeClient]:
    """`make_client(**settings)`: a started client; stopped at the end of the test."""
    with ExitStack() as stack:

        def make(raise_server_exceptions: bool = True, **overrides: Any) -> TestClient:
            values: dict[str, Any] = {"models_dir": models_dir, "data_dir": tmp_path / "data"}
            values.update(overrides)
            app = create_app(Settings(**values))
            client = TestClient(app, raise_server_exceptions=raise_server_exceptions)
            return stack.enter_context(client)

        yield make


@pytest.fixture(scope="module")
def client(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One started app with the default settings, shared by a test module."""
    settings = Settings(models_dir=models_dir, data_dir=tmp_path_factory.mktemp("data"))
    with TestClient(create_app(settings)) as c:
        yield c


# -- media made in memory -------------------------------------------------------


def sine(seconds: float, rate: int = SR, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    """A sine with a slow tremolo (so frames differ), float32 [n] or [n, channels]."""
    t = np.arange(round(seconds * rate)) / rate
    wave = 0.4 * np.sin(2 * np.pi * freq * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    wave = wave.astype(np.float32)
    if channels == 1:
        return wave
    return np.stack([wave * (0.5 + 0.5 * k / channels) for k in range(channels)], axis=1)


def audio_bytes(
    seconds: float = 0.5,
    rate: int = SR,
    fmt: str = "WAV",
    subtype: str | None = "PCM_16",
    channels: int = 1,
    freq: float = 440.0,
) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, sine(seconds, rate, freq, channels), rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def picture(width: int = 48, height: int = 40, seed: int = 0) -> Image.Image:
    """Colour stripes and noise, RGB."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = 0.5 + 0.4 * np.sin(2 * np.pi * (xx + 2 * yy) / rng.uniform(6, 14))[..., None]
    arr = base * rng.uniform(0.3, 1.0, size=3) + 0.05 * rng.standard_normal((height, width, 3))
    return Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8), mode="RGB")


def image_bytes(
    fmt: str = "PNG", width: int = 48, height: int = 40, seed: int = 0, mode: str = "RGB"
) -> bytes:
    img = picture(width, height, seed)
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def data_uri(data: bytes, media_type: str) -> str:
    return f"data:{media_type};base64,{b64(data)}"


TEXTS = [
    "The cat runs and the dog jumps. A bird sings in the tree.",
    "Red and blue houses line the river. The city is quiet. Fish swim in the lake!",
    "One short sentence.",
]


# -- collections ------------------------------------------------------------------


def send_json(client: TestClient, method: str, url: str, body: Any) -> Any:
    """`body` as JSON that may hold NaN and Infinity (httpx's `json=` refuses them)."""
    content = json.dumps(body, allow_nan=True)
    headers = {"content-type": "application/json"}
    return client.request(method, url, content=content, headers=headers)


def unit(vector: Any) -> np.ndarray:
    """`vector` L2-normalised, as float32 (what a collection stores)."""
    v = np.asarray(vector, dtype=np.float64)
    return (v / np.linalg.norm(v)).astype(np.float32)


def random_vectors(n: int, dim: int = 16, seed: int = 0) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    return [[float(x) for x in row] for row in rng.standard_normal((n, dim))]


@pytest.fixture
def servers() -> Iterator[list[LiveServer]]:
    """Server processes a test starts; each is stopped (SIGKILL if needed) at the end."""
    started: list[LiveServer] = []
    try:
        yield started
    finally:
        for server in started:
            server.stop()
