"""POST /embed: every input format and option, JSON and multipart, order and batching."""

from __future__ import annotations

import base64
import io
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
from service.inference.wire import from_base64
from service.preprocess.text import TextTokenizer
from tests.service.conftest import (
    SR,
    TEXTS,
    TinyBundle,
    audio_bytes,
    b64,
    data_uri,
    image_bytes,
    picture,
    sine,
)
from tests.training.tiny import tiny_config
from training.data import text_spec
from training.export.onnx_export import export_model
from training.models.cpc import build_model

pytestmark = pytest.mark.embed_paths("lean", "full")

DIM = 16
HOP = 160
MIN_SAMPLES = 465
GRID = [7, 7]


def embed(client: TestClient, **body: Any) -> dict[str, Any]:
    r = client.post("/embed", json=body)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def vectors(client: TestClient, **body: Any) -> np.ndarray:
    return np.asarray(embed(client, **body)["embeddings"], dtype=np.float64)


def audio_steps(samples: int) -> int:
    n = samples
    for k, s in zip((10, 8, 4, 4, 4), (5, 4, 2, 2, 2), strict=True):
        n = (n - k) // s + 1
    return n


def assert_unit_vectors(vecs: np.ndarray) -> None:
    assert vecs.shape[-1] == DIM
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=-1), 1.0, atol=1e-5)


def mp3_supported() -> bool:
    try:
        audio_bytes(0.1, fmt="MP3", subtype="MPEG_LAYER_III")
    except Exception:
        return False
    return True


# -- audio ------------------------------------------------------------------------


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT"])
def test_wav_subtypes(client: TestClient, subtype: str) -> None:
    data = audio_bytes(0.5, fmt="WAV", subtype=subtype)
    out = embed(client, model="audio", inputs=[b64(data)])
    assert out["model"] == "audio" and out["modality"] == "audio" and out["dim"] == DIM
    assert_unit_vectors(np.asarray(out["embeddings"]))


def test_wav_float_and_pcm_agree(client: TestClient) -> None:
    float_wav = audio_bytes(0.5, subtype="FLOAT")
    pcm24 = audio_bytes(0.5, subtype="PCM_24")
    a, b = vectors(client, model="audio", inputs=[b64(float_wav), b64(pcm24)])
    assert float(a @ b) > 0.9999


@pytest.mark.parametrize(
    ("fmt", "subtype"), [("FLAC", "PCM_16"), ("FLAC", "PCM_24"), ("OGG", "VORBIS")]
)
def test_flac_and_ogg(client: TestClient, fmt: str, subtype: str) -> None:
    data = audio_bytes(0.5, fmt=fmt, subtype=subtype)
    assert_unit_vectors(vectors(client, model="audio", inputs=[b64(data)]))


def test_flac_equals_the_same_pcm_wav(client: TestClient) -> None:
    wav = audio_bytes(0.5, fmt="WAV", subtype="PCM_16")
    flac = audio_bytes(0.5, fmt="FLAC", subtype="PCM_16")
    a, b = vectors(client, model="audio", inputs=[b64(wav), b64(flac)])
    np.testing.assert_allclose(a, b, atol=1e-5)  # libsndfile scales 16-bit FLAC a hair apart


