"""POST /v1/embeddings through the official `openai` Python client, unchanged."""

from __future__ import annotations

import numpy as np
import openai
import pytest
from fastapi.testclient import TestClient

from service.inference.wire import from_base64
from tests.service.conftest import TEXTS, MakeClient, audio_bytes, b64, data_uri, image_bytes

pytestmark = pytest.mark.embed_paths("lean", "full")


def client_for(http: TestClient, api_key: str = "k") -> openai.OpenAI:
    return openai.OpenAI(
        base_url="http://testserver/v1", api_key=api_key, http_client=http, max_retries=0
    )


def embed_defaults(http: TestClient, model: str, inputs: list[str]) -> np.ndarray:
    r = http.post("/embed", json={"model": model, "inputs": inputs})
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["embeddings"], dtype=np.float32)


def test_text_with_the_default_base64(client: TestClient) -> None:
    result = client_for(client).embeddings.create(model="text", input=TEXTS)
    assert result.model == "text" and result.object == "list"
    assert [d.index for d in result.data] == [0, 1, 2]
    got = np.asarray([d.embedding for d in result.data], dtype=np.float32)
    np.testing.assert_allclose(got, embed_defaults(client, "text", TEXTS), atol=1e-7)
    r = client.post("/v1/embeddings", json={"model": "text", "input": TEXTS})
    assert r.status_code == 200
    assert r.json()["usage"]["prompt_tokens"] == result.usage.prompt_tokens


def test_text_float_and_single_string(client: TestClient) -> None:
    result = client_for(client).embeddings.create(
        model="text", input=TEXTS[0], encoding_format="float"
    )
    assert len(result.data) == 1 and len(result.data[0].embedding) == 16
    expected = embed_defaults(client, "text", TEXTS[:1])[0]
    np.testing.assert_allclose(result.data[0].embedding, expected, atol=1e-6)
    assert result.usage.prompt_tokens == result.usage.total_tokens > 0


def test_raw_base64_on_the_wire(client: TestClient) -> None:
    r = client.post(
        "/v1/embeddings", json={"model": "text", "input": ["Hi."], "encoding_format": "base64"}
    )
    body = r.json()
    assert r.status_code == 200 and body["object"] == "list"
    item = body["data"][0]
    assert item["object"] == "embedding" and item["index"] == 0
    assert isinstance(item["embedding"], str)
    np.testing.assert_allclose(
        from_base64(item["embedding"]), embed_defaults(client, "text", ["Hi."])[0], atol=1e-7
    )


def test_text_usage_counts_tokens(client: TestClient) -> None:
    r = client.post("/embed", json={"model": "text", "inputs": ["a b c."], "pooling": "none"})
    assert r.json()["steps"] == [1]
    result = client_for(client).embeddings.create(model="text", input=["a b c.", "a b c. d e."])
    # byte-level BPE: at least one token per word, and the second has more
    assert result.usage.prompt_tokens >= 3 + 5


def test_audio_data_uris(client: TestClient) -> None:
    clips = [audio_bytes(0.5), audio_bytes(1.0, freq=880)]
    uris = [data_uri(c, "audio/wav") for c in clips]
    result = client_for(client).embeddings.create(model="audio", input=uris)
    got = np.asarray([d.embedding for d in result.data], dtype=np.float32)
    np.testing.assert_allclose(got, embed_defaults(client, "audio", [b64(c) for c in clips]), 1e-6)
    steps = client.post(
        "/embed", json={"model": "audio", "inputs": [b64(c) for c in clips], "pooling": "none"}
    ).json()["steps"]
    assert result.usage.prompt_tokens == sum(steps)


def test_image_data_uris_count_grid_cells(client: TestClient) -> None:
    uris = [data_uri(image_bytes("PNG", seed=s), "image/png") for s in (1, 2, 3)]
    result = client_for(client).embeddings.create(model="image", input=uris)
    assert len(result.data) == 3 and result.model == "image"
    assert result.usage.prompt_tokens == result.usage.total_tokens == 3 * 49


def test_modality_name_as_model(make_client: MakeClient) -> None:
    result = client_for(make_client()).embeddings.create(model="text", input="Yes.")
    assert result.model == "text"


def test_errors_reach_the_client(client: TestClient) -> None:
    api = client_for(client)
    with pytest.raises(openai.NotFoundError) as missing:
        api.embeddings.create(model="nope", input="x")
    assert "loaded models" in str(missing.value)
    assert missing.value.body["message"].startswith("unknown model")  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        api.embeddings.create(model="text", input="   ")
    with pytest.raises(openai.BadRequestError):
        api.embeddings.create(model="text", input="Hi.", dimensions=8)
    ok = api.embeddings.create(model="text", input="Hi.", dimensions=16)
    assert len(ok.data[0].embedding) == 16


def test_api_key_is_checked(make_client: MakeClient) -> None:
    http = make_client(api_key="sesame")
    assert client_for(http, "sesame").embeddings.create(model="text", input="Hi.").data
    with pytest.raises(openai.AuthenticationError):
        client_for(http, "wrong").embeddings.create(model="text", input="Hi.")
