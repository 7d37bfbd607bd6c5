"""The app as a whole: start-up and shutdown, settings, probes, /models, /metrics, /docs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.config import DEFAULT_MODELS_DIR, Settings
from service.errors import BundleError
from tests.conftest import make_audio_folder
from tests.service.conftest import TEXTS, MakeClient, TinyBundle, audio_bytes, b64, image_bytes
from tests.training.tiny import LENIENT
from training.export.onnx_export import export_model

pytestmark = pytest.mark.embed_paths("lean", "full")


def copy_bundles(models_dir: Path, target: Path, names: tuple[str, ...] = ("audio",)) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copytree(models_dir / name, target / name)
    return target


def start(models_dir: Path, tmp_path: Path, **overrides: object) -> TestClient:
    settings = Settings(models_dir=models_dir, data_dir=tmp_path / "data", **overrides)  # type: ignore[arg-type]
    return TestClient(create_app(settings))


# -- settings -------------------------------------------------------------------


def test_settings_defaults_follow_the_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(__import__("os").environ):
        if key.startswith("CPC_"):
            monkeypatch.delenv(key)
    s = Settings()
    assert s.models_dir == DEFAULT_MODELS_DIR and DEFAULT_MODELS_DIR.name == "models"
    assert (DEFAULT_MODELS_DIR.parent / "service").is_dir()
    assert s.data_dir == Path("./data") and s.api_key is None
    assert s.max_request_bytes == 26214400 and s.max_batch == 64
    assert s.max_audio_seconds == 600 and s.max_image_pixels == 40_000_000
    assert s.max_text_chars == 100_000 and s.max_k == 1000 and s.max_queue == 1024
    assert s.batch_wait_ms == 0.0 and s.max_inference_batch == 0 and s.intra_op_threads == 0
    assert s.use_quantized is False and s.warmup is True and s.cors_origins == []
    for name, field in Settings.model_fields.items():
        assert field.description, f"setting {name} has no description"


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CPC_MODELS_DIR", str(tmp_path))
    monkeypatch.setenv("CPC_MAX_BATCH", "5")
    monkeypatch.setenv("CPC_API_KEY", "secret")
    monkeypatch.setenv("CPC_CORS_ORIGINS", '["http://localhost:3000"]')
    monkeypatch.setenv("CPC_USE_QUANTIZED", "true")
    s = Settings()
    assert s.models_dir == tmp_path and s.max_batch == 5 and s.api_key == "secret"
    assert s.cors_origins == ["http://localhost:3000"] and s.use_quantized is True
    assert "secret" not in repr(s)


# -- start-up -------------------------------------------------------------------


def test_ready_after_startup(client: TestClient) -> None:
    r = client.get("/ready")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ready" and body["models"] == ["audio", "image", "text"]
    storage = {"writable": True, "detail": None, "since": None, "unavailable": {}}
    assert body["storage"] == {"backend": "embedded", **storage}
    assert client.get("/health").json() == {"status": "ok"}


def test_not_ready_before_the_lifespan_and_while_draining(models_dir: Path, tmp_path: Path) -> None:
    app = create_app(Settings(models_dir=models_dir, data_dir=tmp_path / "data"))
    bare = TestClient(app)  # not entered: the lifespan has not run
    r = bare.get("/ready")
    assert r.status_code == 503 and "loading" in r.json()["detail"]
    assert bare.get("/health").status_code == 200
    r = bare.post("/embed", json={"model": "text", "inputs": ["hi."]})
    assert r.status_code == 503 and r.json()["detail"]
    with TestClient(app) as started:
        assert started.get("/ready").status_code == 200
    assert app.state.draining is True
    r = TestClient(app).get("/ready")
    assert r.status_code == 503 and "shutting down" in r.json()["detail"]


def test_startup_creates_the_data_dir_but_not_a_missing_mount(
    models_dir: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    with TestClient(create_app(Settings(models_dir=models_dir, data_dir=data))):
        assert data.is_dir()
    unmounted = tmp_path / "volume" / "data"  # a volume that was not mounted, say
    with (
        pytest.raises(RuntimeError, match="does not exist, nor does"),
        TestClient(create_app(Settings(models_dir=models_dir, data_dir=unmounted))),
    ):
        pass
    assert not unmounted.parent.exists()


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda p: (p / "bundle.json").write_text("{not json"), "not readable JSON"),
        (
            lambda p: (p / "bundle.json").write_text(
                json.dumps({**json.loads((p / "bundle.json").read_text()), "dims": "wide"})
            ),
            "does not match the bundle schema",
        ),
        (lambda p: (p / "model.onnx").write_bytes(b"not an onnx graph"), "model.onnx"),
        (lambda p: (p / "model.onnx").unlink(), "model.onnx"),
    ],
    ids=["invalid-json", "bad-schema", "corrupt-onnx", "missing-onnx"],
)
def test_bad_bundle_fails_startup_naming_the_file(
    models_dir: Path, tmp_path: Path, damage: object, expected: str
) -> None:
    root = copy_bundles(models_dir, tmp_path / "models", ("audio", "text"))
    damage(root / "text")  # type: ignore[operator]
    with pytest.raises(BundleError) as err, start(root, tmp_path):
        pass
    assert str(root / "text") in str(err.value) and expected in str(err.value)


def test_wrong_widths_fail_at_warmup(models_dir: Path, tmp_path: Path) -> None:
    root = copy_bundles(models_dir, tmp_path / "models")
    spec = json.loads((root / "audio" / "bundle.json").read_text())
    spec["dims"]["context"] = 99
    (root / "audio" / "bundle.json").write_text(json.dumps(spec))
    with pytest.raises(BundleError, match="width"), start(root, tmp_path):
        pass


def test_duplicate_names_and_missing_folder_fail(models_dir: Path, tmp_path: Path) -> None:
    root = copy_bundles(models_dir, tmp_path / "models")
    shutil.copytree(root / "audio", root / "audio-copy")
    with pytest.raises(BundleError, match="two bundles are named 'audio'"), start(root, tmp_path):
        pass
    missing = tmp_path / "nowhere"
    with pytest.raises(BundleError, match=str(missing)), start(missing, tmp_path):
        pass


def test_folders_without_bundle_json_are_ignored(models_dir: Path, tmp_path: Path) -> None:
    root = copy_bundles(models_dir, tmp_path / "models")
    (root / "notes").mkdir()
    (root / ".cache").mkdir()
    with start(root, tmp_path, warmup=False) as c:
        assert [m["name"] for m in c.get("/models").json()["models"]] == ["audio"]


def test_empty_models_folder_starts_with_no_model(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with start(tmp_path / "empty", tmp_path) as c:
        assert c.get("/ready").status_code == 200
        assert c.get("/models").json()["models"] == []
        r = c.post("/embed", json={"modality": "text", "inputs": ["hi."]})
        assert r.status_code == 404 and "loaded models: none" in r.json()["detail"]


def test_default_model_of_a_modality(
    models_dir: Path, tmp_path: Path, tiny_bundles: dict[str, TinyBundle]
) -> None:
    """The bundle named after the modality is its default, else the first by name."""
    root = copy_bundles(models_dir, tmp_path / "models", ("text",))
    shutil.copytree(root / "text", root / "b-text")
    spec = json.loads((root / "b-text" / "bundle.json").read_text())
    (root / "b-text" / "bundle.json").write_text(json.dumps({**spec, "name": "b-text"}))
    with start(root, tmp_path) as c:
        assert c.get("/models").json()["defaults"] == {"text": "text"}
        assert c.post("/embed", json={"modality": "text", "inputs": ["Hi."]}).json()["model"] == (
            "text"
        )
    shutil.rmtree(root / "text")
    with start(root, tmp_path) as c:
        assert c.post("/embed", json={"modality": "text", "inputs": ["Hi."]}).json()["model"] == (
            "b-text"
        )


def test_quantized_copy_is_served_when_asked(
    tiny_bundles: dict[str, TinyBundle], tmp_path: Path
) -> None:
    bundle = tiny_bundles["audio"]
    root = tmp_path / "models"
    export_model(
        bundle.model,
        bundle.cfg,
        root / "audio",
        name="audio",
        quantize_weights=True,
        calibration_data=make_audio_folder(tmp_path / "calibration"),
        calibration=LENIENT,
    )
    body = {"model": "audio", "inputs": [b64(audio_bytes(0.5))]}
    with start(root, tmp_path, use_quantized=True) as c:
        info = c.get("/models/audio").json()
        assert info["quantized"] is True and info["model_file"] == "model.quant.onnx"
        quantized = c.post("/embed", json=body).json()["embeddings"][0]
    with start(root, tmp_path) as c:
        assert c.get("/models/audio").json()["quantized"] is False
        full = c.post("/embed", json=body).json()["embeddings"][0]
    assert sum(a * b for a, b in zip(quantized, full, strict=True)) > 0.9


# -- introspection ----------------------------------------------------------------


def test_models_describe_each_bundle(client: TestClient) -> None:
    models = {m["name"]: m for m in client.get("/models").json()["models"]}
    assert set(models) == {"audio", "image", "text"}
    for name, m in models.items():
        assert m["modality"] == name
        assert m["dims"] == {"context": 16, "encoder": 16}
        assert isinstance(m["version"], str) and m["version"]
        assert "onnx_max_abs_diff" in m["metrics"]
    assert models["audio"]["input"] == "audio"
    assert models["audio"]["preprocessing"]["sample_rate"] == 16000
    assert models["audio"]["preprocessing"]["hop_seconds"] == pytest.approx(0.01)
    assert models["image"]["preprocessing"]["grid"] == [7, 7]
    assert models["text"]["preprocessing"]["tokenizer_file"] == "tokenizer.json"
    assert client.get("/models/image").json() == models["image"]
    r = client.get("/models/nope")
    assert r.status_code == 404 and "audio, image, text" in r.json()["detail"]


def test_metrics_exposition(client: TestClient) -> None:
    client.post("/embed", json={"model": "text", "inputs": TEXTS})
    client.get("/models/text")
    client.get("/no/such/path")
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    for family in (
        "cpc_requests_total",
        "cpc_request_duration_seconds",
        "cpc_inference_batch_size",
        "cpc_queue_depth",
        "cpc_collection_items",
    ):
        assert f"# TYPE {family} " in text
    assert 'cpc_requests_total{route="/embed",status="200"}' in text
    assert 'cpc_requests_total{route="/models/{name}",status="200"}' in text
    assert 'cpc_requests_total{route="unmatched",status="404"}' in text
    assert "/models/text" not in text
    assert 'cpc_request_duration_seconds_bucket{le="0.005",route="/embed"}' in text
    assert 'cpc_inference_batch_size_count{model="text"}' in text
    assert "cpc_queue_depth 0.0" in text


def test_apps_have_separate_metrics(make_client: MakeClient) -> None:
    first, second = make_client(), make_client()
    first.post("/embed", json={"model": "text", "inputs": ["One."]})
    assert 'route="/embed"' in first.get("/metrics").text
    assert 'route="/embed"' not in second.get("/metrics").text


def test_docs_and_openapi(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    content = spec["paths"]["/embed"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(content)
    assert "/v1/embeddings" in spec["paths"] and "/models" in spec["paths"]


def test_cors_when_origins_are_set(make_client: MakeClient) -> None:
    c = make_client(cors_origins=["http://app.example"], api_key="k")
    r = c.options(
        "/embed",
        headers={"Origin": "http://app.example", "Access-Control-Request-Method": "POST"},
    )
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "http://app.example"


def test_image_and_audio_are_served_without_warmup(make_client: MakeClient) -> None:
    c = make_client(warmup=False)
    r = c.post("/embed", json={"model": "image", "inputs": [b64(image_bytes())]})
    assert r.status_code == 200 and len(r.json()["embeddings"][0]) == 16
