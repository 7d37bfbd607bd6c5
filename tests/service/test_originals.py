"""Originals: what an item keeps to be shown (thumbnail, clip, text), made, bounded, stored,
served, replaced and deleted with its item, and switched off per request or by setting."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient
from PIL import Image

from service.api.app import create_app
from service.config import Settings
from service.vectors.originals import CLIP_RATE, OriginalLimits, make_original
from tests.service.conftest import TEXTS, MakeClient, audio_bytes, b64, image_bytes, random_vectors

LIMITS = OriginalLimits(
    max_bytes=262_144, clip_seconds=5.0, thumbnail_px=128, max_image_pixels=40_000_000
)


def limits(**changes: Any) -> OriginalLimits:
    return OriginalLimits(**{**LIMITS.__dict__, **changes})


def decode_wav(data: bytes) -> tuple[np.ndarray, int, str]:
    info = sf.info(io.BytesIO(data))
    wave, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return wave, rate, info.subtype


# -- making originals -------------------------------------------------------------------------


def test_an_audio_original_is_the_start_of_the_clip_as_16k_mono_wav() -> None:
    data = audio_bytes(seconds=8.0, rate=44_100, channels=2)
    original = make_original(data, "audio", LIMITS)
    assert original is not None and original.media_type == "audio/wav"
    wave, rate, subtype = decode_wav(original.data)
    assert rate == CLIP_RATE and wave.shape == (5 * CLIP_RATE, 1) and subtype == "PCM_16"
    assert np.abs(wave).max() > 0.1  # the sound, not silence


def test_a_short_clip_is_kept_whole_and_a_tight_limit_shortens_it() -> None:
    original = make_original(audio_bytes(seconds=0.5), "audio", LIMITS)
    assert original is not None
    assert decode_wav(original.data)[0].shape == (CLIP_RATE // 2, 1)
    tight = limits(max_bytes=44 + 2 * 4000)  # a WAV header and 4000 samples
    original = make_original(audio_bytes(seconds=3.0), "audio", tight)
    assert original is not None and len(original.data) <= tight.max_bytes
    assert decode_wav(original.data)[0].shape == (4000, 1)
    assert make_original(audio_bytes(seconds=1.0), "audio", limits(max_bytes=40)) is None


def test_an_image_original_is_a_bounded_jpeg_thumbnail() -> None:
    original = make_original(image_bytes(width=300, height=200), "image", LIMITS)
    assert original is not None and original.media_type == "image/jpeg"
    with Image.open(io.BytesIO(original.data)) as img:
        assert img.format == "JPEG" and img.size == (128, 85) and img.mode == "RGB"
    small = make_original(image_bytes(width=40, height=30), "image", LIMITS)
    assert small is not None
    with Image.open(io.BytesIO(small.data)) as img:
        assert img.size == (40, 30)  # never enlarged


def test_a_tight_limit_gives_a_smaller_or_no_thumbnail() -> None:
    big = image_bytes(width=400, height=400, seed=3)
    roomy = make_original(big, "image", LIMITS)
    assert roomy is not None
    tight = limits(max_bytes=len(roomy.data) // 3)
    original = make_original(big, "image", tight)
    assert original is not None and len(original.data) <= tight.max_bytes
    assert make_original(big, "image", limits(max_bytes=100)) is None


def test_a_text_original_is_cut_at_a_character_boundary() -> None:
    original = make_original("déjà vu", "text", LIMITS)
    assert original is not None and original.media_type.startswith("text/plain")
    assert original.data.decode("utf-8") == "déjà vu"
    cut = make_original("éééé", "text", limits(max_bytes=5))
    assert cut is not None and cut.data.decode("utf-8") == "éé"


def test_no_originals_when_the_limit_is_zero() -> None:
    off = limits(max_bytes=0)
    assert make_original("text", "text", off) is None
    assert make_original(audio_bytes(), "audio", off) is None
    assert make_original(image_bytes(), "image", off) is None


def test_an_input_that_cannot_be_rendered_keeps_no_original() -> None:
    assert make_original(b"not audio at all", "audio", LIMITS) is None
    assert make_original(b"not an image", "image", LIMITS) is None


# -- through the API --------------------------------------------------------------------------


def original(client: TestClient, collection: str, item_id: str) -> Any:
    return client.get(f"/collections/{collection}/originals/{item_id}")


def upsert_files(
    client: TestClient, collection: str, files: dict[str, bytes], **fields: str
) -> Any:
    parts = [("file", (name, data)) for name, data in files.items()]
    data: dict[str, Any] = {"id": list(files), **fields}
    return client.post(f"/collections/{collection}/items", files=parts, data=data)


def test_items_added_from_files_and_text_keep_originals(client: TestClient) -> None:
    r = upsert_files(client, "audio", {"clip/one": audio_bytes(seconds=0.5)})
    assert r.status_code == 200, r.text
    r = upsert_files(client, "image", {"pic": image_bytes(width=200, height=150)})
    assert r.status_code == 200, r.text
    r = client.post("/collections/text/items", json={"items": [{"id": "t", "input": TEXTS[0]}]})
    assert r.status_code == 200, r.text

    r = original(client, "audio", "clip/one")
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
    assert r.headers["x-content-type-options"] == "nosniff"
    wave, rate, _ = decode_wav(r.content)
    assert rate == CLIP_RATE and wave.shape == (CLIP_RATE // 2, 1)
    r = original(client, "image", "pic")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(r.content)) as img:
        assert img.size == (128, 96)
    r = original(client, "text", "t")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert r.text == TEXTS[0]


def test_search_says_which_results_keep_an_original(client: TestClient) -> None:
    client.put("/collections/mixed", json={"model": "text"})
    vector = random_vectors(1, seed=5)[0]
    items = [{"id": "kept", "input": TEXTS[1]}, {"id": "vec", "vector": vector}]
    assert client.post("/collections/mixed/items", json={"items": items}).status_code == 200
    body = {"collection": "mixed", "input": TEXTS[1], "k": 2}
    plain = client.post("/search", json=body).json()["results"]
    assert all("original" not in hit for hit in plain)
    hits = client.post("/search", json={**body, "with_original": True}).json()["results"]
    assert {hit["id"]: hit["original"] for hit in hits} == {
        "kept": "text/plain; charset=utf-8",
        "vec": None,
    }
    r = client.post(
        "/search",
        data={"collection": "mixed", "k": "2", "with_original": "true"},
        files=[("text", (None, TEXTS[1]))],
    )
    assert r.status_code == 200 and r.json()["results"][0]["original"] is not None


def test_keep_originals_false_and_vector_items_keep_none(client: TestClient) -> None:
    client.put("/collections/bare", json={"model": "text"})
    body = {"items": [{"id": "a", "input": TEXTS[0]}], "keep_originals": False}
    assert client.post("/collections/bare/items", json=body).status_code == 200
    r = original(client, "bare", "a")
    assert r.status_code == 404 and "has no original" in r.json()["detail"]
    r = upsert_files(client, "audio", {"no-clip": audio_bytes()}, keep_originals="false")
    assert r.status_code == 200
    assert original(client, "audio", "no-clip").status_code == 404
    vector = {"items": [{"id": "v", "vector": random_vectors(1)[0]}]}
    assert client.post("/collections/bare/items", json=vector).status_code == 200
    assert original(client, "bare", "v").status_code == 404


def test_replacing_or_deleting_an_item_replaces_or_deletes_its_original(
    client: TestClient,
) -> None:
    client.put("/collections/swap", json={"model": "text"})
    first = {"items": [{"id": "x", "input": TEXTS[0]}]}
    assert client.post("/collections/swap/items", json=first).status_code == 200
    second = {"items": [{"id": "x", "input": TEXTS[2]}]}
    assert client.post("/collections/swap/items", json=second).status_code == 200
    assert original(client, "swap", "x").text == TEXTS[2]
    as_vector = {"items": [{"id": "x", "vector": random_vectors(1)[0]}]}
    assert client.post("/collections/swap/items", json=as_vector).status_code == 200
    assert original(client, "swap", "x").status_code == 404  # no stale original

    assert client.post("/collections/swap/items", json=first).status_code == 200
    assert client.delete("/collections/swap/items/x").status_code == 200
    r = original(client, "swap", "x")
    assert r.status_code == 404 and "no item 'x'" in r.json()["detail"]


def test_original_errors(client: TestClient) -> None:
    r = original(client, "nope", "a")
    assert r.status_code == 404 and "nope" in r.json()["detail"]
    assert original(client, "Bad Name", "a").status_code == 400
    assert original(client, "text", "missing").status_code == 404
    r = upsert_files(client, "audio", {"f": audio_bytes()}, keep_originals="maybe")
    assert r.status_code == 422 and "keep_originals" in r.json()["detail"]
    assert client.get("/collections/audio/items/f").status_code == 404  # nothing written
    body = {"items": [{"id": "a", "input": TEXTS[0]}], "keep_originals": "sometimes"}
    assert client.post("/collections/text/items", json=body).status_code == 422


def test_the_setting_switches_originals_off(make_client: MakeClient) -> None:
    c = make_client(max_original_bytes=0)
    r = c.post("/collections/text/items", json={"items": [{"id": "a", "input": TEXTS[0]}]})
    assert r.status_code == 200
    assert original(c, "text", "a").status_code == 404


def test_the_setting_bounds_an_original(make_client: MakeClient) -> None:
    c = make_client(max_original_bytes=44 + 2 * 1600, original_clip_seconds=2.0)
    assert upsert_files(c, "audio", {"a": audio_bytes(seconds=1.0)}).status_code == 200
    wave, _, _ = decode_wav(original(c, "audio", "a").content)
    assert wave.shape == (1600, 1)


def test_originals_survive_a_restart(models_dir: Path, tmp_path: Path) -> None:
    settings = Settings(models_dir=models_dir, data_dir=tmp_path / "data")
    body = {"items": [{"id": "p", "input": b64(image_bytes())}]}
    with TestClient(create_app(settings)) as c:
        assert c.post("/collections/image/items", json=body).status_code == 200
        before = original(c, "image", "p").content
    with TestClient(create_app(settings)) as c:
        r = original(c, "image", "p")
        assert r.status_code == 200 and r.content == before


@pytest.mark.parametrize("name", ["max_original_bytes", "original_clip_seconds", "thumbnail_px"])
def test_original_settings_refuse_nonsense(name: str) -> None:
    with pytest.raises(ValueError):
        Settings(**{name: -1})
