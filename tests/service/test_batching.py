"""Dynamic batching: concurrent requests share onnxruntime calls and get the same vectors."""

from __future__ import annotations

import asyncio
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.errors import NotReady, Overloaded
from service.inference.batcher import INLINE_VALUES, DynamicBatcher, split_by_budget
from service.inference.model import MAX_AUTO_INSTANCES, Prepared
from service.metrics import Metrics
from tests.service.conftest import TEXTS, MakeClient, audio_bytes, b64, image_bytes

REQUESTS = 16


def inference_calls(client: TestClient, model: str) -> int:
    text = client.get("/metrics").text
    match = re.search(rf'^cpc_inference_batch_size_count\{{model="{model}"\}} (\S+)$', text, re.M)
    return int(float(match.group(1))) if match else 0


def request_bodies() -> list[dict[str, Any]]:
    """Inputs of different lengths, so batches need padding."""
    return [
        {"model": "audio", "inputs": [b64(audio_bytes(0.1 + 0.07 * i, freq=200 + 90 * i))]}
        for i in range(REQUESTS)
    ]


def run_concurrently(client: TestClient, bodies: list[dict[str, Any]]) -> list[Any]:
    barrier = threading.Barrier(len(bodies))

    def post(body: dict[str, Any]) -> Any:
        barrier.wait()
        r = client.post("/embed", json=body)
        assert r.status_code == 200, r.text
        return r.json()["embeddings"]

    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        return list(pool.map(post, bodies))


@pytest.mark.parametrize("model", ["audio", "text"])
def test_concurrent_requests_share_inference_calls(make_client: MakeClient, model: str) -> None:
    client = make_client(batch_wait_ms=200, max_inference_batch=32)
    if model == "audio":
        bodies = request_bodies()
    else:
        bodies = [
            {"model": "text", "inputs": [" ".join(TEXTS[: 1 + i % 3]) + f" Number {i}."]}
            for i in range(REQUESTS)
        ]
    alone = [client.post("/embed", json=b).json()["embeddings"] for b in bodies]
    before = inference_calls(client, model)
    together = run_concurrently(client, bodies)
    calls = inference_calls(client, model) - before
    assert 1 <= calls < REQUESTS, f"{REQUESTS} requests took {calls} onnxruntime calls"
    for a, t in zip(alone, together, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(t), atol=1e-5)
    text = client.get("/metrics").text
    assert "cpc_queue_depth 0.0" in text


def test_mixed_models_in_parallel(make_client: MakeClient) -> None:
    client = make_client(batch_wait_ms=50)
    bodies: list[dict[str, Any]] = []
    for i in range(6):
        bodies.append({"model": "audio", "inputs": [b64(audio_bytes(0.2 + 0.1 * i))]})
        bodies.append({"model": "image", "inputs": [b64(image_bytes(seed=i))]})
        bodies.append({"model": "text", "inputs": [TEXTS[i % 3]]})
    alone = [client.post("/embed", json=b).json()["embeddings"] for b in bodies]
    together = run_concurrently(client, bodies)
    for a, t in zip(alone, together, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(t), atol=1e-5)


# -- the batcher on its own ----------------------------------------------------------


