"""Fuzzing /embed and /collections (and /search) request bodies with hypothesis: no 5xx.

The bodies are built from strategies around the real schemas (right keys
with values of every JSON type, valid and invalid names, ids, vectors of any
length and values, metadata of any shape) mixed with junk (any JSON value,
unknown keys, NaN and infinity, numbers too large for anything). Every answer
must be below 500, and every error a JSON object with a readable `detail`.
The default run is bounded: MAX_EXAMPLES cases per target (FUZZ_EXAMPLES in
the environment raises it), no deadline; the
number of cases tried per target is written to `fuzz-cases.json` in the
test's temporary folder and logged.
"""

from __future__ import annotations

import json
import logging
import os
import string
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.service.conftest import audio_bytes, b64, image_bytes

logger = logging.getLogger(__name__)

MAX_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))  # more for a longer hunt
FUZZ = "fuzzed"  # the collection (text model, dim 16) the fuzzer writes to

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
MEDIA = st.sampled_from(
    [b64(audio_bytes(0.3)), b64(image_bytes("PNG", 20, 20)), "data:image/png;base64,AAAA", "@@"]
)
INPUT = st.text(max_size=200) | MEDIA
NAMES = st.sampled_from(
    ["text", "audio", "image", FUZZ, "", "../text", "Text", "a" * 70]
) | st.text(alphabet=string.ascii_lowercase + string.digits + "_-./\\%\x00", max_size=20)
NUMBER = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**70), 2**70)
VECTOR = st.lists(NUMBER, min_size=0, max_size=20) | st.lists(
    st.just(0.5), min_size=16, max_size=16
)


def maybe(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Dicts holding any subset of `fields`, plus now and then an unknown key."""
    return st.fixed_dictionaries({}, optional=fields).flatmap(
        lambda d: st.dictionaries(st.text(max_size=6), JSON, max_size=1).map(
            lambda junk: {**junk, **d}
        )
    )


EMBED_BODIES = (
    maybe(
        model=NAMES | JSON,
        modality=st.sampled_from(["audio", "image", "text", "video"]) | JSON,
        inputs=st.lists(INPUT, max_size=4) | JSON,
        pooling=st.sampled_from(["mean", "last", "none", "max"]) | JSON,
        layer=st.sampled_from(["context", "encoder", "z"]) | JSON,
        normalize=st.booleans() | JSON,
        encoding_format=st.sampled_from(["float", "base64", "hex"]) | JSON,
    )
    | JSON
)
ITEM = maybe(
    id=st.text(max_size=12) | JSON,
    vector=VECTOR | JSON,
    input=INPUT | JSON,
    metadata=st.dictionaries(st.text(max_size=6), JSON, max_size=3) | JSON,
)
UPSERT_BODIES = maybe(items=st.lists(ITEM, max_size=3) | JSON) | JSON
CREATE_BODIES = maybe(model=NAMES | JSON, index=st.sampled_from(["flat", "ivf", "hnsw"]) | JSON)
SEARCH_BODIES = maybe(
    collection=NAMES | JSON,
    vector=VECTOR | JSON,
    input=INPUT | JSON,
    k=st.integers(-5, 2000) | st.integers() | JSON,
    filter=st.dictionaries(st.text(max_size=6), JSON, max_size=3) | JSON,
)


def check(r: Any, what: str) -> None:
    assert r.status_code < 500, f"{what}: {r.status_code} {r.text[:500]}"
    if r.status_code >= 400:
        detail = r.json()["detail"]
        assert isinstance(detail, str) and detail, f"{what}: {r.text[:500]}"


def send(client: TestClient, method: str, url: str, body: Any) -> Any:
    content = json.dumps(body, allow_nan=True)  # NaN and Infinity too: junk a client may send
    return client.request(
        method, url, content=content, headers={"content-type": "application/json"}
    )


def run(target: Any) -> int:
    """Run a @given function under the bounded settings; how many cases it tried."""
    tried = [0]

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(st.data())
    def wrapped(data: st.DataObject) -> None:
        tried[0] += 1
        target(data)

    wrapped()
    return tried[0]


@pytest.fixture(scope="module")
def fuzzed(client: TestClient) -> TestClient:
    assert client.put(f"/collections/{FUZZ}", json={"model": "text"}).status_code == 201
    return client


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "fuzz-cases.json"


def record(report: Path, target: str, tried: int) -> None:
    counts = json.loads(report.read_text()) if report.exists() else {}
    counts[target] = tried
    report.write_text(json.dumps(counts, indent=1))
    logger.info("fuzz %s: %d cases tried, no 5xx (%s)", target, tried, report)


def test_fuzz_embed(fuzzed: TestClient, report: Path) -> None:
    def target(data: st.DataObject) -> None:
        check(send(fuzzed, "POST", "/embed", data.draw(EMBED_BODIES)), "POST /embed")

    tried = run(target)
    record(report, "embed", tried)
    assert tried >= MAX_EXAMPLES // 2, f"only {tried} cases tried"


def test_fuzz_collections(fuzzed: TestClient, report: Path) -> None:
    def target(data: st.DataObject) -> None:
        name = data.draw(st.sampled_from([FUZZ, "text"]) | NAMES)
        quoted = "".join(c if c.isalnum() or c in "_-" else f"%{ord(c):02X}" for c in name)
        kind = data.draw(st.sampled_from(["upsert", "create", "search", "get", "delete"]))
        if kind == "upsert":
            r = send(fuzzed, "POST", f"/collections/{quoted}/items", data.draw(UPSERT_BODIES))
        elif kind == "create":
            r = send(fuzzed, "PUT", f"/collections/{quoted}", data.draw(CREATE_BODIES))
        elif kind == "search":
            r = send(fuzzed, "POST", "/search", data.draw(SEARCH_BODIES))
        else:
            item = "".join(f"%{b:02X}" for b in data.draw(st.text(max_size=10)).encode()) or "x"
            r = fuzzed.request(kind.upper(), f"/collections/{quoted}/items/{item}")
        check(r, f"{kind} {name!r}")

    tried = run(target)
    record(report, "collections", tried)
    assert tried >= MAX_EXAMPLES // 2, f"only {tried} cases tried"
    assert fuzzed.get("/ready").status_code == 200
