"""A speaker-identification corpus of real human recordings that Debian packages ship.

Sources, each a folder of one speaker's recordings (label = that folder):
`asterisk` (Asterisk's telephony prompts), `ktuberling` and `klettres` (the KDE
games' spoken words and letters), or `folder_source(DIR)` for the user's own
`DIR/<speaker>/...`. Files are copied unchanged to
`out/<speaker>/<sub-folder>__<name>.<ext>`; recordings shorter than
`min_seconds` are dropped. Each speaker's recordings are split on their own,
`test_fraction` of them to `test`, so no recording is in both splits. The
packages and speakers: docs/training.md (Built-in corpora).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from training.corpora import CorpusError
from training.corpora.manifest import Row, assign_splits, prepare_output, write_manifest

logger = logging.getLogger(__name__)

TEST_FRACTION = 0.2  # of each speaker's recordings
MIN_SECONDS = 0.25  # shorter recordings (clicks, beeps) are dropped
MIN_FILES = 100  # a source folder with fewer usable recordings is not a speaker
AUDIO_SUFFIXES = (".wav", ".ogg", ".flac")
SKIP_FOLDERS = frozenset({"silence"})  # Asterisk's silence/ holds no speech


@dataclass(frozen=True)
class Source:
    """Where one package family keeps its speakers: `root/<speaker>/...`."""

    name: str
    root: Path
    packages: str  # what to install, for the error message

    def speaker_folders(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.is_dir() and not p.is_symlink())


SOURCES = {
    "asterisk": Source(
        "asterisk",
        Path("/usr/share/asterisk/sounds"),
        "asterisk-core-sounds-{en,es,fr,it,ru}-wav asterisk-prompt-it-menardi-wav",
    ),
    "ktuberling": Source("ktuberling", Path("/usr/share/ktuberling/sounds"), "ktuberling-data"),
    "klettres": Source("klettres", Path("/usr/share/klettres"), "klettres-data"),
}
DEFAULT_SOURCES = ("asterisk",)


def _recordings(folder: Path, min_seconds: float) -> list[tuple[Path, float]]:
    """(file, seconds) of every readable recording below `folder`, long enough, sorted."""
    found = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.suffix.lower() not in AUDIO_SUFFIXES or not path.is_file():
            continue
        if SKIP_FOLDERS.intersection(rel.parts[:-1]):
            continue
        try:
            seconds = float(sf.info(str(path)).duration)
        except (sf.LibsndfileError, RuntimeError, OSError) as exc:
            logger.warning("skipping %s: %s", path, exc)
            continue
        if seconds >= min_seconds:
            found.append((path, seconds))
    return found


def _speaker_id(source: Source, folder: Path) -> str:
    if source.name in ("asterisk", "folder"):
        return folder.name
    return f"{source.name}-{folder.name}"


def sources_named(names: Sequence[str]) -> list[Source]:
    """The packaged sources of these names (a `CorpusError` for an unknown one)."""
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        raise CorpusError(f"unknown voice source(s) {unknown}; known: {sorted(SOURCES)}")
    return [SOURCES[n] for n in names]


def folder_source(root: Path) -> Source:
    """The user's own folder of speaker folders, as a source."""
    return Source("folder", Path(root), f"nothing: put one folder per speaker in {root}")


def build_voices(
    out: Path,
    *,
    sources: Sequence[Source] | None = None,
    seed: int = 0,
    min_files: int = MIN_FILES,
    min_seconds: float = MIN_SECONDS,
    test_fraction: float = TEST_FRACTION,
) -> Path:
    """Build the voices corpus in `out` from `sources` (default: the Asterisk prompts).

    See the module docstring for the layout and the splits. Returns `out`.
    """
    chosen = list(sources) if sources is not None else sources_named(DEFAULT_SOURCES)
    missing = [s for s in chosen if not s.speaker_folders()]
    if missing:
        raise CorpusError(
            f"no speaker folders in {', '.join(str(s.root) for s in missing)}: "
            + "; ".join(
                s.packages if s.name == "folder" else f"apt-get install {s.packages}"
                for s in missing
            )
        )
    speakers: list[tuple[Source, Path, list[tuple[Path, float]]]] = []
    for source in chosen:
        for folder in source.speaker_folders():
            found = _recordings(folder, min_seconds)
            if len(found) < min_files:
                logger.info("leaving out %s: %d recordings < %d", folder, len(found), min_files)
                continue
            speakers.append((source, folder, found))
    if len(speakers) < 2:
        raise CorpusError(
            f"found {len(speakers)} speaker(s) with at least {min_files} recordings; "
            "a speaker probe needs two: install more voice packages or lower --min-files"
        )
    out = Path(out)
    prepare_output(out)
    rows: list[Row] = []
    for source, folder, found in speakers:
        speaker = _speaker_id(source, folder)
        names = [
            "__".join(p.relative_to(folder).with_suffix("").parts) + p.suffix.lower()
            for p, _ in found
        ]
        splits = assign_splits(names, seed=seed, test_fraction=test_fraction)
        (out / speaker).mkdir()
        for (path, seconds), name, split in zip(found, names, splits, strict=True):
            shutil.copyfile(path, out / speaker / name)
            rows.append(
                Row(
                    path=f"{speaker}/{name}",
                    label=speaker,
                    split=split,
                    extra={
                        "speaker": speaker,
                        "source": source.name,
                        "original": path.relative_to(source.root).as_posix(),
                        "seconds": f"{seconds:.3f}",
                    },
                )
            )
    write_manifest(out, rows)
    return out
