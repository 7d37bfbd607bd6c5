"""Real `cpc-embed serve` processes on the Milvus backend, against a real Milvus server.

- SIGKILL of the API amid 8 concurrent writers loses no acknowledged write;
- SIGKILL of the Milvus server amid them neither: the API answers 503 with a
  reason meanwhile and resumes by itself once Milvus is back;
- two API processes share the collections: a write through one is found by a
  search through the other (Strong consistency, the default);
- Milvus down at start, then up: /embed serves at once, collection routes and
  /ready answer 503 with a `detail` (and Retry-After where it is known), and
  the service opens its collections by itself when Milvus answers; cut
  mid-run, the same 503s, then it resumes with nothing acknowledged lost.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.service import milvus_server
from tests.service.conftest import random_vectors
from tests.service.live import LiveServer
from tests.service.test_durability import COLLECTION, check_acknowledged, stream_and_kill

pytestmark = pytest.mark.timeout(420)


def milvus_env(uri: str, prefix: str, **extra: str) -> dict[str, str]:
    return {
        "CPC_COLLECTION_BACKEND": "milvus",
        "CPC_MILVUS_URI": uri,
        "CPC_MILVUS_PREFIX": prefix,
        **extra,
    }


@pytest.fixture
def prefix() -> str:
    return f"live{uuid.uuid4().hex[:8]}_"


def start(
    servers: list[LiveServer], models_dir: Path, tmp_path: Path, env: dict[str, str]
) -> LiveServer:
    n = len(servers)
    server = LiveServer(models_dir, tmp_path / f"data{n}", tmp_path / f"server{n}.log", **env)
    servers.append(server)
    return server


def wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    pytest.fail(f"{what} within {timeout_s} s")


def status(url: str) -> int:
    try:
        return httpx.get(url, timeout=5.0).status_code
    except httpx.TransportError:
        return 0


def test_acknowledged_writes_survive_sigkill_of_the_api(
    milvus_uri: str, prefix: str, models_dir: Path, tmp_path: Path, servers: list[LiveServer]
) -> None:
    env = milvus_env(milvus_uri, prefix)
    start(servers, models_dir, tmp_path, env).wait_ready(timeout=120)
    writers = stream_and_kill(servers[0])
    again = start(servers, models_dir, tmp_path, env)
    again.wait_ready(timeout=120)
    check_acknowledged(again.base, writers)


def test_acknowledged_writes_survive_sigkill_of_milvus(
    milvus_uri: str, prefix: str, models_dir: Path, tmp_path: Path, servers: list[LiveServer]
) -> None:
    owned = [s for s in milvus_server.STARTED if s.process is not None and s.uri == milvus_uri]
    if not owned:
        pytest.skip("needs a Milvus server these tests started (not CPC_TEST_MILVUS_URI's)")
    server = owned[0]
    api = start(servers, models_dir, tmp_path, milvus_env(milvus_uri, prefix))
    api.wait_ready(timeout=120)
    writers = stream_and_kill(api, kill=server.kill, unavailable_ok=True)

    # Milvus is gone: the API stays up and says so.
    r = httpx.post(f"{api.base}/search", json={"collection": COLLECTION, "vector": [1.0] * 16})
    assert r.status_code == 503 and "Milvus" in r.json()["detail"]
    assert "Retry-After" in r.headers
    ready = httpx.get(f"{api.base}/ready", timeout=30.0)
    assert ready.status_code == 503 and ready.json()["detail"]
    assert httpx.post(f"{api.base}/embed", json={"inputs": ["Still here."]}).status_code == 200

    server.restart()
    wait_for(lambda: status(f"{api.base}/ready") == 200, 120, "the API did not resume")
    # A restarted Milvus loads the collection before its first query answers.
    collection = f"{api.base}/collections/{COLLECTION}"
    wait_for(lambda: status(collection) == 200, 120, "the collection did not load again")
    check_acknowledged(api.base, writers)


def test_two_api_processes_share_the_collections(
    milvus_uri: str, prefix: str, models_dir: Path, tmp_path: Path, servers: list[LiveServer]
) -> None:
    env = milvus_env(milvus_uri, prefix)
    a, b = start(servers, models_dir, tmp_path, env), start(servers, models_dir, tmp_path, env)
    a.wait_ready(timeout=150)
    b.wait_ready(timeout=150)
    vectors = random_vectors(5, seed=8)
    assert httpx.put(f"{a.base}/collections/shared", json={"model": "image"}).status_code == 201
    for i, vector in enumerate(vectors):
        item = {"id": f"x{i}", "vector": vector, "metadata": {"i": i}}
        r = httpx.post(f"{a.base}/collections/shared/items", json={"items": [item]}, timeout=30)
        assert r.status_code == 200
        # read-your-writes across processes, at once (Strong consistency)
        hit = httpx.post(
            f"{b.base}/search",
            json={"collection": "shared", "vector": vector, "k": 1},
            timeout=30,
        ).json()["results"][0]
        assert hit["id"] == f"x{i}" and hit["metadata"] == {"i": i}
    assert httpx.get(f"{b.base}/collections/shared", timeout=30).json()["count"] == len(vectors)
    assert httpx.delete(f"{b.base}/collections/shared/items/x0", timeout=30).status_code == 200
    assert httpx.get(f"{a.base}/collections/shared/items/x0", timeout=30).status_code == 404
    assert httpx.delete(f"{b.base}/collections/shared", timeout=30).status_code == 200
    assert httpx.get(f"{a.base}/collections/shared", timeout=30).status_code == 404


def test_milvus_down_at_start_and_mid_run(
    milvus_uri: str, prefix: str, models_dir: Path, tmp_path: Path, servers: list[LiveServer]
) -> None:
    relay = milvus_server.Relay(int(milvus_uri.rsplit(":", 1)[1])).start()
    relay.cut()  # down before the API starts
    api = start(servers, models_dir, tmp_path, milvus_env(relay.uri, prefix))
    base = api.base
    wait_for(lambda: status(f"{base}/health") == 200, 60, "the API did not start")
    assert httpx.post(f"{base}/embed", json={"inputs": ["Milvus is down."]}).status_code == 200
    ready = httpx.get(f"{base}/ready")
    assert ready.status_code == 503 and "collections" in ready.json()["detail"]
    for r in (
        httpx.get(f"{base}/collections"),
        httpx.post(f"{base}/search", json={"collection": COLLECTION, "vector": [1.0] * 16}),
    ):
        assert r.status_code == 503 and r.json()["detail"]

    relay.mend()  # up: the API opens its collections by itself
    wait_for(lambda: status(f"{base}/ready") == 200, 120, "the API did not open its collections")
    item = {"id": "kept", "vector": [1.0] * 16}
    assert httpx.post(f"{base}/collections/{COLLECTION}/items", json={"items": [item]}).is_success

    relay.cut()  # down mid-run
    r = httpx.get(f"{base}/collections/{COLLECTION}/items/kept", timeout=30)
    assert r.status_code == 503 and "Milvus" in r.json()["detail"] and "Retry-After" in r.headers
    wait_for(lambda: status(f"{base}/ready") == 503, 30, "/ready did not turn 503")
    assert httpx.post(f"{base}/embed", json={"inputs": ["Still serving."]}).status_code == 200

    relay.mend()
    wait_for(lambda: status(f"{base}/ready") == 200, 120, "the API did not resume")
    wait_for(
        lambda: status(f"{base}/collections/{COLLECTION}/items/kept") == 200,
        60,
        "the acknowledged item did not come back",
    )
    log = api.log_text()
    assert "Traceback" not in log and '"level": "error"' not in log
    relay.cut()
