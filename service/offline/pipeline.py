"""Offline embedding of many files: parallel decoding, batched onnxruntime calls, progress.

`FilePipeline` is what `cpc-embed index` and `cpc-embed embed-folder` share:
a pool of threads reads and prepares files (`to_raw` → `OnnxEncoder.prepare`)
in order of size while the previous batch runs through onnxruntime, and every
vector pools the context layer over its valid steps (`pooling`), L2-normalised,
as `/embed` returns it. Why threads and size order: docs/architecture.md
(Offline embedding).

`Progress` prints a one-line bar on a terminal (stderr) and a log line every
few seconds otherwise; it needs no tqdm.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from service.errors import CPCError
from service.inference.batcher import MAX_BATCH_ELEMENTS, split_by_budget
from service.inference.inputs import to_raw
from service.inference.model import OnnxEncoder, Prepared
from service.inference.pooling import VectorPooling, l2_normalize, pool

logger = logging.getLogger(__name__)

PREFETCH_BATCHES = 2  # batches being decoded while one is in onnxruntime
LOGGED_FAILURES = 20  # failed files logged one by one by the commands; the rest are only counted
_LOG_EVERY_S = 5.0  # progress log line interval when stderr is not a terminal
_DRAW_EVERY_S = 0.25  # terminal bar redraw interval


def default_workers() -> int:
    """Decoding threads: one per core, at least two."""
    return max(2, os.cpu_count() or 1)


def describe_failure(exc: BaseException) -> str:
    """Why a file could not be embedded, in the words the service uses for an input."""
    if isinstance(exc, OSError):
        return f"cannot read it ({exc.strerror or exc})"
    if isinstance(exc, CPCError):
        detail = exc.detail
        return "it " + detail[8:] if detail.startswith("input 0 ") else detail
    return f"{type(exc).__name__}: {exc}"


def budget_groups(prepared: list[tuple[int, Prepared]]) -> list[list[tuple[int, Prepared]]]:
    """Groups of similar shape whose padded batch stays under MAX_BATCH_ELEMENTS values."""
    ordered = sorted(prepared, key=lambda pair: pair[1].sort_key)
    return split_by_budget(ordered, MAX_BATCH_ELEMENTS, lambda pair: pair[1].array.size)


def by_size(todo: Sequence[tuple[str, Path]]) -> list[tuple[str, Path]]:
    """`(name, path)` pairs by file size (a stand-in for input length), then name."""

    def size(item: tuple[str, Path]) -> tuple[int, str]:
        try:
            return item[1].stat().st_size, item[0]
        except OSError:
            return 0, item[0]  # reading it will fail and say why

    return sorted(todo, key=size)


@dataclass
class EmbeddedBatch:
    """The outcome of one batch of files, each list in the order the files were given."""

    items: list[tuple[str, np.ndarray]] = field(default_factory=list)  # (name, float32 [dim])
    failures: list[tuple[str, str]] = field(default_factory=list)  # (name, why)

    @property
    def size(self) -> int:
        """Files in the batch: embedded or failed."""
        return len(self.items) + len(self.failures)


class FilePipeline:
    """Files → vectors with one bundle: threads prepare, onnxruntime embeds a batch at a time."""

    def __init__(
        self, encoder: OnnxEncoder, workers: int | None = None, pooling: VectorPooling = "mean"
    ) -> None:
        self.encoder = encoder
        self.pooling: VectorPooling = pooling
        self.workers = workers or default_workers()
        if self.workers < 1:
            raise ValueError("workers must be at least 1")

    def prepare(self, path: Path) -> Prepared:
        """Read and prepare one file; OSError or a CPCError says why it cannot be."""
        raw = to_raw(path.read_bytes(), 0, self.encoder.modality, self.encoder.name)
        return self.encoder.prepare(raw)

    def embed(self, prepared: list[tuple[int, Prepared]]) -> dict[int, np.ndarray]:
        """Pooled, L2-normalised context vectors of prepared inputs, by their key."""
        vectors: dict[int, np.ndarray] = {}
        for group in budget_groups(prepared):
            outputs = self.encoder.run([p for _, p in group])
            for (key, _), (_, c) in zip(group, outputs, strict=True):
                vectors[key] = l2_normalize(pool(c, self.pooling))
        return vectors

    def batches(self, todo: Sequence[tuple[str, Path]], batch: int) -> Iterator[EmbeddedBatch]:
        """Embed `(name, path)` pairs `batch` at a time, smallest files first, decoding ahead."""
        if batch < 1:
            raise ValueError("batch must be at least 1")
        todo = by_size(todo)
        chunks = (todo[i : i + batch] for i in range(0, len(todo), batch))
        with ThreadPoolExecutor(self.workers, thread_name_prefix="decode") as threads:
            pending: deque[tuple[Sequence[tuple[str, Path]], list[Future[Prepared]]]] = deque()

            def submit_next() -> None:
                chunk = next(chunks, None)
                if chunk is not None:
                    pending.append((chunk, [threads.submit(self.prepare, p) for _, p in chunk]))

            for _ in range(PREFETCH_BATCHES):
                submit_next()
            while pending:
                chunk, futures = pending.popleft()
                submit_next()
                yield self._finish(chunk, futures)

    def _finish(
        self, chunk: Sequence[tuple[str, Path]], futures: list[Future[Prepared]]
    ) -> EmbeddedBatch:
        out = EmbeddedBatch()
        ready: list[tuple[int, Prepared]] = []
        for i, ((name, _), future) in enumerate(zip(chunk, futures, strict=True)):
            try:
                ready.append((i, future.result()))
            except (OSError, CPCError) as exc:
                out.failures.append((name, describe_failure(exc)))
        vectors = self.embed(ready)
        out.items = [(chunk[i][0], vectors[i]) for i, _ in ready]
        return out


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """Files done out of a total, with rate and time left: a bar on a terminal, else log lines.

    Log lines go to `log` (the command's own logger) every few seconds, and
    once more, as "DESC: N/N files", when everything is done.
    """

    def __init__(
        self,
        total: int,
        desc: str,
        stream: TextIO | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        self.total, self.desc, self.done = total, desc, 0
        self.stream = stream if stream is not None else sys.stderr
        self.log = log or logger
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self._start = self._last = time.monotonic()
        self.log.info("%s: %d file(s) to embed", desc, total)

    def rate(self) -> tuple[float, float]:
        """Files per second so far, and seconds left at that rate."""
        rate = self.done / max(time.monotonic() - self._start, 1e-9)
        return rate, (self.total - self.done) / rate if rate > 0 else 0.0

    def bar(self) -> str:
        rate, left = self.rate()
        width = 24
        filled = width * self.done // max(self.total, 1)
        return (
            f"{self.desc} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
            f"files, {rate:.1f}/s, {_duration(left)} left"
        )

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        finished = self.done >= self.total
        if self.live:
            if now - self._last >= _DRAW_EVERY_S or finished:
                self._last = now
                self.stream.write("\r" + self.bar())
                self.stream.flush()
        elif finished:
            self.log.info("%s: %d/%d files", self.desc, self.done, self.total)
        elif now - self._last >= _LOG_EVERY_S:
            self._last = now
            rate, left = self.rate()
            self.log.info(
                "%s: %d/%d files (%.1f/s, %s left)",
                self.desc,
                self.done,
                self.total,
                rate,
                _duration(left),
            )

    def close(self) -> None:
        if self.live:
            self.stream.write("\n")
            self.stream.flush()
