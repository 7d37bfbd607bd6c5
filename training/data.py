"""Training data from a folder of the user's files, held in memory and cropped in NumPy.

Each dataset decodes its files once with the service's own preprocessing (so a
served input is preprocessed exactly as in training), then `sample` draws a
batch of fixed-size windows with a NumPy generator whose state the checkpoint
carries. Unreadable files are skipped with a count and a warning; a folder with
nothing usable is a `DataError` that says why.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from service.bundle import ImagePreprocess, TextPreprocess
from service.errors import CPCError
from service.preprocess.audio import AUDIO_EXTENSIONS, load_audio
from service.preprocess.image import IMAGE_EXTENSIONS, array_to_patches, image_to_array, load_image
from service.preprocess.text import CHUNK_SPLITTER, TextTokenizer, split_sentences
from training.augment import augment_batch, check_augmentations
from training.config import AudioModelConfig, ImageModelConfig, TextModelConfig, TrainConfig
from training.mixing import MixedDataset, files_by_folder

logger = logging.getLogger(__name__)
TEXT_EXTENSIONS = (".txt",)
EXTENSIONS = {"audio": AUDIO_EXTENSIONS, "image": IMAGE_EXTENSIONS, "text": TEXT_EXTENSIONS}
T = TypeVar("T")


class DataError(Exception):
    """The data folder cannot be used for training; the message says why."""


class Dataset(Protocol):
    def sample(self, batch_size: int, rng: np.random.Generator) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]: ...


def list_files(
    data_dir: str | Path, extensions: Sequence[str], split: str | None = None
) -> list[Path]:
    """Every file below `data_dir` with one of `extensions`, in a stable order.

    With `split`, only the files that the folder's manifest.csv puts in that split
    (a labelled corpus from `cpc-embed data`: train on its train split only).
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist or is not a folder")
    chosen: set[Path] | None = None
    if split is not None:
        from training.corpora import CorpusError
        from training.corpora.manifest import read_manifest

        try:
            rows = read_manifest(root)
        except CorpusError as exc:
            raise DataError(f"--split {split} needs a manifest: {exc}") from exc
        chosen = {root / r.path for r in rows if r.split == split}
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in extensions and (chosen is None or p in chosen)
    )
    if not files:
        raise DataError(
            f"data folder {root} holds no {'/'.join(e.lstrip('.') for e in extensions)} files"
        )
    return files


