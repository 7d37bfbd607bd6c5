"""Fixtures of the service tests: tiny untrained bundles and clients of apps that serve them.

The bundles are exported once per session from tiny random models (audio,
image and text, named after their modality) with the training package's own
exporter; the torch models stay available for the parity tests. `make_client`
builds an app with any settings and enters `TestClient` as a context manager,
so the lifespan (loading, warm-up) runs. The media helpers make test files in
memory.

Embedding paths: a module marked `@pytest.mark.embed_paths("lean", "full")` runs its tests
once with the lean path of `service.api.fast_path` (the default) and once with
CPC_LEAN_EMBED_PATH off, so JSON /embed and /v1/embeddings are checked on both.

Collection backends: the apps of `client` and `make_client` keep their
collections on `backend`, "embedded" unless a module marks its tests
`@pytest.mark.backends("embedded", "milvus")` (a test narrows it with its own
marker and a `reason`). A Milvus app gets a prefix of its own (per module for
`client`, per test for `make_client`), whose collections are dropped at the
end, on the session's server (`milvus_uri`: CPC_TEST_MILVUS_URI's, or one
started for the session; requested only by Milvus tests).
"""

from __future__ import annotations

import base64
import io
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
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
from service.vectors.backend import CollectionBackend
from service.vectors.manager import CollectionManager
from service.vectors.milvus import MilvusCollections
from tests.conftest import TOPICS
from tests.service.live import LiveServer
from tests.service.milvus_server import ENV_URI, find_executable, start_milvus
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


# -- collection backends ----------------------------------------------------------------

