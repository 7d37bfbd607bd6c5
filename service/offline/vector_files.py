"""The vectors file of `cpc-embed embed-folder`: one `.npz`, built from crash-safe shards.

The finished file holds plain NumPy arrays (no pickles): `ids`, `vectors`,
`failed_ids`, `failed_reasons` and `meta` (a JSON string). While a run is in
progress, results go to atomic shards in a hidden folder beside the output
(`.NAME.parts/`), which a rerun skips; `finish` merges the previous output and
the shards into the new output. The arrays and the shards:
docs/architecture.md (Offline embedding).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.durable import fsync_dir
from service.inference.pooling import VECTOR_POOLINGS, VectorPooling, pooled_dim

FORMAT = "cpc-embed-vectors-1"
SUFFIX = ".npz"


class VectorFileError(Exception):
    """The vectors file (or its shards) cannot be used; the message says why."""


@dataclass
class VectorFile:
    """A loaded vectors file."""

    ids: list[str]
    vectors: np.ndarray  # float32 [N, D]
    meta: dict[str, Any]
    failed: dict[str, str]  # id -> why

    @property
    def model(self) -> str:
        return str(self.meta["model"])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def pooling(self) -> VectorPooling:
        """How the vectors pool the steps (checked by `load_vectors`)."""
        pooling: VectorPooling = self.meta.get("pooling", "mean")
        return pooling


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write `arrays` to `path` atomically: a temporary file, fsync, rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _strings(values: list[str]) -> np.ndarray:
    return np.array(values, dtype=np.str_) if values else np.zeros(0, dtype="<U1")


def load_vectors(path: Path) -> VectorFile:
    """Read a finished vectors file; VectorFileError says what is wrong with it."""
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            ids = [str(i) for i in data["ids"]]
            vectors = np.asarray(data["vectors"], dtype=np.float32)
            failed = dict(
                zip(
                    (str(i) for i in data["failed_ids"]),
                    (str(r) for r in data["failed_reasons"]),
                    strict=True,
                )
            )
    except (OSError, KeyError, ValueError) as exc:
        raise VectorFileError(f"{path}: not a cpc-embed vectors file ({exc})") from exc
    if meta.get("format") != FORMAT:
        raise VectorFileError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    if vectors.ndim != 2 or vectors.shape[0] != len(ids):
        raise VectorFileError(f"{path}: {len(ids)} ids but vectors of shape {vectors.shape}")
    if meta.get("pooling", "mean") not in VECTOR_POOLINGS:
        raise VectorFileError(f"{path}: unknown pooling {meta.get('pooling')!r}")
    return VectorFile(ids, vectors, meta, failed)


class ShardWriter:
    """The output of one embed-folder run: previous output + shards, merged by `finish`."""

    def __init__(self, out: Path, meta: dict[str, Any]) -> None:
        if out.suffix != SUFFIX:
            raise VectorFileError(f"--out must name a {SUFFIX} file, got {out}")
        self.out = out
        self.meta = {"format": FORMAT, **meta}
        self.parts = out.parent / f".{out.name}.parts"
        self._previous: VectorFile | None = None
        self._check_meta()
        shards = self._shards()
        self._next = int(shards[-1].stem.split("-")[1]) + 1 if shards else 0  # next shard number

    def _check_meta(self) -> None:
        """Refuse to mix vectors of another model into an existing output or its shards."""
        if self.out.is_file():
            self._previous = load_vectors(self.out)
            self._same_model(self._previous.meta, self.out)
        meta_file = self.parts / "meta.json"
        if meta_file.is_file():
            self._same_model(json.loads(meta_file.read_text(encoding="utf-8")), self.parts)

    def _same_model(self, found: dict[str, Any], where: Path) -> None:
        keys = ("model", "dims", "layer", "pooling", "normalized")
        differ = [k for k in keys if found.get(k) != self.meta.get(k)]
        if "model" in differ:
            raise VectorFileError(
                f"{where} holds vectors of model {found.get('model')!r}, not "
                f"{self.meta['model']!r}: choose another --out, or delete it to start over"
            )
        if differ:
            what = ", ".join(f"{k} {found.get(k)!r}, not {self.meta.get(k)!r}" for k in differ)
            raise VectorFileError(
                f"{where} holds vectors of model {found.get('model')!r} with {what}: choose "
                "another --out, or delete it to start over"
            )

    def _shards(self) -> list[Path]:
        return sorted(self.parts.glob("part-*.npz")) if self.parts.is_dir() else []

    def done_ids(self) -> set[str]:
        """Ids already embedded: in the previous output or in a finished shard."""
        done = set(self._previous.ids) if self._previous is not None else set()
        for shard in self._shards():
            with np.load(shard, allow_pickle=False) as data:
                done.update(str(i) for i in data["ids"])
        return done

    def write_shard(self, ids: list[str], vectors: list[np.ndarray]) -> None:
        """Make `ids` done: one atomic shard file."""
        if not ids:
            return
        if not self.parts.is_dir():
            self.parts.mkdir(parents=True)
            (self.parts / "meta.json").write_text(json.dumps(self.meta), encoding="utf-8")
        path = self.parts / f"part-{self._next:06d}.npz"
        self._next += 1
        _write_npz(path, {"ids": _strings(ids), "vectors": np.stack(vectors).astype(np.float32)})

    def finish(self, failed: dict[str, str]) -> VectorFile:
        """Merge the previous output and the shards into `out`, then remove the shards."""
        ids: list[str] = []
        blocks: list[np.ndarray] = []
        if self._previous is not None:
            ids.extend(self._previous.ids)
            blocks.append(self._previous.vectors)
        for shard in self._shards():
            with np.load(shard, allow_pickle=False) as data:
                ids.extend(str(i) for i in data["ids"])
                blocks.append(np.asarray(data["vectors"], dtype=np.float32))
        dim = pooled_dim(int(self.meta["dims"]["context"]), self.meta["pooling"])
        vectors = np.concatenate(blocks) if blocks else np.zeros((0, dim), dtype=np.float32)
        # One row per id (a later shard wins), sorted by id.
        last = {name: i for i, name in enumerate(ids)}
        order = sorted(last)
        rows = np.array([last[name] for name in order], dtype=np.int64)
        vectors = vectors[rows] if len(rows) else vectors[:0]
        still_failed = {k: v for k, v in sorted(failed.items()) if k not in last}
        self.out.parent.mkdir(parents=True, exist_ok=True)
        _write_npz(
            self.out,
            {
                "ids": _strings(order),
                "vectors": vectors,
                "failed_ids": _strings(list(still_failed)),
                "failed_reasons": _strings(list(still_failed.values())),
                "meta": np.array(json.dumps(self.meta)),
            },
        )
        shutil.rmtree(self.parts, ignore_errors=True)
        return VectorFile(order, vectors, self.meta, still_failed)
