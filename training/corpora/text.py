"""Text corpora: the fortune-mod quotes by category, and any folder of .txt files.

`build_fortunes` reads the category files of the Debian `fortunes` package
(quotes separated by lines holding a single `%`; the `off/` folder and the
`.dat`/`.u8` index files are skipped), writes one quote per file under
`out/<category>/`, and labels it with its category: a topic-classification
task. Quotes found in more than one category are kept once (in the first
category by name). `build_text_folder` turns any folder of .txt files into a
corpus folder: label = the file's parent folder name.

Both split 80/20 per label with `assign_splits`, so each label is in both
splits and no file is in both.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

from training.corpora import CorpusError
from training.corpora.manifest import (
    Row,
    assign_splits,
    prepare_output,
    seeded_order,
    write_manifest,
)

logger = logging.getLogger(__name__)

FORTUNES_DIR = Path("/usr/share/games/fortunes")
TEST_FRACTION = 0.2
SKIPPED_SUFFIXES = (".dat", ".u8", ".sh")
OVERSTRIKE = re.compile(r".\x08")  # "_\bA": old terminals' underline/bold
MISSING = "the fortune quotes are not installed in {src}: apt-get install fortune-mod fortunes"


def _clean(quote: str) -> str:
    """The quote without overstrike sequences or blank edges, with one final newline."""
    return OVERSTRIKE.sub("", quote).strip("\n").rstrip() + "\n"


def read_fortune_file(path: Path) -> list[str]:
    """The quotes of one fortune file, in file order, without empty ones."""
    text = path.read_text(encoding="utf-8", errors="replace")
    quotes = re.split(r"^%[ \t]*$", text, flags=re.MULTILINE)
    return [_clean(q) for q in quotes if q.strip()]


def read_fortunes(src: Path = FORTUNES_DIR) -> dict[str, list[str]]:
    """Category name → its quotes (distinct across categories), categories sorted by name."""
    src = Path(src)
    files = (
        sorted(p for p in src.iterdir() if p.is_file() and p.suffix not in SKIPPED_SUFFIXES)
        if src.is_dir()
        else []
    )
    if not files:
        raise CorpusError(MISSING.format(src=src))
    seen: set[str] = set()
    categories: dict[str, list[str]] = {}
    for path in files:
        kept = []
        for quote in read_fortune_file(path):
            if quote not in seen:
                seen.add(quote)
                kept.append(quote)
        categories[path.name] = kept
    return categories


def build_fortunes(
    out: Path,
    *,
    seed: int = 0,
    min_per_category: int = 40,
    max_per_category: int | None = None,
    src: Path = FORTUNES_DIR,
) -> Path:
    """Build the fortunes corpus in `out`; `max_per_category` keeps a seeded subset."""
    categories = read_fortunes(src)
    kept = {name: q for name, q in categories.items() if len(q) >= max(min_per_category, 2)}
    dropped = sorted(set(categories) - set(kept))
    if dropped:
        logger.info("dropping %d categories with too few quotes: %s", len(dropped), dropped)
    if not kept:
        raise CorpusError(f"no fortune category in {src} holds {min_per_category} quotes")
    out = Path(out)
    prepare_output(out)
    rows = []
    for name, quotes in kept.items():
        if max_per_category is not None and len(quotes) > max_per_category:
            keep = set(seeded_order(quotes, seed=seed, salt="subset")[:max_per_category])
            quotes = [q for i, q in enumerate(quotes) if i in keep]
        (out / name).mkdir()
        splits = assign_splits(quotes, seed=seed, test_fraction=TEST_FRACTION)
        width = len(str(len(quotes) - 1))
        for i, (quote, split) in enumerate(zip(quotes, splits, strict=True)):
            rel = f"{name}/{name}-{i:0{width}d}.txt"
            (out / rel).write_text(quote, encoding="utf-8")
            rows.append(Row(path=rel, label=name, split=split, extra={"category": name}))
    write_manifest(out, rows)
    return out


def build_text_folder(src: Path, out: Path, *, seed: int = 0) -> Path:
    """Copy every .txt file below `src` into `out` (same relative paths) with a manifest."""
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise CorpusError(f"text folder {src} does not exist or is not a folder")
    if out.resolve() == src.resolve() or out.resolve().is_relative_to(src.resolve()):
        raise CorpusError(f"--out {out} must lie outside the source folder {src}")
    files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() == ".txt")
    if not files:
        raise CorpusError(f"text folder {src} holds no .txt files")
    by_label: dict[str, list[str]] = {}
    for path in files:
        by_label.setdefault(path.parent.name, []).append(path.relative_to(src).as_posix())
    prepare_output(out)
    split_of: dict[str, str] = {}
    for rels in by_label.values():
        splits = assign_splits(rels, seed=seed, test_fraction=TEST_FRACTION)
        split_of.update(zip(rels, splits, strict=True))
    rows = []
    for path in files:
        rel = path.relative_to(src).as_posix()
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, out / rel)
        rows.append(Row(path=rel, label=path.parent.name, split=split_of[rel]))
    write_manifest(out, rows)
    return out
