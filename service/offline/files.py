"""The files of a folder for `cpc-embed index`: ids, modality and metadata.

An item id is the file's path relative to the folder with '/' separators;
hidden files and folders are left out. Metadata comes from a CSV with a
`path` (or `id`) column naming the file relative to the folder; every other
non-empty cell of its row is a metadata string (CSV cells carry no types).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from service.inference.inputs import looks_like_text
from service.preprocess import sniff_modality

MANIFEST = "manifest.csv"
_SNIFF_BYTES = 4096


class IndexerError(Exception):
    """A problem with the command's arguments or data; the message says what to do."""


def item_id(path: Path, root: Path) -> str:
    """The id of a file: its path relative to `root`, POSIX style."""
    return PurePosixPath(*path.relative_to(root).parts).as_posix()


def list_files(root: Path, exclude: Sequence[Path] = ()) -> list[Path]:
    """Every file under `root`, sorted, leaving out hidden ones and `exclude`."""
    skip = {p.resolve() for p in exclude}
    out = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if path.resolve() in skip:
            continue
        out.append(path)
    return out


def _csv_key(value: str) -> str:
    parts = [p for p in value.strip().replace("\\", "/").split("/") if p not in ("", ".")]
    return "/".join(parts)


def read_metadata(path: Path) -> dict[str, dict[str, str]]:
    """Metadata by id from a CSV with a `path` or `id` column (other columns: metadata)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            key = "path" if "path" in columns else "id" if "id" in columns else None
            if key is None:
                raise IndexerError(
                    f"{path}: a metadata CSV needs a `path` or `id` column; it has "
                    f"{', '.join(columns) or 'none'}"
                )
            out: dict[str, dict[str, str]] = {}
            for row in reader:
                name = _csv_key(row.get(key) or "")
                if name:
                    out[name] = {
                        col: val
                        for col, val in row.items()
                        if col and col != key and isinstance(val, str) and val != ""
                    }
            return out
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise IndexerError(f"{path}: cannot read the metadata CSV ({exc})") from exc


def guess_modality(path: Path) -> str | None:
    """ "audio", "image" or "text" from a file's first bytes, or None."""
    try:
        with path.open("rb") as f:
            head = f.read(_SNIFF_BYTES)
    except OSError:
        return None
    found = sniff_modality(head)
    if found is None and looks_like_text(head):
        return "text"
    return found
