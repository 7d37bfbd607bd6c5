"""Dynamic batching of concurrent requests for one model.

Callers `submit` prepared inputs and await their results. The queue is bounded
in inputs (`max_queue`): a request whose inputs do not all fit gets 429.
`instances` worker tasks per model (one unless several onnxruntime calls may run
at once) each take up to `max_batch` queued inputs whenever they are free (their
share when several are free; plus, with `wait_ms`, those arriving within
`wait_ms` of the first), skip those whose caller has gone, sort them by shape,
split them so that a call pads at most `MAX_BATCH_ELEMENTS` values, and run
onnxruntime in a worker thread (a call of at most `inline_values` input values,
a short text, on the event loop when no other call is running; a call that runs
alone may use the encoder's session on every core). With `release_memory` it
hands memory back once idle for `RELEASE_AFTER_IDLE_S`. The design:
docs/architecture.md (Serving).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from service.errors import NotReady, Overloaded
from service.inference.allocator import release_free_memory
from service.inference.model import OnnxEncoder, Prepared
from service.metrics import Metrics

logger = logging.getLogger(__name__)

T = TypeVar("T")
Result = tuple[np.ndarray, np.ndarray]
MAX_BATCH_ELEMENTS = 32 * 16000 * 30  # padded input values per call: 32 clips of 30 s at 16 kHz
# Idle time after which the worker returns free memory: under steady load the arena's
# memory is reused, and the release (a small call and a heap walk) delays no request.
RELEASE_AFTER_IDLE_S = 1.0
# A call this small (padded input values: a few sentences of text, never a clip or an
# image) runs on the event loop when no other call is running: its model time, about
# 0.2 ms, is less than the hop to a worker thread and back costs.
INLINE_VALUES = 1024


@dataclass
class _Entry:
    prepared: Prepared
    future: asyncio.Future[Result]


def _input_values(entry: _Entry) -> int:
    return int(entry.prepared.array.size)


class DynamicBatcher:
    """A bounded input queue and the worker that feeds one `OnnxEncoder` in batches."""

    def __init__(
        self,
        encoder: OnnxEncoder,
        metrics: Metrics,
        *,
        max_queue: int = 1024,
        max_batch: int = 32,
        wait_ms: float = 0.0,
        release_memory: bool = False,
        instances: int = 1,
        inline_values: int = INLINE_VALUES,
    ) -> None:
        if max_queue < 1 or max_batch < 1 or instances < 1 or wait_ms < 0:
            raise ValueError("max_queue, max_batch and instances must be >= 1, wait_ms >= 0")
        self.encoder = encoder
        self.metrics = metrics
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.wait_s = wait_ms / 1000.0
        self.release_memory = release_memory
        self.instances = instances
        self.inline_values = inline_values
        self._release_pending = False
        self._queue: deque[_Entry] = deque()
        self._arrived = asyncio.Event()  # inputs arrived (for a batch waiting `wait_ms`)
        self._sleepers: deque[asyncio.Future[None]] = deque()  # idle workers, one each
        self._workers: list[asyncio.Task[None]] = []
        self._idle = 0  # workers waiting for a batch
        self._in_flight = 0  # onnxruntime calls running
        self._closed = False
        self._batch_size = metrics.inference_batch_size.labels(model=encoder.name)

    @property
    def depth(self) -> int:
        """Inputs waiting for inference."""
        return len(self._queue)

    @property
    def running(self) -> bool:
        return any(not w.done() for w in self._workers)

    def start(self) -> None:
        """Start the worker tasks on the running event loop."""
        if not self._workers:
            self._closed = False
            loop = asyncio.get_running_loop()
            self._workers = [
                loop.create_task(self._work(), name=f"batcher-{self.encoder.name}-{i}")
                for i in range(self.instances)
            ]

    async def stop(self) -> None:
        """Stop the workers; every input still waiting fails with 503."""
        self._closed = True
        workers, self._workers = self._workers, []
        for worker in workers:
            worker.cancel()
        for worker in workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        self._fail_waiting(NotReady("the service is shutting down"))

    async def submit(self, prepared: list[Prepared]) -> list[Result]:
        """Queue inputs and wait for their (z, c) results, in the order given."""
        if not prepared:
            return []
        if self._closed or not self._workers:
            raise NotReady(f"model {self.encoder.name} is not running")
        room = self.max_queue - len(self._queue)
        if len(prepared) > room:
            raise Overloaded(
                f"queue full: model {self.encoder.name} has {len(self._queue)} inputs waiting "
                f"and room for {max(room, 0)} more (CPC_MAX_QUEUE={self.max_queue}); "
                f"this request has {len(prepared)}; retry later"
            )
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Result]] = []
        for item in prepared:
            future: asyncio.Future[Result] = loop.create_future()
            self._queue.append(_Entry(item, future))
            futures.append(future)
        self.metrics.queue_depth.inc(len(prepared))
        self._arrived.set()
        self._wake(len(prepared))
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        results: list[Result] = []
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
            results.append(outcome)
        return results

    async def _work(self) -> None:
        while True:
            batch = await self._next_batch()
            if batch:
                await self._run_all(batch)
                self._release_pending = self.release_memory

    async def _next_batch(self) -> list[_Entry]:
        """Wait for a first input, then up to `wait_s` for the batch to fill; take this
        worker's share of the queue (all of it, up to `max_batch`, unless other workers
        are free too).

        Once idle for RELEASE_AFTER_IDLE_S after a batch, with no call running,
        release freed memory.
        """
        self._idle += 1
        try:
            return await self._wait_for_batch()
        finally:
            self._idle -= 1

    def _wake(self, inputs: int) -> None:
        """Wake as many idle workers as `inputs` new inputs can keep busy (a lone input
        wakes one: waking them all would cost each a turn of the event loop for nothing)."""
        for _ in range(min(inputs, len(self._sleepers))):
            sleeper = self._sleepers.popleft()
            if not sleeper.done():
                sleeper.set_result(None)

    async def _sleep(self, timeout_s: float | None) -> None:
        """Wait until `_wake` picks this worker (or `timeout_s` passes: TimeoutError)."""
        sleeper: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append(sleeper)
        try:
            await asyncio.wait_for(sleeper, timeout_s)
        finally:
            if sleeper in self._sleepers:
                self._sleepers.remove(sleeper)

    async def _wait_for_batch(self) -> list[_Entry]:
        while not self._queue:
            if not self._release_pending:
                await self._sleep(None)
                continue
            try:
                await self._sleep(RELEASE_AFTER_IDLE_S)
            except TimeoutError:  # idle for a while: a request rarely has to wait for this
                if self._in_flight == 0:
                    self._release_pending = False
                    await asyncio.to_thread(self._release)
        # One turn of the event loop lets requests it has already read join in.
        await asyncio.sleep(0)
        deadline = asyncio.get_running_loop().time() + self.wait_s
        while len(self._queue) < self.max_batch:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), left)
        share = min(self.max_batch, -(-len(self._queue) // self._idle))  # this one counts
        batch: list[_Entry] = []
        taken = 0
        while self._queue and len(batch) < share:
            entry = self._queue.popleft()
            taken += 1
            if not entry.future.done():  # a cancelled caller's input is dropped
                batch.append(entry)
        self.metrics.queue_depth.dec(taken)
        return batch

    async def _run_all(self, batch: list[_Entry]) -> None:
        batch.sort(key=lambda e: e.prepared.sort_key)
        for group in split_by_budget(batch, MAX_BATCH_ELEMENTS, _input_values):
            await self._run(group)

    async def _run(self, batch: list[_Entry]) -> None:
        self._batch_size.observe(len(batch))
        run: Callable[[list[Prepared], bool], list[Result]] = self.encoder.run
        alone = self._in_flight == 0
        inline = alone and sum(_input_values(e) for e in batch) <= self.inline_values
        self._in_flight += 1
        try:
            if inline:
                results = run([e.prepared for e in batch], alone)
            else:
                results = await asyncio.to_thread(run, [e.prepared for e in batch], alone)
        except asyncio.CancelledError:
            self._settle(batch, NotReady("the service is shutting down"))
            raise
        except Exception as exc:
            logger.exception(
                "inference failed for a batch of %d on %s", len(batch), self.encoder.name
            )
            self._settle(batch, exc)
            return
        finally:
            self._in_flight -= 1
        for entry, result in zip(batch, results, strict=True):
            if not entry.future.done():
                entry.future.set_result(result)

    def _release(self) -> None:
        """Give memory back; a failure is logged, never allowed to stop the worker."""
        try:
            self.encoder.release_arena()
            release_free_memory()
        except Exception:
            logger.exception("releasing memory of %s failed", self.encoder.name)

    @staticmethod
    def _settle(batch: list[_Entry], exc: BaseException) -> None:
        for entry in batch:
            if not entry.future.done():
                entry.future.set_exception(exc)

    def _fail_waiting(self, exc: BaseException) -> None:
        taken = len(self._queue)
        while self._queue:
            entry = self._queue.popleft()
            if not entry.future.done():
                entry.future.set_exception(exc)
        if taken:
            self.metrics.queue_depth.dec(taken)


def split_by_budget(items: Sequence[T], budget: int, size: Callable[[T], int]) -> list[list[T]]:
    """Consecutive groups of length-sorted items whose padded size fits `budget`.

    `size` is an item's number of input values; a group pads to its largest.
    A group holds at least one item, however large.
    """
    groups: list[list[T]] = []
    current: list[T] = []
    largest = 0
    for item in items:
        n = int(size(item))
        if current and (len(current) + 1) * max(largest, n) > budget:
            groups.append(current)
            current, largest = [], 0
        current.append(item)
        largest = max(largest, n)
    if current:
        groups.append(current)
    return groups
