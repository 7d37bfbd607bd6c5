"""Linear-probe evaluation, the CPC paper's protocol: freeze, embed, fit a logistic regression.

`evaluate(model_path, data_dir)` embeds every labelled file of `data_dir` with
the frozen model (a run folder through torch, a bundle through onnxruntime),
pools the context vectors c and the encoder vectors z over each file's valid
steps, and fits a logistic regression on the train split of each feature set:
the trained model's, the same architecture with random weights, and a hand-made
baseline (`training.evaluation.baselines`); audio adds the frame-level probe.
`write_report` writes `eval.json` and the bar chart `eval.png`. The feature
sets, the frame probe and the labels: docs/training.md (Evaluation).
"""

from __future__ import annotations

import logging
import time
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from scipy import sparse
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

from service.bundle import (
    AudioPreprocess,
    ImagePreprocess,
    TextPreprocess,
    load_bundle_spec,
)
from service.inference.pooling import pool
from service.inference.runner import OnnxRunner, collate, slice_valid, valid_steps
from service.preprocess.audio import load_audio
from service.preprocess.image import array_to_patches, image_to_array, load_image
from service.preprocess.text import TextTokenizer
from training.checkpoint import CHECKPOINT_FILE
from training.config import TrainConfig, config_from_dict
from training.corpora import CorpusError
from training.corpora.manifest import MANIFEST_NAME, SPLITS, read_records
from training.data import extensions_for, read_all
from training.evaluation.baselines import (
    mfcc,
    mfcc_hop_samples,
    mfcc_statistics,
    pixel_features,
    tfidf_features,
)
from training.export.onnx_export import load_run_model, preprocess_spec
from training.models.cpc import CPCModel, build_model

logger = logging.getLogger(__name__)

ForwardFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # input -> (z, c)
Labels = Sequence[str] | np.ndarray
ProbeFn = Callable[[str, Any, Any, tuple[Labels, Labels]], None]  # name, train x, test x, y
AnyPreprocess = AudioPreprocess | ImagePreprocess | TextPreprocess
MAX_SECONDS = 4.0  # audio is centre-cropped to this for speed
BATCH_SIZE = 16  # files per forward pass
RANDOM_SEED = 0  # torch seed of the random-weight model
PROBE_C = 1.0  # inverse L2 strength of the probe (scikit-learn's default)
PROBE_MAX_ITER = 5000  # lbfgs iterations; ample for standardised features
# BLAS/OpenMP threads of a probe: lbfgs's many small products gain little from
# threads and lose much when the cores are busy (on 2 cores shared with
# training runs, 90,000 x 256 frames took 27 s on one thread, 181 s on two).
PROBE_THREADS = 1
BASELINE_NAMES = {"audio": "mfcc", "image": "pixels", "text": "tfidf"}
# Frame probe (audio). The paper classifies speakers from single c_t vectors
# once the GRU has heard 1 s of the utterance, so frames start at that step.
CONTEXT_SECONDS = 1.0
# Frames kept per file, evenly spaced after the first second: 20 samples a
# 2-4 s clip's 100-300 eligible steps (neighbouring c_t are nearly equal, so
# more add rows, not information) and keeps every file's weight alike.
FRAMES_PER_FILE = 20
# Rows per split above which the frames are evenly subsampled, to bound the
# probe's time on large corpora: 9 speakers x 500 files x 20 frames = 90,000
# rows of 256 numbers took 27 s (one thread, 2 busy cores), so this size fits.
MAX_FRAMES_PER_SPLIT = 100_000
FRAME_KEYS = ("cpc_frames", "random_init_frames", "baseline_mfcc_frames")
PROBE_DESCRIPTION = (
    f"logistic regression (scikit-learn lbfgs, C={PROBE_C}, max_iter={PROBE_MAX_ITER}, "
    f"random_state=0, threads={PROBE_THREADS}) on standardised features (TF-IDF rows as "
    "they are) fitted on the train split; accuracy on the test split"
)


