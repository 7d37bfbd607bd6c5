"""The `manifest.csv` of a corpus folder: one row per file, with its label and split.

    path,label,split[,extra columns...]
    s03/s03-0007.wav,s03,train,...

`write_manifest` writes the rows in the order given; `read_manifest` reads
them back (extra columns as strings in `Row.extra`). `assign_splits` is the one
rule every builder uses to split a group of items: stable under a seed and
independent of the order of the items. The format: docs/training.md (Built-in
corpora).
"""

from __future__ import annotations

import csv
import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from training.corpora import CorpusError

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.csv"
SPLITS = ("train", "test")
BASE_COLUMNS = ("path", "label", "split")


@dataclass(frozen=True)
class Row:
    """One file of a corpus: its relative POSIX path, label, split and extra columns."""

    path: str
    label: str
    split: str
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise CorpusError(f"split must be one of {SPLITS}, got {self.split!r} for {self.path}")
        if not self.path or self.path.startswith("/") or "\\" in self.path:
            raise CorpusError(f"manifest path must be relative and POSIX, got {self.path!r}")


def write_manifest(folder: Path, rows: Iterable[Row]) -> Path:
    """Write `folder/manifest.csv`; extra columns appear in first-seen order. Returns its path."""
    rows = list(rows)
    extras: dict[str, None] = {}
    for row in rows:
        extras.update(dict.fromkeys(k for k in row.extra if k not in extras))
    clash = set(extras) & set(BASE_COLUMNS)
    if clash:
        raise CorpusError(f"extra manifest columns clash with the base columns: {sorted(clash)}")
    target = Path(folder) / MANIFEST_NAME
    with target.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow([*BASE_COLUMNS, *extras])
        for row in rows:
            writer.writerow(
                [row.path, row.label, row.split, *(row.extra.get(k, "") for k in extras)]
            )
    return target


def read_records(source: Path) -> list[dict[str, str]]:
    """The rows of a manifest file as they are; a `CorpusError` if it lacks a base column."""
    with source.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in BASE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise CorpusError(
                f"{source} lacks the column(s) {', '.join(missing)}; "
                f"it needs {', '.join(BASE_COLUMNS)}"
            )
        return list(reader)


def read_manifest(folder: Path) -> list[Row]:
    """Read `folder/manifest.csv` back into rows (a `CorpusError` if absent or malformed)."""
    source = Path(folder) / MANIFEST_NAME
    if not source.is_file():
        raise CorpusError(f"{folder} holds no {MANIFEST_NAME}: build it with `cpc-embed data`")
    return [
        Row(
            path=rec["path"],
            label=rec["label"],
            split=rec["split"],
            extra={k: v for k, v in rec.items() if k not in BASE_COLUMNS},
        )
        for rec in read_records(source)
    ]


def seeded_order(keys: Sequence[str], *, seed: int, salt: str = "") -> list[int]:
    """Indices of `keys` ranked by a hash of (seed, salt, key): a seeded shuffle that
    does not depend on the order of the keys. Keys must be distinct."""
    if len(set(keys)) != len(keys):
        raise CorpusError("seeded_order needs distinct keys")
    return sorted(
        range(len(keys)),
        key=lambda i: hashlib.blake2b(f"{seed}\0{salt}\0{keys[i]}".encode()).digest(),
    )


def assign_splits(keys: Sequence[str], *, seed: int, test_fraction: float) -> list[str]:
    """The split of each key in one group (e.g. one class): `test_fraction` of them go to test.

    Keys are ranked by a seeded hash, so the result does not depend on their
    order; the first `round(test_fraction * n)` (at least 1 when n >= 2, at
    most n - 1) are `test`. Keys must be distinct.
    """
    n = len(keys)
    n_test = 0 if n < 2 else min(n - 1, max(1, round(test_fraction * n)))
    test = set(seeded_order(keys, seed=seed)[:n_test])
    return ["test" if i in test else "train" for i in range(n)]


def prepare_output(out: Path) -> None:
    """Make `out` ready for a fresh build: create it, or remove an earlier corpus built there.

    Only the files an earlier manifest lists (and the manifests) are removed;
    a folder holding anything else is refused, so a builder never deletes or
    mixes with the user's own files.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CorpusError(f"{out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    if not any(out.iterdir()):
        return
    if not (out / MANIFEST_NAME).is_file():
        raise CorpusError(f"{out} is not empty and holds no {MANIFEST_NAME}: choose another --out")
    logger.info("replacing the earlier corpus in %s", out)
    for row in read_manifest(out):
        (out / row.path).unlink(missing_ok=True)
    for manifest in out.rglob(MANIFEST_NAME):
        manifest.unlink()
    for folder in sorted((p for p in out.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        if not any(folder.iterdir()):
            folder.rmdir()
    if any(out.iterdir()):
        raise CorpusError(f"{out} holds files its manifest does not list: choose another --out")


def summarize(name: str, out: Path, rows: Sequence[Row]) -> str:
    """One line: how many files, labels and rows per split a corpus holds."""
    per_split = {s: sum(r.split == s for r in rows) for s in SPLITS}
    labels = len({r.label for r in rows})
    return (
        f"{name} corpus in {out}: {len(rows)} files, {labels} labels, "
        f"{per_split['train']} train / {per_split['test']} test"
    )