BACKENDS = ("embedded", "milvus")
READY_TIMEOUT_S = 120.0  # a Milvus app opens its collections in the background after start-up


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "backends(*names, reason=None): run the test once per collection backend named "
        "(embedded, milvus) with `client` and `make_client` on it; a test that runs on fewer "
        "backends than its module says why",
    )
    config.addinivalue_line(
        "markers",
        "embed_paths(*names): run the module's tests with the lean embedding path and/or "
        "the full one (lean, full)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize `backend` (per module, so one `client` serves each backend) by the
    closest `backends` marker, and `embed_path` by the `embed_paths` marker."""
    paths = metafunc.definition.get_closest_marker("embed_paths")
    if paths is not None and "embed_path" in metafunc.fixturenames:
        metafunc.parametrize("embed_path", list(paths.args), indirect=True, scope="module")
    markers = list(metafunc.definition.iter_markers("backends"))  # the closest first
    if not markers or "backend" not in metafunc.fixturenames:
        return
    names = list(markers[0].args)
    where = metafunc.definition.nodeid
    if not names or not set(names) <= set(BACKENDS):
        raise ValueError(f"{where}: backends {names}; known: {BACKENDS}")
    narrowed = any(set(names) < set(m.args) for m in markers[1:])
    if narrowed and not markers[0].kwargs.get("reason"):
        raise ValueError(f"{where}: runs on {names} only; say why (reason=...)")
    metafunc.parametrize("backend", names, indirect=True, scope="module")


@pytest.fixture(scope="session")
def milvus_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Milvus server for the whole session: CPC_TEST_MILVUS_URI's, or one started here."""
    given = os.environ.get(ENV_URI)
    if given:
        yield given
        return
    if find_executable() is None:
        pytest.skip("no milvus-server executable: `pip install milvus` (in the dev extra)")
    server = start_milvus(tmp_path_factory.mktemp("milvus"))
    try:
        yield server.uri
    finally:
        server.stop()


@pytest.fixture(scope="module")
def backend(request: pytest.FixtureRequest) -> str:
    """The collection backend of the apps of `client` and `make_client` (see the docstring)."""
    return str(getattr(request, "param", "embedded"))


@pytest.fixture(scope="module")
def embed_path(request: pytest.FixtureRequest) -> str:
    """Which path serves JSON /embed and /v1/embeddings in the apps of this module."""
    name = str(getattr(request, "param", "lean"))
    if name not in ("lean", "full"):
        raise ValueError(f"embed path {name!r}; known: lean, full")
    return name


def drop_collections(uri: str, prefix: str) -> None:
    """Delete every collection under `prefix` in the Milvus server at `uri`."""
    manager = MilvusCollections(uri, prefix=prefix)
    try:
        for coll in manager.list():
            manager.delete(coll.name)
    finally:
        manager.close_all()


@contextmanager
def backend_store(
    request: pytest.FixtureRequest, backend: str, data_dir: Path
) -> Iterator[dict[str, Any]]:
    """The settings that put an app's collections on `backend`: `data_dir`, or a Milvus
    prefix of their own (its collections dropped at the end)."""
    if backend == "embedded":
        yield {"data_dir": data_dir}
        return
    if backend != "milvus":
        raise ValueError(f"unknown collection backend {backend!r}")
    uri = request.getfixturevalue("milvus_uri")
    prefix = f"t{uuid.uuid4().hex[:8]}_"
    try:
        yield {
            "data_dir": data_dir,  # unused by the Milvus backend: nothing lands in the cwd
            "collection_backend": "milvus",
            "milvus_uri": uri,
            "milvus_prefix": prefix,
        }
    finally:
        drop_collections(uri, prefix)


def wait_ready(client: TestClient, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Wait until the app answers /ready with 200 (a Milvus app opens its collections in
    the background after start-up); fail saying why it did not."""
    deadline = time.monotonic() + timeout_s
    while True:
        r = client.get("/ready")
        if r.status_code == 200:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"the app was not ready after {timeout_s:.0f} s: {r.text}")
        time.sleep(0.05)


@contextmanager
def started(settings: Settings, raise_server_exceptions: bool = True) -> Iterator[TestClient]:
    """A client of a started app of `settings`, ready to serve collections; stopped at exit."""
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=raise_server_exceptions) as client:
        if settings.collection_backend == "milvus":
            wait_ready(client)
        yield client


def open_store(settings: Settings) -> CollectionBackend:
    """The collections that an app of `settings` serves, opened without an app (to lay out
    a store before an app starts on it); close it with `close_all`."""
    store: CollectionBackend
    if settings.collection_backend == "milvus":
        store = MilvusCollections(settings.milvus_uri, prefix=settings.milvus_prefix)
    else:
        store = CollectionManager(settings.data_dir)
    store.open_all()
    return store


MakeSettings = Callable[..., Settings]
MakeClient = Callable[..., TestClient]


@pytest.fixture
def make_settings(
    request: pytest.FixtureRequest,
    backend: str,
    embed_path: str,
    models_dir: Path,
    tmp_path: Path,
) -> Iterator[MakeSettings]:
    """`make_settings(**overrides)`: settings of an app of this test on `backend`. The apps
    of one test share one store (data folder or Milvus prefix): a second one is a restart."""
    with backend_store(request, backend, tmp_path / "data") as store:

        def make(**overrides: Any) -> Settings:
            lean = {"lean_embed_path": embed_path == "lean"}
            return Settings(**{"models_dir": models_dir, **store, **lean, **overrides})

        yield make


@pytest.fixture
def make_client(make_settings: MakeSettings) -> Iterator[MakeClient]:
    """`make_client(**settings)`: a started client; stopped at the end of the test."""
    with ExitStack() as stack:

        def make(raise_server_exceptions: bool = True, **overrides: Any) -> TestClient:
            settings = make_settings(**overrides)
            return stack.enter_context(started(settings, raise_server_exceptions))

        yield make


@pytest.fixture(scope="module")
def client(
    request: pytest.FixtureRequest,
    backend: str,
    embed_path: str,
    models_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TestClient]:
    """One started app with the default settings on `backend`, shared by a test module."""
    lean = embed_path == "lean"
    with (
        backend_store(request, backend, tmp_path_factory.mktemp("data")) as store,
        started(Settings(models_dir=models_dir, lean_embed_path=lean, **store)) as c,
    ):
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