class FakeEncoder:
    """Records the batches it is given; returns each input's array as z and c."""

    name = "fake"

    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.delay = delay
        self.started = threading.Event()
        self.releases = 0
        self.running = self.most_running = 0
        self._lock = threading.Lock()
        self.threads: list[int] = []
        self.alone: list[bool] = []

    def run(
        self, prepared: list[Prepared], alone: bool = False
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        self.threads.append(threading.get_ident())
        self.alone.append(alone)
        with self._lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        self.started.set()
        if self.delay:
            threading.Event().wait(self.delay)
        with self._lock:
            self.running -= 1
        self.batches.append([int(p.array.shape[0]) for p in prepared])
        return [(p.array[:, None], p.array[:, None]) for p in prepared]

    def release_arena(self) -> None:
        self.releases += 1


def item(n: int) -> Prepared:
    return Prepared(np.full(n, float(n), dtype=np.float32), steps=n)


async def start_busy(
    batcher: DynamicBatcher, encoder: FakeEncoder, items: list[Prepared]
) -> asyncio.Future[list[Any]]:
    """Submit `items` and return once the encoder has started on them."""
    future = asyncio.ensure_future(batcher.submit(items))
    await asyncio.to_thread(encoder.started.wait, 5)
    return future


def make_batcher(encoder: FakeEncoder, **kwargs: Any) -> DynamicBatcher:
    """A batcher of `encoder` that runs every call in a worker thread unless told."""
    kwargs.setdefault("inline_values", 0)
    return DynamicBatcher(encoder, Metrics(), **kwargs)  # type: ignore[arg-type]


def test_batcher_sorts_batches_and_keeps_caller_order() -> None:
    async def scenario() -> None:
        encoder = FakeEncoder()
        batcher = make_batcher(encoder, max_batch=8, wait_ms=50)
        batcher.start()
        results = await asyncio.gather(
            batcher.submit([item(5), item(2)]), batcher.submit([item(9)]), batcher.submit([item(1)])
        )
        await batcher.stop()
        assert encoder.batches == [[1, 2, 5, 9]]
        assert [[int(z[0, 0]) for z, _ in r] for r in results] == [[5, 2], [9], [1]]

    asyncio.run(scenario())


def test_batcher_respects_max_batch() -> None:
    async def scenario() -> None:
        encoder = FakeEncoder()
        batcher = make_batcher(encoder, max_batch=3, wait_ms=20)
        batcher.start()
        await batcher.submit([item(i + 1) for i in range(7)])
        await batcher.stop()
        assert [len(b) for b in encoder.batches] == [3, 3, 1]

    asyncio.run(scenario())


def test_batcher_without_wait_runs_a_lone_input_at_once_and_gathers_the_rest_meanwhile() -> None:
    async def scenario() -> None:
        encoder = FakeEncoder(delay=0.3)
        batcher = make_batcher(encoder, max_batch=8, wait_ms=0)
        batcher.start()
        first = await start_busy(batcher, encoder, [item(1)])  # item 1 runs alone, not held back
        later = [asyncio.ensure_future(batcher.submit([item(n)])) for n in (4, 2, 3)]
        await asyncio.gather(first, *later)
        await batcher.stop()
        assert encoder.batches == [[1], [2, 3, 4]]

    asyncio.run(scenario())


def test_batcher_instances_run_calls_at_once_and_share_the_queue() -> None:
    async def scenario() -> None:
        encoder = FakeEncoder(delay=0.3)
        batcher = make_batcher(encoder, max_batch=8, wait_ms=0, instances=2)
        batcher.start()
        first = await start_busy(batcher, encoder, [item(1)])  # one instance is busy with item 1
        second = await batcher.submit([item(2)])  # the other takes item 2 meanwhile
        assert encoder.most_running == 2 and [int(second[0][0][0, 0])] == [2]
        await first
        encoder.batches.clear()
        results = await batcher.submit([item(n) for n in range(1, 9)])  # both free: halves
        await batcher.stop()
        assert sorted(len(b) for b in encoder.batches) == [4, 4]
        assert [int(z[0, 0]) for z, _ in results] == list(range(1, 9))

    asyncio.run(scenario())


def test_batcher_runs_a_tiny_call_on_the_event_loop_only_when_no_other_runs() -> None:
    async def scenario() -> None:
        loop_thread = threading.get_ident()
        encoder = FakeEncoder()
        batcher = make_batcher(
            encoder, max_batch=8, wait_ms=0, instances=2, inline_values=INLINE_VALUES
        )
        batcher.start()
        await batcher.submit([item(3)])  # tiny, nothing running: on the loop
        await batcher.submit([item(INLINE_VALUES + 1)])  # larger: a worker thread
        assert encoder.threads == [loop_thread, encoder.threads[1]]
        assert encoder.threads[1] != loop_thread
        encoder.delay, encoder.threads = 0.3, []
        busy = await start_busy(batcher, encoder, [item(INLINE_VALUES + 1)])
        encoder.delay = 0.0
        await batcher.submit([item(2)])  # tiny, but a call is running: a thread too
        await busy
        await batcher.stop()
        assert loop_thread not in encoder.threads
        assert encoder.alone == [True, True, True, False]  # the last ran beside another

    asyncio.run(scenario())


def test_batcher_queue_is_bounded_in_inputs() -> None:
    async def scenario() -> None:
        encoder = FakeEncoder(delay=0.3)
        batcher = make_batcher(encoder, max_queue=3, max_batch=1, wait_ms=0)
        batcher.start()
        first = await start_busy(batcher, encoder, [item(1)])  # item 1 is running, queue is empty
        waiting = asyncio.ensure_future(batcher.submit([item(2), item(3)]))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="queue full"):
            await batcher.submit([item(4), item(5)])
        assert batcher.depth == 2
        await asyncio.gather(first, waiting)
        await batcher.stop()

    asyncio.run(scenario())