@pytest.mark.skipif(not mp3_supported(), reason="this libsndfile cannot write MP3 to test with")
def test_mp3(client: TestClient) -> None:
    data = audio_bytes(0.5, fmt="MP3", subtype="MPEG_LAYER_III")
    assert_unit_vectors(vectors(client, model="audio", inputs=[b64(data)]))


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 44100, 48000])
def test_any_sample_rate(client: TestClient, rate: int) -> None:
    data = audio_bytes(0.5, rate=rate)
    out = embed(client, model="audio", inputs=[b64(data)], pooling="none")
    assert abs(out["steps"][0] - audio_steps(SR // 2)) <= 1  # resampled to 16 kHz


@pytest.mark.parametrize("channels", [2, 3, 6])
def test_any_channel_count_is_mixed_to_mono(client: TestClient, channels: int) -> None:
    multi = sine(0.5, channels=channels)
    buf = io.BytesIO()
    sf.write(buf, multi, SR, format="WAV", subtype="FLOAT")
    mono = io.BytesIO()
    sf.write(mono, multi.mean(axis=1), SR, format="WAV", subtype="FLOAT")
    a, b = vectors(client, model="audio", inputs=[b64(buf.getvalue()), b64(mono.getvalue())])
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_audio_pooling_none_reports_steps_and_hop(client: TestClient) -> None:
    lengths = [MIN_SAMPLES, 4000, 8000]
    inputs = []
    for n in lengths:
        buf = io.BytesIO()
        sf.write(buf, sine(n / SR), SR, format="WAV", subtype="FLOAT")
        inputs.append(b64(buf.getvalue()))
    out = embed(client, model="audio", inputs=inputs, pooling="none")
    assert out["steps"] == [audio_steps(n) for n in lengths]
    assert out["steps"][0] == 1
    assert out["hop_seconds"] == pytest.approx(HOP / SR)
    for per_step, steps in zip(out["embeddings"], out["steps"], strict=True):
        arr = np.asarray(per_step)
        assert arr.shape == (steps, DIM)
        assert_unit_vectors(arr)


# -- images -----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_image_formats(client: TestClient, fmt: str) -> None:
    out = embed(client, model="image", inputs=[b64(image_bytes(fmt))])
    assert out["modality"] == "image"
    assert_unit_vectors(np.asarray(out["embeddings"]))


def test_lossless_formats_agree(client: TestClient) -> None:
    vecs = vectors(
        client, model="image", inputs=[b64(image_bytes(f)) for f in ("PNG", "BMP", "TIFF")]
    )
    np.testing.assert_allclose(vecs[0], vecs[1], atol=1e-6)
    np.testing.assert_allclose(vecs[0], vecs[2], atol=1e-6)


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("L", "PNG"), ("1", "PNG"), ("P", "PNG"), ("RGBA", "PNG"), ("LA", "PNG"),
     ("CMYK", "JPEG"), ("I;16", "PNG"), ("RGBA", "WEBP"), ("I", "TIFF"), ("F", "TIFF")],
)  # fmt: skip
def test_image_modes(client: TestClient, mode: str, fmt: str) -> None:
    assert_unit_vectors(vectors(client, model="image", inputs=[b64(image_bytes(fmt, mode=mode))]))


def test_gif_first_frame_is_used(client: TestClient) -> None:
    frames = [picture(seed=s).convert("P") for s in (1, 2)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    single = io.BytesIO()
    frames[0].save(single, format="GIF")
    a, b = vectors(client, model="image", inputs=[b64(buf.getvalue()), b64(single.getvalue())])
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_exif_orientation_is_applied(client: TestClient) -> None:
    img = picture(48, 32, seed=3)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    tagged = io.BytesIO()
    img.save(tagged, format="PNG", exif=exif.tobytes())
    upright = io.BytesIO()
    img.transpose(Image.Transpose.ROTATE_270).save(upright, format="PNG")
    plain = io.BytesIO()
    img.save(plain, format="PNG")
    a, b, c = vectors(
        client,
        model="image",
        inputs=[b64(tagged.getvalue()), b64(upright.getvalue()), b64(plain.getvalue())],
    )
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert not np.allclose(a, c, atol=1e-4)


def test_image_pooling_none_reports_grid(client: TestClient) -> None:
    out = embed(client, model="image", inputs=[b64(image_bytes())] * 2, pooling="none")
    assert out["steps"] == [49, 49] and out["grid"] == GRID
    assert np.asarray(out["embeddings"]).shape == (2, 49, DIM)


# -- text -------------------------------------------------------------------------


def test_text(client: TestClient) -> None:
    out = embed(client, model="text", inputs=TEXTS)
    assert out["modality"] == "text" and len(out["embeddings"]) == 3
    assert_unit_vectors(np.asarray(out["embeddings"]))


def test_any_unicode_text(client: TestClient) -> None:
    texts = [
        "Ça va? Très bien.",
        "日本語の文です。もう一つ。",
        "Emoji 🎉 and math ∑x².",
        "\u200b odd space",
    ]
    assert_unit_vectors(vectors(client, model="text", inputs=texts))


def test_text_pooling_none_reports_sentences(client: TestClient) -> None:
    out = embed(client, model="text", inputs=TEXTS, pooling="none")
    assert out["steps"] == [2, 3, 1]
    assert out["sentences"][0] == ["The cat runs and the dog jumps.", "A bird sings in the tree."]
    assert [len(s) for s in out["sentences"]] == out["steps"]
    assert [len(e) for e in out["embeddings"]] == out["steps"]


def test_text_that_looks_like_base64_is_still_text(client: TestClient) -> None:
    out = embed(client, model="text", inputs=["SGVsbG8=", b64(image_bytes())[:40]])
    assert len(out["embeddings"]) == 2


# -- options ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "inputs"),
    [
        ("audio", [b64(audio_bytes(0.3)), b64(audio_bytes(0.7, freq=700))]),
        ("image", [b64(image_bytes(seed=1)), b64(image_bytes(seed=2))]),
        ("text", TEXTS),
    ],
)
def test_mean_and_last_pool_the_steps(client: TestClient, model: str, inputs: list[str]) -> None:
    steps = embed(client, model=model, inputs=inputs, pooling="none", normalize=False)
    mean = vectors(client, model=model, inputs=inputs, pooling="mean", normalize=False)
    last = vectors(client, model=model, inputs=inputs, pooling="last", normalize=False)
    for i, per_step in enumerate(steps["embeddings"]):
        arr = np.asarray(per_step, dtype=np.float64)
        np.testing.assert_allclose(mean[i], arr.mean(axis=0), atol=1e-5)
        np.testing.assert_allclose(last[i], arr[-1], atol=1e-6)
    normalised = vectors(client, model=model, inputs=inputs)
    np.testing.assert_allclose(
        normalised, mean / np.linalg.norm(mean, axis=1, keepdims=True), atol=1e-5
    )