def split_files(files: list[Path], val_fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Hold out a stable fraction of files by a hash of their name (stable as files are added)."""
    if val_fraction <= 0 or len(files) < 2:
        return files, []
    cut = int(val_fraction * 10_000)
    val = [f for f in files if zlib.crc32(f"{seed}:{f.name}".encode()) % 10_000 < cut]
    if not val or len(val) == len(files):
        return files, []
    held = set(val)
    return [f for f in files if f not in held], val


def read_all(files: list[Path], read: Callable[[Path], T], what: str) -> list[tuple[Path, T]]:
    """Read every file, skipping the unreadable ones with a count and a warning."""
    out: list[tuple[Path, T]] = []
    bad: list[str] = []
    for path in files:
        try:
            out.append((path, read(path)))
        except (CPCError, OSError, ValueError, UnicodeDecodeError) as exc:
            bad.append(f"{path.name} ({exc})")
    if bad:
        logger.warning(
            "skipped %d of %d %s files that could not be read, e.g. %s",
            len(bad),
            len(files),
            what,
            "; ".join(bad[:3]),
        )
    if not out:
        raise DataError(f"none of the {len(files)} {what} files could be read, e.g. {bad[0]}")
    return out


@dataclass
class AudioDataset:
    """Waveforms concatenated in one array; a sample is a random crop of `window` samples."""

    waveform: np.ndarray  # float32 [total samples]
    starts: np.ndarray  # int64 [files]: first sample of each file
    lengths: np.ndarray  # int64 [files]
    window: int
    sample_rate: int
    skipped_short: int = 0
    augment: tuple[str, ...] = ()  # training.augment effects applied to each crop

    def sample(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        idx = rng.integers(0, len(self.starts), size=batch_size)
        offsets = (rng.random(batch_size) * (self.lengths[idx] - self.window + 1)).astype(np.int64)
        pos = (self.starts[idx] + offsets)[:, None] + np.arange(self.window)[None, :]
        crops = self.waveform[pos]  # [B, window]
        if self.augment:
            crops = augment_batch(crops, self.augment, self.sample_rate, rng)
        return crops

    def describe(self) -> dict[str, Any]:
        return {
            "files": len(self.starts),
            "seconds": round(float(self.lengths.sum()) / self.sample_rate, 1),
            "skipped_shorter_than_window": self.skipped_short,
        }


def load_audio_dataset(
    files: list[Path], model: AudioModelConfig, window: int, augment: Sequence[str] = ()
) -> AudioDataset:
    check_augmentations(augment)
    clips = read_all(files, lambda p: load_audio(p, model.sample_rate), "audio")
    long_enough = [w for _, w in clips if len(w) >= window]
    skipped = len(clips) - len(long_enough)
    if not long_enough:
        longest = max(len(w) for _, w in clips) / model.sample_rate
        raise DataError(
            f"the training window of {window} samples ({window / model.sample_rate:.2f} s) is "
            f"longer than every file (the longest is {longest:.2f} s); lower data.window"
        )
    if skipped:
        logger.warning("skipped %d audio files shorter than the %d-sample window", skipped, window)
    lengths = np.array([len(w) for w in long_enough], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return AudioDataset(
        np.concatenate(long_enough).astype(np.float32),
        starts,
        lengths,
        window,
        model.sample_rate,
        skipped,
        tuple(augment),
    )


@dataclass
class ImageDataset:
    """Images resized once; a sample is a flipped/shifted copy cut into the patch grid.

    With `patch_jitter`, every patch also gets its own random per-channel gain and
    offset, and sometimes loses its colour (CPC v2's patch augmentation): colour
    then no longer tells which patches come from the same image, so the model
    has to predict shape and texture instead of taking that shortcut.
    """

    images: np.ndarray  # float32 [N, H, W, 3] in [0, 1]
    spec: ImagePreprocess
    shift: int = 4  # largest random translation in pixels (reflect-padded)
    patch_jitter: float = 0.0  # strength of the per-patch colour jitter; 0 turns it off

    def sample(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        idx = rng.integers(0, len(self.images), size=batch_size)
        flips = rng.random(batch_size) < 0.5
        shifts = rng.integers(-self.shift, self.shift + 1, size=(batch_size, 2))
        s = self.spec.image_size
        padded = np.pad(
            self.images[idx], ((0, 0), (self.shift,) * 2, (self.shift,) * 2, (0, 0)), mode="reflect"
        )
        out = []
        for img, flip, (dy, dx) in zip(padded, flips, shifts, strict=True):
            crop = img[self.shift + dy : self.shift + dy + s, self.shift + dx : self.shift + dx + s]
            out.append(array_to_patches(crop[:, ::-1] if flip else crop, self.spec))
        patches = np.stack(out)  # [B, rows, cols, 3, P, P]
        if self.patch_jitter > 0:
            patches = self._jitter(patches, rng)
        return patches

    def _jitter(self, patches: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        b, rows, cols = patches.shape[:3]
        j = self.patch_jitter
        gain = rng.uniform(1 - j, 1 + j, size=(b, rows, cols, 3, 1, 1)).astype(np.float32)
        offset = rng.uniform(-j, j, size=(b, rows, cols, 3, 1, 1)).astype(np.float32)
        grey = rng.random((b, rows, cols, 1, 1, 1)) < 0.25
        patches = np.where(grey, patches.mean(axis=3, keepdims=True), patches)
        return (patches * gain + offset).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        return {"files": len(self.images), "image_size": self.spec.image_size}


def image_spec(model: ImageModelConfig) -> ImagePreprocess:
    return ImagePreprocess(
        image_size=model.image_size, patch_size=model.patch_size, patch_stride=model.patch_stride
    )


def load_image_dataset(
    files: list[Path], model: ImageModelConfig, patch_jitter: float = 0.0
) -> ImageDataset:
    arrays = read_all(files, lambda p: image_to_array(load_image(p), model.image_size), "image")
    images = np.stack([a for _, a in arrays]).astype(np.float32)
    return ImageDataset(images, image_spec(model), patch_jitter=patch_jitter)


@dataclass
class TextDataset:
    """Units (sentences or token chunks) of every document in one stream; a sample is
    `window` consecutive units."""

    sentences: list[np.ndarray]  # int64 [tokens] per unit (sentence or chunk), in corpus order
    window: int
    pad_id: int
    documents: int = 0

    def sample(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        starts = rng.integers(0, len(self.sentences) - self.window + 1, size=batch_size)
        windows = [self.sentences[s : s + self.window] for s in starts]
        width = max(len(row) for rows in windows for row in rows)
        out = np.full((batch_size, self.window, width), self.pad_id, dtype=np.int64)
        for b, rows in enumerate(windows):
            for i, row in enumerate(rows):
                out[b, i, : len(row)] = row
        return out  # [B, window, L]

    def describe(self) -> dict[str, Any]:
        return {"documents": self.documents, "sentences": len(self.sentences)}


def text_spec(model: TextModelConfig) -> TextPreprocess:
    if model.chunk_tokens:
        return TextPreprocess(
            max_tokens=max(model.max_tokens, model.chunk_tokens),
            sentence_splitter=CHUNK_SPLITTER,
            chunk_tokens=model.chunk_tokens,
        )
    return TextPreprocess(max_tokens=model.max_tokens)


def read_documents(files: list[Path]) -> list[tuple[Path, list[str]]]:
    """Split every readable document into sentences; documents with none are dropped."""
    docs = read_all(files, lambda p: split_sentences(p.read_text(encoding="utf-8")), "text")
    return [(p, s) for p, s in docs if s]


def load_text_dataset(
    docs: list[tuple[Path, list[str]]], tokenizer: TextTokenizer, window: int, pad_id: int
) -> TextDataset:
    sentences: list[np.ndarray] = []
    for _, doc in docs:
        encoded, _ = tokenizer.encode_units(doc)
        sentences.extend(
            row[row != pad_id] if (row != pad_id).any() else row[:1] for row in encoded
        )
    if len(sentences) < window:
        raise DataError(
            f"the text holds {len(sentences)} sentences, fewer than the training window of "
            f"{window}; add text or lower data.window"
        )
    return TextDataset(sentences, window, pad_id, len(docs))


def extensions_for(cfg: TrainConfig) -> tuple[str, ...]:
    return EXTENSIONS[cfg.modality]


@dataclass
class Datasets:
    """What training samples from, and what the bundle records about it."""

    train: Dataset
    val: Dataset | None
    description: dict[str, Any]
    tokenizer_path: Path | None = None


DataDirs = str | Path | Sequence[str | Path]  # one data folder, or several trained on as one


def data_folders(data_dir: DataDirs) -> list[Path]:
    """The folders of `data_dir` (one path, or several), in order."""
    folders = [Path(data_dir)] if isinstance(data_dir, str | Path) else [Path(d) for d in data_dir]
    if not folders:
        raise DataError("no data folder given")
    return folders


def folder_shares(weights: Sequence[float], folders: Sequence[Path]) -> np.ndarray:
    """`weights` normalised to sum to 1, after checking there is one per folder."""
    if len(weights) != len(folders):
        raise DataError(
            f"data.folder_weights has {len(weights)} weights for {len(folders)} data folders "
            f"({', '.join(map(str, folders))}); give one weight per folder, in the same order"
        )
    shares = np.asarray(weights, dtype=np.float64)
    if not np.isfinite(shares).all() or (shares < 0).any() or shares.sum() <= 0:
        raise DataError(
            f"data.folder_weights must be non-negative numbers, not all zero; got {list(weights)}"
        )
    return shares / shares.sum()


def load_datasets(cfg: TrainConfig, data_dir: DataDirs, run_dir: Path) -> Datasets:
    """Read the data folder(s) for `cfg.modality` (`cfg.data.split` applies to each one's
    manifest); text also trains (or reuses) RUN_DIR/tokenizer.json."""
    folders = data_folders(data_dir)
    files = [f for d in folders for f in list_files(d, extensions_for(cfg), cfg.data.split)]
    train_files, val_files = split_files(files, cfg.data.val_fraction, cfg.seed)
    desc: dict[str, Any] = {
        "folder": str(folders[0].resolve()),
        **({"folders": [str(d.resolve()) for d in folders]} if len(folders) > 1 else {}),
        "split": cfg.data.split,
        "files_found": len(files),
        "train_files": len(train_files),
        "val_files": len(val_files),
    }
    model = cfg.model
    weights = cfg.data.folder_weights
    if isinstance(model, AudioModelConfig):
        window, effects = cfg.data.window, cfg.data.audio_augment
        train = _mixed(
            lambda f: load_audio_dataset(f, model, window, effects), train_files, folders, weights
        )
        val: Dataset | None = _optional(
            lambda: load_audio_dataset(val_files, model, window), val_files
        )
        return Datasets(train, val, {**desc, **train.describe()})
    if isinstance(model, ImageModelConfig):
        jitter = cfg.data.patch_jitter
        train = _mixed(
            lambda f: load_image_dataset(f, model, jitter), train_files, folders, weights
        )
        val = _optional(lambda: load_image_dataset(val_files, model), val_files)
        return Datasets(train, val, {**desc, **train.describe()})
    assert isinstance(model, TextModelConfig)
    from training.tokenizer import train_tokenizer

    spec = text_spec(model)
    train_docs = read_documents(train_files)
    if not train_docs:
        raise DataError(
            f"no sentences found in the {len(train_files)} text files of "
            f"{', '.join(map(str, folders))}"
        )
    tok_path = run_dir / spec.tokenizer_file
    if not tok_path.is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        train_tokenizer((s for _, doc in train_docs for s in doc), model.vocab_size, tok_path)
    tokenizer = TextTokenizer.from_file(tok_path, spec)
    if tokenizer.vocab_size > model.vocab_size:
        raise DataError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but model.vocab_size is "
            f"{model.vocab_size}; raise model.vocab_size to at least that"
        )
    window = cfg.data.window
    docs_of = {path: doc for path, doc in train_docs}
    train = _mixed(
        lambda f: load_text_dataset(
            [(p, docs_of[p]) for p in f if p in docs_of], tokenizer, window, spec.pad_id
        ),
        [p for p, _ in train_docs],
        folders,
        weights,
        spec.pad_id,
    )
    val = _optional(
        lambda: load_text_dataset(read_documents(val_files), tokenizer, window, spec.pad_id),
        val_files,
    )
    return Datasets(train, val, {**desc, **train.describe()}, tok_path)


def _mixed(
    load: Callable[[list[Path]], Dataset],
    files: list[Path],
    folders: list[Path],
    weights: Sequence[float],
    pad_value: int = 0,
) -> Dataset:
    """The training set of `files`: pooled, or one part per folder in the shares `weights`."""
    if not weights:
        return load(files)
    shares = folder_shares(weights, folders)
    groups = files_by_folder(files, folders)
    parts, kept = [], []
    for folder, group, share in zip(folders, groups, shares, strict=True):
        if share == 0:
            continue
        if not group:
            raise DataError(
                f"data.folder_weights gives {folder} a share, but none of its "
                "files are in the training set"
            )
        parts.append(load(group))
        kept.append(share)
    return MixedDataset(parts, np.asarray(kept) / sum(kept), pad_value)


def _optional(load: Callable[[], T], files: list[Path]) -> T | None:
    """A validation set if the held-out files make one; training goes on without it."""
    if not files:
        return None
    try:
        return load()
    except DataError as exc:
        logger.warning("no validation set: %s", exc)
        return None