def test_batcher_skips_cancelled_callers_and_fails_waiting_ones_on_stop() -> None:
    async def scenario() -> None:
        encoder = FakeEncoder(delay=0.3)
        batcher = make_batcher(encoder, max_batch=1, wait_ms=0)
        batcher.start()
        running = await start_busy(batcher, encoder, [item(1)])
        cancelled = asyncio.ensure_future(batcher.submit([item(2)]))
        await asyncio.sleep(0)
        cancelled.cancel()
        await running
        await asyncio.sleep(0.05)
        assert [2] not in encoder.batches
        encoder.delay = 0.5
        encoder.started.clear()
        busy = await start_busy(batcher, encoder, [item(3)])
        queued = asyncio.ensure_future(batcher.submit([item(4)]))
        await asyncio.sleep(0)
        await batcher.stop()
        for fut in (busy, queued):
            with pytest.raises(NotReady):
                await fut
        with pytest.raises(NotReady):
            await batcher.submit([item(5)])

    asyncio.run(scenario())


def test_split_by_budget_bounds_padded_size() -> None:
    class Entry:
        def __init__(self, n: int) -> None:
            self.prepared = item(n)

    entries = [Entry(n) for n in (10, 10, 20, 40, 100)]
    groups = split_by_budget(entries, 60, lambda e: e.prepared.array.size)
    sizes = [[e.prepared.array.size for e in g] for g in groups]
    assert sizes == [[10, 10, 20], [40], [100]]
    for g in sizes[:-1]:
        assert len(g) * max(g) <= 60


def test_max_inference_batch_is_per_modality_unless_set(make_client: MakeClient) -> None:
    def max_batches(client: TestClient) -> dict[str, int]:
        registry = client.app.state.registry  # type: ignore[attr-defined]
        return {served.modality: served.batcher.max_batch for served in registry}

    assert max_batches(make_client()) == {"audio": 16, "image": 16, "text": 64}
    assert max_batches(make_client(max_inference_batch=5)) == {"audio": 5, "image": 5, "text": 5}


def test_inference_instances_are_per_modality_unless_set(make_client: MakeClient) -> None:
    def plan(client: TestClient) -> dict[str, tuple[int, int, int | None]]:
        registry = client.app.state.registry  # type: ignore[attr-defined]
        return {
            served.modality: (
                served.batcher.instances,
                served.encoder.runner.threads,
                served.encoder.solo.threads if served.encoder.solo else None,
            )
            for served in registry
        }

    cores = os.cpu_count() or 1
    count = min(cores, MAX_AUTO_INSTANCES)
    share = max(1, cores // count)
    solo = cores if cores > share else None  # a call alone may take every core
    assert plan(make_client()) == {
        "audio": (count, share, solo),
        "image": (count, share, solo),
        "text": (count, 1, None),
    }
    set_both = plan(make_client(inference_instances=3, intra_op_threads=2))
    assert set_both == {"audio": (3, 2, None), "image": (3, 2, None), "text": (3, 2, None)}