def probe_accuracy(
    train_x: np.ndarray | sparse.spmatrix,
    train_y: Labels,
    test_x: np.ndarray | sparse.spmatrix,
    test_y: Labels,
    *,
    c: float = PROBE_C,
) -> float:
    """Test accuracy of a logistic regression fitted on the train features.

    Dense features are standardised (statistics of the train split only);
    sparse ones (TF-IDF rows, already unit length) are used as they are.
    """
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    if len(np.unique(train_y)) < 2:
        raise ValueError("the train split holds fewer than two classes; nothing to separate")
    if len(test_y) == 0:
        raise ValueError("the test split is empty")
    is_sparse = sparse.issparse(train_x)
    if not is_sparse:
        train_x = np.nan_to_num(np.asarray(train_x, dtype=np.float64))
        test_x = np.nan_to_num(np.asarray(test_x, dtype=np.float64))
    clf = LogisticRegression(C=c, max_iter=PROBE_MAX_ITER, random_state=0)
    probe = clf if is_sparse else make_pipeline(StandardScaler(), clf)
    with threadpool_limits(limits=PROBE_THREADS):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            probe.fit(train_x, train_y)
        if any(issubclass(w.category, ConvergenceWarning) for w in caught):
            logger.warning("the probe did not converge in %d iterations", PROBE_MAX_ITER)
        return float(np.mean(probe.predict(test_x) == test_y))


TEST_PERCENT = 20  # class-folder fallback: share of files in the test split


@dataclass(frozen=True)
class LabelledFile:
    path: Path
    label: str
    split: str  # "train" or "test"


