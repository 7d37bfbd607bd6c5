"""Training on several data folders with a chosen share of each.

Without weights, the folders given to `cpc-embed train --data A --data B` are pooled,
so each weighs as much as it holds (the text stream by units, images and audio by
files): a small folder beside a large one is barely trained on. `data.folder_weights`
gives each folder its share of every batch instead; `MixedDataset` draws how many
rows come from each folder (multinomial in those shares), samples them from that
folder's own dataset and shuffles the rows together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from training.data import Dataset


def files_by_folder(files: Sequence[Path], folders: Sequence[Path]) -> list[list[Path]]:
    """`files` grouped by the folder (of `folders`) each lies in, in folder order."""
    roots = [f.resolve() for f in folders]
    groups: list[list[Path]] = [[] for _ in folders]
    for path in files:
        resolved = path.resolve()
        index = next(i for i, root in enumerate(roots) if resolved.is_relative_to(root))
        groups[index].append(path)
    return groups


@dataclass
class MixedDataset:
    """One dataset per folder; each batch takes its rows from them in `shares`."""

    parts: list[Dataset]
    shares: np.ndarray  # float64 [parts], sums to 1
    pad_value: int = 0  # fills the shorter rows where parts differ in width (text tokens)

    def sample(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        counts = rng.multinomial(batch_size, self.shares)
        pieces = [p.sample(int(n), rng) for p, n in zip(self.parts, counts, strict=True) if n]
        batch = _stack_padded(pieces, self.pad_value)
        return batch[rng.permutation(batch_size)]

    def describe(self) -> dict[str, Any]:
        return {
            "folder_shares": [round(float(s), 6) for s in self.shares],
            "parts": [p.describe() for p in self.parts],
        }


def _stack_padded(pieces: list[np.ndarray], pad_value: int) -> np.ndarray:
    """Concatenate batches along rows, padding every axis after the first to the widest."""
    shape = np.max([p.shape for p in pieces], axis=0)
    out = np.full((sum(len(p) for p in pieces), *shape[1:]), pad_value, dtype=pieces[0].dtype)
    row = 0
    for p in pieces:
        out[(slice(row, row + len(p)), *(slice(0, n) for n in p.shape[1:]))] = p
        row += len(p)
    return out