def stats_of(per_step: Any) -> np.ndarray:
    """NumPy's [mean ⊕ population std] of one input's per-step vectors."""
    arr = np.asarray(per_step, dtype=np.float64)
    return np.concatenate([arr.mean(axis=0), arr.std(axis=0, ddof=0)])


@pytest.mark.parametrize("layer", ["context", "encoder"])
def test_stats_pools_each_input_of_a_padded_batch_over_its_own_steps(
    client: TestClient, layer: str
) -> None:
    clips = [b64(audio_bytes(s, freq=f)) for s, f in ((0.3, 440), (1.1, 300), (0.05, 900))]
    width = client.get("/models/audio").json()["dims"][layer]
    body = {"model": "audio", "inputs": clips, "layer": layer, "normalize": False}
    out = embed(client, pooling="stats", **body)
    assert out["pooling"] == "stats" and out["dim"] == 2 * width
    assert "steps" not in out
    raw = np.asarray(out["embeddings"], dtype=np.float64)
    assert raw.shape == (3, 2 * width)
    lengths = []
    for clip, vector in zip(clips, raw, strict=True):
        alone = embed(client, **{**body, "inputs": [clip]}, pooling="none")
        lengths.append(alone["steps"][0])
        np.testing.assert_allclose(vector, stats_of(alone["embeddings"][0]), atol=1e-5)
    assert len(set(lengths)) == 3  # so the batch of three was right-padded
    assert np.all(raw[:, width:] >= 0) and np.any(raw[:, width:] > 0)
    normalised = vectors(client, pooling="stats", **{**body, "normalize": True})
    np.testing.assert_allclose(
        normalised, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5
    )