def _stable_hash(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def _read_manifest(root: Path) -> list[LabelledFile]:
    """A user's manifest, leniently: blanks and case forgiven, unusable rows counted."""
    try:
        rows = read_records(root / MANIFEST_NAME)
    except CorpusError as exc:
        raise ValueError(str(exc)) from None
    items: list[LabelledFile] = []
    other_split = absent = 0
    for row in rows:
        split = (row["split"] or "").strip().lower()
        if split not in SPLITS:
            other_split += 1
            continue
        path = root / PurePosixPath((row["path"] or "").strip())
        if not path.is_file():
            absent += 1
            continue
        items.append(LabelledFile(path, (row["label"] or "").strip(), split))
    if other_split or absent:
        logger.warning(
            "%s: ignored %d rows whose split is not train/test and %d whose file is missing",
            root / MANIFEST_NAME,
            other_split,
            absent,
        )
    return items


def _read_class_folders(root: Path, extensions: Sequence[str]) -> list[LabelledFile]:
    items = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if len(rel.parts) < 2 or not path.is_file() or path.suffix.lower() not in extensions:
            continue
        split = "test" if _stable_hash(rel.as_posix()) % 100 < TEST_PERCENT else "train"
        items.append(LabelledFile(path, path.parent.name, split))
    return items


def cap_per_split(items: list[LabelledFile], limit: int) -> list[LabelledFile]:
    """At most `limit` files per split, taken from the classes in turn (a stable choice)."""
    kept: list[LabelledFile] = []
    for split in SPLITS:
        by_class: dict[str, list[LabelledFile]] = {}
        for it in sorted(items, key=lambda it: _stable_hash(str(it.path))):
            if it.split == split:
                by_class.setdefault(it.label, []).append(it)
        queues = [by_class[label] for label in sorted(by_class)]
        taken = 0
        for depth in range(max((len(q) for q in queues), default=0)):
            for queue in queues:
                if depth < len(queue) and taken < limit:
                    kept.append(queue[depth])
                    taken += 1
    return kept


def read_labels(
    data_dir: str | Path, extensions: Sequence[str], max_per_split: int | None = None
) -> tuple[list[LabelledFile], str]:
    """Labelled files of `data_dir` and where the labels came from ("manifest.csv" or "folders")."""
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such data folder")
    if (root / MANIFEST_NAME).is_file():
        items, source = _read_manifest(root), MANIFEST_NAME
    else:
        items, source = _read_class_folders(root, extensions), "folders"
        if not items:
            raise ValueError(
                f"{root} has no {MANIFEST_NAME} and no class sub-folders of "
                f"{'/'.join(e.lstrip('.') for e in extensions)} files to take labels from"
            )
    if max_per_split is not None:
        if max_per_split < 1:
            raise ValueError(f"max_per_split must be at least 1, got {max_per_split}")
        items = cap_per_split(items, max_per_split)
    check_splits(items, root)
    return items, source


def check_splits(items: list[LabelledFile], root: Path | str = "the data") -> None:
    """Both splits present, each with at least two classes."""
    for split in SPLITS:
        labels = {it.label for it in items if it.split == split}
        if not labels:
            raise ValueError(f"{root}: the {split} split holds no usable files")
        if len(labels) < 2:
            raise ValueError(
                f"{root}: the {split} split holds one class only ({labels.pop()}); "
                "a linear probe needs at least two"
            )


def torch_forward(model: CPCModel) -> ForwardFn:
    """Run a torch CPC model on NumPy inputs (eval mode, no gradients)."""
    model = model.eval().float()

    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            z, c = model(torch.from_numpy(x))
        return z.float().numpy(), c.float().numpy()

    return run


def random_forward(cfg: TrainConfig, seed: int = RANDOM_SEED) -> ForwardFn:
    """The same architecture with random weights drawn under `seed` (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(cfg)
    return torch_forward(model)


@dataclass
class FrozenModel:
    """What evaluation needs of a run or a bundle."""

    kind: str  # "run" or "bundle"
    modality: str
    forward: ForwardFn
    config: TrainConfig
    preprocess: AnyPreprocess
    tokenizer: TextTokenizer | None
    description: dict[str, Any]


def load_frozen_model(path: str | Path, quantized: bool = False) -> FrozenModel:
    """A run folder (checkpoint.pt, torch) or a bundle folder (bundle.json, onnxruntime)."""
    folder = Path(path)
    if (folder / CHECKPOINT_FILE).is_file():
        if quantized:
            raise ValueError("--quantized needs a bundle exported with --quantize, not a run")
        model, cfg, ckpt = load_run_model(folder)
        prep = preprocess_spec(cfg)
        tokenizer = None
        if isinstance(prep, TextPreprocess):
            if not ckpt.get("tokenizer"):
                raise FileNotFoundError(f"{folder}: the text run records no tokenizer")
            tokenizer = TextTokenizer.from_file(folder / ckpt["tokenizer"], prep)
        info = {"path": str(folder.resolve()), "step": ckpt.get("step")}
        return FrozenModel("run", cfg.modality, torch_forward(model), cfg, prep, tokenizer, info)
    if (folder / "bundle.json").is_file():
        spec = load_bundle_spec(folder)
        if not spec.training:
            raise ValueError(f"{folder}/bundle.json has no training config to rebuild the model")
        onnx_file = spec.onnx.quantized_file if quantized else spec.onnx.file
        if onnx_file is None:
            raise ValueError(f"{folder} has no quantized model; export it with --quantize")
        onnx = spec.onnx
        runner = OnnxRunner.open(
            folder / onnx_file, onnx.input, onnx.encoder_output, onnx.context_output
        )
        forward = runner.forward
        prep = spec.preprocess
        tokenizer = None
        if isinstance(prep, TextPreprocess):
            tokenizer = TextTokenizer.from_file(folder / prep.tokenizer_file, prep)
        info = {
            "path": str(folder.resolve()),
            "name": spec.name,
            "version": spec.version,
            "file": onnx_file,
            "step": spec.metrics.get("step"),
        }
        cfg = config_from_dict(spec.training)
        return FrozenModel("bundle", spec.modality, forward, cfg, prep, tokenizer, info)
    if not folder.exists():
        raise FileNotFoundError(f"{folder}: no such run or bundle folder")
    raise FileNotFoundError(
        f"{folder}: neither {CHECKPOINT_FILE} (a run) nor bundle.json (a bundle)"
    )


def centre_crop(wave: np.ndarray, max_samples: int) -> np.ndarray:
    if len(wave) <= max_samples:
        return wave
    start = (len(wave) - max_samples) // 2
    return wave[start : start + max_samples]


def input_reader(
    prep: AnyPreprocess, tokenizer: TextTokenizer | None, max_seconds: float = MAX_SECONDS
) -> Callable[[Path], np.ndarray]:
    """file -> model input: waveform [n], image [S, S, 3] in [0, 1] or token ids [sentences, L]."""
    if isinstance(prep, AudioPreprocess):
        max_samples = max(prep.receptive_field, int(max_seconds * prep.sample_rate))

        def read_audio(path: Path) -> np.ndarray:
            wave = centre_crop(load_audio(path, prep.sample_rate), max_samples)
            return np.pad(wave, (0, max(0, prep.receptive_field - len(wave))))  # >= 1 step

        return read_audio
    if isinstance(prep, ImagePreprocess):
        return lambda path: image_to_array(load_image(path), prep.image_size)  # patched per batch
    if tokenizer is None:
        raise ValueError("a text model needs its tokenizer")
    return lambda path: tokenizer.encode_document(path.read_text(encoding="utf-8"))[0]


def _model_input(x: np.ndarray, prep: AnyPreprocess) -> np.ndarray:
    """What `input_reader` gives, as the model takes it: images become patches here."""
    return array_to_patches(x, prep) if isinstance(prep, ImagePreprocess) else x


@dataclass(frozen=True)
class PooledSteps:
    """What one pass over the inputs keeps of each input's step vectors, in input order."""

    context: np.ndarray  # float32 [N, C]: mean of c over the input's valid steps
    context_std: np.ndarray  # float32 [N, C]: standard deviation (ddof=0) of c over them
    encoder: np.ndarray  # float32 [N, Z]: mean of z over them
    frames: list[np.ndarray]  # float32 [n_i, C]: c at the steps asked for ([0, C] if none)

    @property
    def context_stats(self) -> np.ndarray:
        """float32 [N, 2C]: mean ⊕ standard deviation of c."""
        return np.concatenate([self.context, self.context_std], axis=1)


def pool_steps(
    forward: ForwardFn,
    inputs: list[np.ndarray],
    prep: AnyPreprocess,
    batch_size: int = BATCH_SIZE,
    frames_at: Sequence[np.ndarray] | None = None,
) -> PooledSteps:
    """Pool each input's valid steps (mean and std of c, mean of z), padding only in a batch.

    `frames_at[i]` (int steps, each below input i's valid steps) also keeps
    c at those steps of input i.
    """
    if not inputs:
        raise ValueError("nothing to embed")
    if frames_at is not None and len(frames_at) != len(inputs):
        raise ValueError(f"{len(frames_at)} frame lists for {len(inputs)} inputs")
    no_frames = np.zeros(0, dtype=np.int64)
    order = sorted(range(len(inputs)), key=lambda i: inputs[i].shape[0])  # similar lengths
    pooled: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        arrays = [_model_input(inputs[i], prep) for i in idx]
        z, c = forward(collate(arrays, prep))
        steps = [valid_steps(a, prep) for a in arrays]
        for i, (zi, ci) in zip(idx, slice_valid(z, c, steps), strict=True):
            at = no_frames if frames_at is None else np.asarray(frames_at[i], dtype=np.int64)
            if at.size and (at.min() < 0 or at.max() >= len(ci)):
                raise ValueError(f"input {i}: frames asked outside its {len(ci)} valid steps")
            stats = pool(ci, "stats")
            width = ci.shape[1]
            pooled[i] = (stats[:width], stats[width:], pool(zi, "mean"), ci[at])

    def stacked(k: int) -> np.ndarray:
        return np.stack([pooled[i][k] for i in range(len(inputs))]).astype(np.float32)

    frames = [pooled[i][3].astype(np.float32) for i in range(len(inputs))]
    return PooledSteps(stacked(0), stacked(1), stacked(2), frames)


def embed_inputs(
    forward: ForwardFn, inputs: list[np.ndarray], prep: AnyPreprocess, batch_size: int = BATCH_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """Mean-pooled (c [N, C], z [N, Z]) of prepared inputs, padding only within a batch."""
    pooled = pool_steps(forward, inputs, prep, batch_size)
    return pooled.context, pooled.encoder


def embed_files(
    forward: ForwardFn,
    files: Sequence[Path],
    prep: AnyPreprocess,
    tokenizer: TextTokenizer | None = None,
    *,
    batch_size: int = BATCH_SIZE,
    max_seconds: float = MAX_SECONDS,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean-pooled (c, z) of files read as the model reads them; unreadable files raise."""
    read = input_reader(prep, tokenizer, max_seconds)
    return embed_inputs(forward, [read(Path(f)) for f in files], prep, batch_size)


def first_frame_step(prep: AudioPreprocess, seconds: float = CONTEXT_SECONDS) -> int:
    """The first step with `seconds` of audio before it: 100 at 16 kHz and 160 samples a step."""
    return -(-round(seconds * prep.sample_rate) // prep.hop_samples)  # ceiling


def frame_steps(num_steps: int, first: int, per_file: int = FRAMES_PER_FILE) -> np.ndarray:
    """At most `per_file` distinct steps of [first, num_steps), evenly spaced from `first`."""
    span = num_steps - first
    if span <= 0 or per_file <= 0:
        return np.zeros(0, dtype=np.int64)
    n = min(per_file, span)
    return first + (np.arange(n, dtype=np.int64) * span) // n


def even_rows(n: int, limit: int | None) -> np.ndarray:
    """Indices of at most `limit` of `n` rows, evenly spaced (all of them under the limit)."""
    if limit is None or n <= limit:
        return np.arange(n)
    return (np.arange(limit, dtype=np.int64) * n) // limit


def mfcc_baseline(
    waves: Sequence[np.ndarray], prep: AudioPreprocess, frames_at: Sequence[np.ndarray]
) -> tuple[np.ndarray, list[np.ndarray]]:
    """MFCC statistics [N, 80] of each clip and its per-frame MFCCs [n_i, 20] at the CPC frames.

    CPC step t sees the samples from t * hop_samples on (unpadded convs) and
    MFCC frame j's 25 ms window starts at j * the MFCC hop, so step t is MFCC
    frame t * hop_samples // MFCC hop: frame t itself when both hops are 10 ms.
    """
    mfcc_hop = mfcc_hop_samples(prep.sample_rate)
    stats, frames = [], []
    for wave, at in zip(waves, frames_at, strict=True):
        coeffs = mfcc(wave, prep.sample_rate)  # once per clip, for both feature sets
        stats.append(mfcc_statistics(coeffs))
        rows = np.minimum(
            np.asarray(at, dtype=np.int64) * prep.hop_samples // mfcc_hop, len(coeffs) - 1
        )
        frames.append(coeffs[rows].astype(np.float32))
    return np.stack(stats), frames


def _baseline(modality: str, items: list[LabelledFile]) -> tuple[Any, Any]:
    """Image or text baseline features (train, test) of the items (audio: `mfcc_baseline`)."""
    train = [it for it in items if it.split == "train"]
    test = [it for it in items if it.split == "test"]
    if modality == "image":
        pixels = {it.path: pixel_features(load_image(it.path)) for it in items}
        return np.stack([pixels[it.path] for it in train]), np.stack(
            [pixels[it.path] for it in test]
        )
    texts = [it.path.read_text(encoding="utf-8") for it in train]
    train_x, test_x, _ = tfidf_features(texts, [it.path.read_text(encoding="utf-8") for it in test])
    return train_x, test_x


def frame_settings(
    prep: AudioPreprocess, frames_per_file: int, max_frames_per_split: int | None
) -> dict[str, Any]:
    """How the frame probe chooses its frames, for eval.json's protocol."""
    mfcc_hop = mfcc_hop_samples(prep.sample_rate)
    return {
        "description": (
            "the paper's frame-level probe: single context vectors c_t (and the MFCCs of "
            "the same frames) at steps t >= first_step, i.e. after context_seconds of audio; "
            "fitted on the frames of train files, accuracy on the frames of test files"
        ),
        "context_seconds": CONTEXT_SECONDS,
        "step_seconds": prep.hop_seconds,
        "first_step": first_frame_step(prep),
        "frames_per_file": frames_per_file,
        "selection": (
            "per file of T valid steps: n = min(frames_per_file, T - first_step) steps "
            "first_step + floor(k (T - first_step) / n), k < n; none if T <= first_step"
        ),
        "max_frames_per_split": max_frames_per_split,
        "cap": (
            "above max_frames_per_split, rows floor(k N / max_frames_per_split) of a split's "
            "N frames (files in order, frames in time order), the same rows for every feature set"
        ),
        "mfcc_alignment": (
            f"CPC step t -> MFCC frame t * {prep.hop_samples} // {mfcc_hop} of the same "
            f"cropped clip (both windows start at sample t * {prep.hop_samples}); "
            "20 coefficients, no deltas"
        ),
    }


def _frame_probe(
    features: dict[str, list[np.ndarray]],
    counts: np.ndarray,
    labels: np.ndarray,
    is_train: np.ndarray,
    max_frames_per_split: int | None,
    probe: ProbeFn,
) -> dict[str, Any]:
    """Probe every per-file frame feature set on train-file frames, score on test-file frames.

    `features[name][i]` holds file i's frames ([counts[i], D], the same steps
    for every name). Returns the frame counts and, if skipped, why.
    """
    rows: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    info: dict[str, Any] = {}
    for split, files in (("train", np.flatnonzero(is_train)), ("test", np.flatnonzero(~is_train))):
        frame_labels = np.repeat(labels[files], counts[files])
        keep = even_rows(len(frame_labels), max_frames_per_split)
        rows[split] = (files, keep, frame_labels[keep])
        info[f"{split}_files"] = int(np.count_nonzero(counts[files]))
        info[f"{split}_frames_available"] = len(frame_labels)
        info[f"{split}_frames"] = len(keep)
    train_labels, test_labels = rows["train"][2], rows["test"][2]
    skipped = None
    if not len(train_labels) or not len(test_labels):
        skipped = (
            f"{info['train_frames']} train and {info['test_frames']} test frames: "
            "a split has no file long enough for one frame"
        )
    elif len(np.unique(train_labels)) < 2:
        skipped = "the train frames hold fewer than two classes"
    if skipped:
        logger.warning("frame probe skipped: %s", skipped)
        return {**info, "skipped": skipped}

    def stacked(per_file: list[np.ndarray], split: str) -> np.ndarray:
        files, keep, _ = rows[split]
        return np.concatenate([per_file[i] for i in files])[keep]

    logger.info(
        "frame probe: %d train frames of %d files, %d test frames of %d files",
        info["train_frames"],
        info["train_files"],
        info["test_frames"],
        info["test_files"],
    )
    for name, per_file in features.items():
        probe(
            name, stacked(per_file, "train"), stacked(per_file, "test"), (train_labels, test_labels)
        )
    return {**info, "skipped": None}


def evaluate(
    path: str | Path,
    data_dir: str | Path,
    *,
    quantized: bool = False,
    max_per_split: int | None = None,
    max_seconds: float = MAX_SECONDS,
    batch_size: int = BATCH_SIZE,
    frames_per_file: int = FRAMES_PER_FILE,
    max_frames_per_split: int | None = MAX_FRAMES_PER_SPLIT,
) -> dict[str, Any]:
    """Linear-probe accuracies of a run or bundle on a labelled folder (the eval.json dict)."""
    began = time.perf_counter()
    frozen = load_frozen_model(path, quantized)
    prep = frozen.preprocess
    items, source = read_labels(data_dir, extensions_for(frozen.config), max_per_split)
    read = input_reader(prep, frozen.tokenizer, max_seconds)
    loaded = dict(read_all([it.path for it in items], read, frozen.modality))
    skipped = len(items) - sum(it.path in loaded for it in items)
    items = [it for it in items if it.path in loaded]
    check_splits(items, data_dir)
    train_y = [it.label for it in items if it.split == "train"]
    test_y = [it.label for it in items if it.split == "test"]
    is_train = np.array([it.split == "train" for it in items])
    inputs = [loaded[it.path] for it in items]
    frames_at = None
    if isinstance(prep, AudioPreprocess):  # the same steps for CPC, random weights and MFCCs
        first = first_frame_step(prep)
        frames_at = [frame_steps(prep.num_steps(len(x)), first, frames_per_file) for x in inputs]
    logger.info("embedding %d train and %d test files", len(train_y), len(test_y))

    results: dict[str, float] = {}
    dims: dict[str, int] = {}

    def probe(
        name: str,
        train_x: Any,
        test_x: Any,
        labels: tuple[Labels, Labels] = (train_y, test_y),
    ) -> None:
        t0 = time.perf_counter()
        results[name] = probe_accuracy(train_x, labels[0], test_x, labels[1])
        dims[name] = int(train_x.shape[1])
        logger.info(
            "%s: %.4f (%d-d, %d train rows, probe %.1f s)",
            name,
            results[name],
            dims[name],
            train_x.shape[0],
            time.perf_counter() - t0,
        )

    def embed(forward: ForwardFn, what: str) -> PooledSteps:
        t0 = time.perf_counter()
        pooled = pool_steps(forward, inputs, prep, batch_size, frames_at)
        logger.info("embedded with the %s model in %.1f s", what, time.perf_counter() - t0)
        return pooled

    trained = embed(frozen.forward, frozen.kind)
    probe("cpc_context", trained.context[is_train], trained.context[~is_train])
    stats = trained.context_stats
    probe("cpc_context_stats", stats[is_train], stats[~is_train])
    probe("cpc_encoder", trained.encoder[is_train], trained.encoder[~is_train])
    rand = embed(random_forward(frozen.config), "random-weight")
    probe("random_init", rand.context[is_train], rand.context[~is_train])
    stats = rand.context_stats
    probe("random_init_stats", stats[is_train], stats[~is_train])
    frame_protocol: dict[str, Any] = {}
    if isinstance(prep, AudioPreprocess) and frames_at is not None:
        mfcc_stats, mfcc_frames = mfcc_baseline(inputs, prep, frames_at)
        probe("baseline_mfcc", mfcc_stats[is_train], mfcc_stats[~is_train])
        frame_protocol = {
            "frames": {
                **frame_settings(prep, frames_per_file, max_frames_per_split),
                **_frame_probe(
                    {
                        "cpc_frames": trained.frames,
                        "random_init_frames": rand.frames,
                        "baseline_mfcc_frames": mfcc_frames,
                    },
                    np.array([len(at) for at in frames_at]),
                    np.array([it.label for it in items]),
                    is_train,
                    max_frames_per_split,
                    probe,
                ),
            }
        }
    else:
        base_train, base_test = _baseline(frozen.modality, items)
        probe(f"baseline_{BASELINE_NAMES[frozen.modality]}", base_train, base_test)
    classes = sorted(set(train_y) | set(test_y))
    commonest = max(sorted(set(train_y)), key=train_y.count)
    results["chance"] = 1.0 / len(classes)
    results["majority"] = float(np.mean(np.asarray(test_y) == commonest))
    return {
        "modality": frozen.modality,
        "model": frozen.description["path"],
        "model_kind": frozen.kind,
        "model_info": frozen.description,
        "quantized": quantized,
        "classes": classes,
        "num_classes": len(classes),
        "train_size": len(train_y),
        "test_size": len(test_y),
        "results": results,
        "dims": dims,
        "protocol": {
            "probe": PROBE_DESCRIPTION,
            "pooling": "mean over valid steps (audio frames, image grid cells, sentences)",
            "stats_pooling": (
                "cpc_context_stats, random_init_stats: mean ⊕ standard deviation (ddof=0) "
                "of c over the same valid steps, 2·C numbers"
            ),
            "random_init_seed": RANDOM_SEED,
            **({"audio_max_seconds": max_seconds} if frozen.modality == "audio" else {}),
            **frame_protocol,
        },
        "data": str(Path(data_dir).resolve()),
        "labels_from": source,
        "skipped_files": skipped,
        "max_per_split": max_per_split,
        "seconds": round(time.perf_counter() - began, 2),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
