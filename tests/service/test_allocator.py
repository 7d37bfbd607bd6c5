"""glibc tuning and trimming: settings accepted, freed memory handed back, called when idle."""

from __future__ import annotations

import asyncio
import ctypes
import platform

import numpy as np
import pytest

from service.inference import allocator, batcher
from service.inference.batcher import DynamicBatcher
from service.inference.model import OnnxEncoder
from service.metrics import Metrics
from tests.service.conftest import TinyBundle, audio_bytes
from tests.service.test_batching import FakeEncoder, item

glibc = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="mallopt/malloc_trim are glibc's"
)


def rss_kb() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


@glibc
def test_allocator_settings_are_accepted_and_small_frees_are_returned() -> None:
    assert allocator.tune_allocator() is True
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    # 64 MiB in 64 KiB blocks: below the mmap threshold, so they live on the heap.
    blocks = [libc.malloc(64 * 1024) for _ in range(1024)]
    for b in blocks:
        ctypes.memset(b, 1, 64 * 1024)
    held = rss_kb()
    for b in blocks[:-1]:  # the last block pins the heap's top: only a trim frees the rest
        libc.free(b)
    allocator.release_free_memory()
    assert rss_kb() < held - 32 * 1024
    libc.free(blocks[-1])


def test_an_idle_batcher_releases_memory_once_after_work(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bool] = []

    def counted() -> bool:
        calls.append(True)
        return allocator.release_free_memory()

    monkeypatch.setattr(batcher, "release_free_memory", counted)
    monkeypatch.setattr(batcher, "RELEASE_AFTER_IDLE_S", 0.05)

    async def scenario(release: bool) -> tuple[int, int]:
        calls.clear()
        encoder = FakeEncoder()
        b = DynamicBatcher(encoder, Metrics(), release_memory=release)  # type: ignore[arg-type]
        b.start()
        for n in range(6):  # steady work, never idle for 50 ms: no release yet
            await b.submit([item(n + 1)])
            await asyncio.sleep(0.01)
        assert not calls
        await asyncio.sleep(0.3)  # idle for six times the threshold: one release
        await b.stop()
        return len(calls), encoder.releases

    assert asyncio.run(scenario(True)) == (1, 1)
    assert asyncio.run(scenario(False)) == (0, 0)


def test_release_arena_leaves_the_model_answering_the_same(
    tiny_bundles: dict[str, TinyBundle],
) -> None:
    encoder = OnnxEncoder.load(tiny_bundles["audio"].folder)
    small = encoder.prepare(audio_bytes(0.5))
    long = [encoder.prepare(audio_bytes(4.0, freq=300 + 50 * i)) for i in range(8)]
    (_, before), *_ = encoder.run([small])
    encoder.run(long)  # grows the arena
    encoder.release_arena()
    (_, after), *_ = encoder.run([small])
    np.testing.assert_array_equal(before, after)


def test_a_failing_release_is_logged_and_the_worker_keeps_serving(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(batcher, "RELEASE_AFTER_IDLE_S", 0.02)

    class Failing(FakeEncoder):
        def release_arena(self) -> None:
            raise RuntimeError("arena trouble")

    async def scenario() -> list[int]:
        b = DynamicBatcher(Failing(), Metrics(), release_memory=True)  # type: ignore[arg-type]
        b.start()
        await b.submit([item(2)])
        await asyncio.sleep(0.1)  # the release fails here
        results = await b.submit([item(3)])
        await b.stop()
        return [int(z[0, 0]) for z, _ in results]

    assert asyncio.run(scenario()) == [3]
    assert "releasing memory of fake failed" in caplog.text and "arena trouble" in caplog.text