def test_stats_for_images_and_multipart_text(client: TestClient) -> None:
    pictures = [b64(image_bytes(seed=1)), b64(image_bytes(seed=2))]
    steps = embed(client, model="image", inputs=pictures, pooling="none", normalize=False)
    stats = vectors(client, model="image", inputs=pictures, pooling="stats", normalize=False)
    for per_step, vector in zip(steps["embeddings"], stats, strict=True):
        np.testing.assert_allclose(vector, stats_of(per_step), atol=1e-5)
    r = client.post(
        "/embed",
        files=[("text", (None, TEXTS[0])), ("text", (None, TEXTS[2]))],
        data={"model": "text", "pooling": "stats", "normalize": "false"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["dim"] == 2 * DIM
    plain = embed(
        client, model="text", inputs=[TEXTS[0], TEXTS[2]], pooling="none", normalize=False
    )
    assert plain["steps"][1] == 1  # one sentence: its std is zero
    for per_step, vector in zip(plain["embeddings"], r.json()["embeddings"], strict=True):
        np.testing.assert_allclose(vector, stats_of(per_step), atol=1e-5)
    np.testing.assert_array_equal(r.json()["embeddings"][1][DIM:], np.zeros(DIM))


def test_an_unknown_pooling_is_a_clear_422(client: TestClient) -> None:
    r = client.post("/embed", json={"model": "text", "inputs": ["x."], "pooling": "std"})
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert "pooling" in detail and "'stats'" in detail and "'none'" in detail


def test_normalize_false_keeps_the_norm(client: TestClient) -> None:
    raw = vectors(client, model="audio", inputs=[b64(audio_bytes())], normalize=False)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-3)


def test_encoder_layer_differs_from_context(client: TestClient) -> None:
    body = {"model": "text", "inputs": TEXTS[:1]}
    enc = embed(client, layer="encoder", **body)
    ctx = embed(client, layer="context", **body)
    assert enc["layer"] == "encoder" and ctx["layer"] == "context" and enc["dim"] == DIM
    assert not np.allclose(enc["embeddings"], ctx["embeddings"], atol=1e-4)
    assert_unit_vectors(np.asarray(enc["embeddings"]))


@pytest.mark.parametrize("pooling", ["mean", "stats", "none"])
def test_base64_encoding_matches_float(client: TestClient, pooling: str) -> None:
    body = {"model": "text", "inputs": TEXTS, "pooling": pooling}
    floats = embed(client, **body)["embeddings"]
    encoded = embed(client, encoding_format="base64", **body)["embeddings"]
    for f, e in zip(floats, encoded, strict=True):
        if pooling != "none":
            assert isinstance(e, str)
            np.testing.assert_array_equal(from_base64(e), np.asarray(f, dtype=np.float32))
        else:
            decoded = np.stack([from_base64(step) for step in e])
            np.testing.assert_array_equal(decoded, np.asarray(f, dtype=np.float32))


def test_base64_is_little_endian_float32(client: TestClient) -> None:
    out = embed(client, model="text", inputs=["Hello."], encoding_format="base64")
    raw = base64.b64decode(out["embeddings"][0])
    assert len(raw) == 4 * DIM
    vec = np.frombuffer(raw, dtype="<f4")
    assert abs(float(np.linalg.norm(vec)) - 1.0) < 1e-5


def test_modality_picks_the_default_model(client: TestClient) -> None:
    out = embed(client, modality="image", inputs=[b64(image_bytes())])
    assert out["model"] == "image"


def test_modality_is_recognised_when_no_model_is_named(client: TestClient) -> None:
    assert embed(client, inputs=[b64(audio_bytes())])["model"] == "audio"
    assert embed(client, inputs=[data_uri(image_bytes(), "image/png")])["model"] == "image"
    assert embed(client, inputs=["Just some words."])["model"] == "text"


# -- input encodings ----------------------------------------------------------------


def test_data_uris_and_base64_variants_agree(client: TestClient) -> None:
    data = image_bytes("PNG")
    std = b64(data)
    wrapped = "\n".join(std[i : i + 76] for i in range(0, len(std), 76))
    urlsafe = base64.urlsafe_b64encode(data).decode().rstrip("=")
    inputs = [
        std,
        data_uri(data, "image/png"),
        data_uri(data, "application/octet-stream"),
        f"data:;base64,{std}",
        wrapped,
        urlsafe,
    ]
    vecs = vectors(client, model="image", inputs=inputs)
    for v in vecs[1:]:
        np.testing.assert_allclose(v, vecs[0], atol=1e-7)


def test_text_data_uri_for_a_text_model(client: TestClient) -> None:
    text = "A data URI of plain text. Two sentences."
    uri = "data:text/plain;charset=utf-8;base64," + b64(text.encode())
    a, b = vectors(client, model="text", inputs=[text, uri])
    np.testing.assert_allclose(a, b, atol=1e-7)


def test_multipart_equals_json(client: TestClient) -> None:
    wav, png = audio_bytes(0.4), image_bytes("JPEG")
    r = client.post(
        "/embed",
        files=[("file", ("a.wav", wav, "audio/wav")), ("file", ("b.wav", wav[:], "audio/wav"))],
        data={"pooling": "last", "normalize": "false"},
    )
    assert r.status_code == 200, r.text
    form = r.json()
    assert form["model"] == "audio" and form["pooling"] == "last"
    json_out = vectors(client, model="audio", inputs=[b64(wav)], pooling="last", normalize=False)
    np.testing.assert_allclose(form["embeddings"][0], json_out[0], atol=1e-7)
    r = client.post(
        "/embed",
        files={"file": ("x.bin", png, "application/octet-stream")},
        data={"layer": "encoder"},
    )
    assert r.status_code == 200 and r.json()["model"] == "image" and r.json()["layer"] == "encoder"


def test_multipart_text_parts_and_options(client: TestClient) -> None:
    r = client.post(
        "/embed",
        files=[("text", (None, TEXTS[0])), ("text", (None, TEXTS[1]))],
        data={"model": "text", "pooling": "none", "encoding_format": "base64"},
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["steps"] == [2, 3] and isinstance(out["embeddings"][0][0], str)
    plain = embed(client, model="text", inputs=TEXTS[:2], pooling="none")
    decoded = np.stack([from_base64(s) for s in out["embeddings"][1]])
    np.testing.assert_allclose(decoded, plain["embeddings"][1], atol=1e-7)


def test_multipart_text_file_upload(client: TestClient) -> None:
    r = client.post("/embed", files={"text": ("doc.txt", TEXTS[2].encode(), "text/plain")})
    assert r.status_code == 200 and r.json()["model"] == "text"
    r = client.post(
        "/embed",
        files={"file": ("doc.txt", TEXTS[2].encode(), "text/plain")},
        data={"model": "text"},
    )
    assert r.status_code == 200 and r.json()["model"] == "text"


# -- order and batching -------------------------------------------------------------


def test_results_in_input_order_and_batch_equals_single(client: TestClient) -> None:
    clips = [
        b64(audio_bytes(s, freq=f)) for s, f in ((1.3, 300), (0.05, 500), (0.6, 900), (0.2, 1500))
    ]
    batched = vectors(client, model="audio", inputs=clips)
    for clip, vec in zip(clips, batched, strict=True):
        np.testing.assert_allclose(vectors(client, model="audio", inputs=[clip])[0], vec, atol=1e-5)
    docs = [" ".join(TEXTS), TEXTS[2], TEXTS[0], "Tiny."]
    batched = vectors(client, model="text", inputs=docs, pooling="last", layer="encoder")
    for doc, vec in zip(docs, batched, strict=True):
        single = vectors(client, model="text", inputs=[doc], pooling="last", layer="encoder")
        np.testing.assert_allclose(single[0], vec, atol=1e-5)


def test_per_step_vectors_do_not_depend_on_the_batch(client: TestClient) -> None:
    short, long = b64(audio_bytes(0.1)), b64(audio_bytes(1.0))
    alone = embed(client, model="audio", inputs=[short], pooling="none")["embeddings"][0]
    together = embed(client, model="audio", inputs=[long, short], pooling="none")["embeddings"][1]
    np.testing.assert_allclose(alone, together, atol=1e-5)


def test_a_chunked_text_bundle_serves_token_units(
    tiny_bundles: dict[str, TinyBundle], tmp_path: Path
) -> None:
    """A "chunks-v1" bundle: one step per `chunk_tokens` tokens, even for one sentence."""
    cfg = tiny_config("text")
    cfg.model.chunk_tokens = 3  # type: ignore[union-attr]
    torch.manual_seed(0)
    tokenizer = tiny_bundles["text"].folder / "tokenizer.json"
    export_model(
        build_model(cfg).eval(),
        cfg,
        tmp_path / "models" / "chunked",
        name="chunked",
        tokenizer_path=tokenizer,
    )
    settings = Settings(models_dir=tmp_path / "models", data_dir=tmp_path / "data")
    with TestClient(create_app(settings)) as chunked:
        text = "The cat runs and the dog jumps."
        out = embed(chunked, model="chunked", inputs=[text], pooling="none")
        ids, units = TextTokenizer.from_file(tokenizer, text_spec(cfg.model)).encode_document(text)  # type: ignore[arg-type]
        assert out["steps"] == [ids.shape[0]] and ids.shape[0] >= 3
        assert out["sentences"] == [units]
        assert "".join(units).replace(" ", "") == text.lower().replace(" ", "")
        mean = embed(chunked, model="chunked", inputs=[text], normalize=False)["embeddings"][0]
        steps = np.asarray(
            embed(chunked, model="chunked", inputs=[text], pooling="none", normalize=False)[
                "embeddings"
            ][0]
        )
        np.testing.assert_allclose(mean, steps.mean(axis=0), atol=1e-5)
