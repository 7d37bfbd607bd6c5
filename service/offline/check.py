"""`cpc-embed check DATA_DIR`: every problem of a data folder, without changing it.

For each collection folder it reads the store (header, SQLite's full
`integrity_check`, the meta table) and the index snapshot (checksum, kind and
dimension, whether it holds what the store holds), and it lists what an
interrupted create, delete or snapshot left behind. Problems (a store or
snapshot that is damaged) make it exit 1; notes (leftovers that the next start
removes, a snapshot behind the store, which the next start reconciles) do not.
It only reads, so it may run beside a server. What each finding means:
docs/operations.md.
"""

from __future__ import annotations

import sqlite3
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from service.vectors.collection import INDEX_FILE, STALE_SNAPSHOTS, STORE_FILE
from service.vectors.index import SnapshotError, load_index
from service.vectors.manager import LEFTOVER_PREFIXES
from service.vectors.store import ItemStore, StoreDamaged, shown_problems
from service.vectors.validation import NAME_RE


@dataclass
class CheckReport:
    """What `check_data_dir` found: `problems` make the folder unhealthy, `notes` do not."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    healthy: list[str] = field(default_factory=list)

    def write(self, out: TextIO) -> None:
        for line in self.healthy:
            out.write(f"ok       {line}\n")
        for line in self.notes:
            out.write(f"note     {line}\n")
        for line in self.problems:
            out.write(f"PROBLEM  {line}\n")
        verdict = "no problems" if not self.problems else f"{len(self.problems)} problem(s)"
        out.write(
            f"{verdict}; {len(self.healthy)} collection(s) sound, {len(self.notes)} note(s)\n"
        )


def _check_snapshot(folder: Path, store: ItemStore, report: CheckReport) -> str:
    """The snapshot's state in a few words; a damaged one is a problem."""
    path = folder / INDEX_FILE
    for stale in sorted(folder.glob(STALE_SNAPSHOTS)):
        report.notes.append(f"{stale}: a snapshot cut short (removed at the next start)")
    if not path.exists():
        return "no snapshot (built from the store at start)"
    try:
        index, version = load_index(path, store.info.index, store.info.dim)
    except SnapshotError as exc:
        report.problems.append(f"{folder.name}: {exc} (rebuilt from the store at the next start)")
        return "snapshot damaged"
    stored, indexed = store.all_seqs(), index.seqs()
    missing, extra = np.setdiff1d(stored, indexed), np.setdiff1d(indexed, stored)
    if len(missing) or len(extra):
        report.notes.append(
            f"{folder.name}: snapshot of version {version} lacks {len(missing)} and has "
            f"{len(extra)} stale vector(s); the next start reconciles it with the store"
        )
        return "snapshot behind the store"
    return "snapshot current"


def _check_collection(folder: Path, report: CheckReport) -> None:
    try:
        store = ItemStore.open(folder / STORE_FILE, check=False)  # integrity_check below
    except (StoreDamaged, sqlite3.Error, OSError) as exc:
        report.problems.append(f"{folder.name}: {exc}")
        return
    try:
        problems = store.full_check()
        if problems:
            shown = shown_problems(problems, most=5)
            report.problems.append(f"{folder.name}: fails SQLite's integrity_check: {shown}")
            return
        snapshot = _check_snapshot(folder, store, report)
        report.healthy.append(f"{folder.name}: {store.count()} item(s), {snapshot}")
    except sqlite3.Error as exc:
        report.problems.append(f"{folder.name}: {store.path} cannot be read: {exc}")
    finally:
        store.close()


def check_data_dir(data_dir: Path) -> CheckReport:
    """Every problem and note of the collections under `data_dir` (nothing is changed)."""
    report = CheckReport()
    root = data_dir / "collections"
    if not root.is_dir():
        report.notes.append(f"{root} does not exist: no collection was ever created here")
        return report
    for folder in sorted(root.iterdir()):
        if folder.name.startswith(LEFTOVER_PREFIXES):
            report.notes.append(
                f"{folder}: left by an interrupted create or delete (removed at the next start)"
            )
        elif not folder.is_dir() or not NAME_RE.fullmatch(folder.name):
            report.notes.append(f"{folder}: not a collection folder (ignored)")
        elif not (folder / STORE_FILE).is_file():
            report.problems.append(f"{folder.name}: no {STORE_FILE} (the collection is ignored)")
        else:
            _check_collection(folder, report)
    return report


def main(data_dir: Path, out: TextIO = sys.stdout) -> int:
    """`cpc-embed check`: 0 when sound, 1 with problems, 2 when there is no such folder."""
    if not data_dir.is_dir():
        sys.stderr.write(f"cpc-embed check: {data_dir} is not a folder (CPC_DATA_DIR)\n")
        return 2
    report = check_data_dir(data_dir)
    report.write(out)
    return 1 if report.problems else 0
