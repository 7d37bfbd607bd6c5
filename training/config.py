"""Training configuration: one dataclass tree, a default per modality and the paper's sizes.

`default_config(modality)` trains on two CPU cores in minutes; `paper_config(modality)`
uses the sizes of van den Oord et al. (2018). A JSON or TOML file given with
`--config` overrides any field by name (nested sections as nested objects).
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal

Modality = Literal["audio", "image", "text"]
MODALITIES: tuple[Modality, ...] = ("audio", "image", "text")


@dataclass
class AudioModelConfig:
    sample_rate: int = 16000  # every input is resampled to this rate
    conv_kernels: tuple[int, ...] = (10, 8, 4, 4, 4)  # paper: one step per 160 samples (10 ms)
    conv_strides: tuple[int, ...] = (5, 4, 2, 2, 2)  # unpadded, so right-padding is harmless
    channels: int = 256  # conv width; the paper uses 512, 256 trains 4x faster on a CPU
    encoder_dim: int = 256  # width of z_t
    context_dim: int = 256  # width of c_t (GRU hidden size, as in the paper)


@dataclass
class ImageModelConfig:
    image_size: int = 64  # images are resized to this square; the ONNX graph fixes it
    patch_size: int = 16  # side of one patch; 64/16 with stride 8 gives the paper's 7x7 grid
    patch_stride: int = 8  # half-overlapping patches, as in the paper
    channels: int = 64  # width of the patch ResNet
    blocks: int = 2  # residual blocks per stage (two stages)
    encoder_dim: int = 128  # width of z for one patch
    context_dim: int = 128  # width of c for one patch
    context_layers: int = 3  # masked-conv layers of the row-causal autoregressor


@dataclass
class TextModelConfig:
    vocab_size: int = 4000  # subword vocabulary learnt from the training folder
    max_tokens: int = 48  # tokens kept per sentence
    # 0: one step per sentence (the paper); N: one step per N consecutive tokens of the
    # document ("chunks-v1"), so a one-sentence text still has a future to predict
    chunk_tokens: int = 0
    embed_dim: int = 128  # token embedding width
    channels: int = 256  # width of the sentence encoder's 1-D conv
    kernel_size: int = 3  # of that conv; a single layer keeps padding harmless
    token_dropout: float = 0.0  # training only: share of tokens dropped, against memorising
    encoder_dim: int = 256  # width of z (one per sentence)
    context_dim: int = 256  # width of c (GRU over sentences)


@dataclass
class LossConfig:
    prediction_steps: int = 12  # k = min_step .. prediction_steps; paper: 12 for audio
    min_step: int = 1  # first k; 2 for images skips the overlapping adjacent row
    negatives: Literal["batch", "sequence"] = "batch"  # from every sequence, or only the same one
    num_negatives: int | None = None  # sample this many per prediction; None uses all candidates
    # With several processes (torchrun), negatives="batch" draws from every process's
    # sequences (an all-gather with gradients), so N and the loss are those of one process
    # with the same global batch; False keeps each process to its own (less traffic).
    cross_rank_negatives: bool = True


@dataclass
class OptimConfig:
    batch_size: int = 8  # sequences (crops, images, sentence windows) per step, over all
    # processes: with torchrun each of R processes trains on batch_size / R of them
    lr: float = 2e-4  # Adam, as in the paper
    weight_decay: float = 0.0  # AdamW decay
    warmup_steps: int = 100  # linear warm-up, then constant lr (the paper's Adam schedule),
    # so extending a finished run with `--resume --steps` continues it exactly
    steps: int = 2000  # total optimisation steps
    grad_clip: float = 1.0  # max grad norm; 0 turns clipping off


@dataclass
class DataConfig:
    window: int = 20480  # audio: samples per crop; text: sentences per window; image: unused
    min_files: int = 1  # fewer readable files than this is an error
    val_fraction: float = 0.05  # files held out to report validation loss
    split: str | None = None  # with a manifest.csv: train only on this split (e.g. "train")
    patch_jitter: float = 0.0  # images: per-patch colour jitter strength (CPC v2); 0 is off
    # audio: time-domain effects applied to training crops (see training.augment), any of
    # "gain", "noise", "bandreject", "reverb"; none by default
    audio_augment: tuple[str, ...] = ()
    # with several data folders: each one's share of every training batch, in the order the
    # folders are given (normalised; 0 leaves a folder out); empty pools the folders, so each
    # weighs as much as it holds (files for audio and images, token units for text)
    folder_weights: tuple[float, ...] = ()


@dataclass
class TrainConfig:
    modality: Modality = "audio"
    model: AudioModelConfig | ImageModelConfig | TextModelConfig = field(
        default_factory=AudioModelConfig
    )
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    seed: int = 0  # seeds Python, NumPy and torch; crops and negatives follow from it
    # auto: bf16 autocast where the device computes bf16 natively (CPUs with AVX512-BF16 or
    # AMX, GPUs from Ampere on); fp32: never (bit-comparable runs); bf16: always
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    log_every: int = 10  # steps between progress/curve rows
    checkpoint_every: int = 200  # steps between checkpoints (and at the end)
    preset: str = "default"  # which preset the config started from

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_MODEL_CLASSES: dict[str, type] = {
    "audio": AudioModelConfig,
    "image": ImageModelConfig,
    "text": TextModelConfig,
}


def default_config(modality: Modality) -> TrainConfig:
    """A config that trains usefully on two CPU cores."""
    if modality == "audio":
        return TrainConfig(modality="audio", model=AudioModelConfig())
    if modality == "image":
        return TrainConfig(
            modality="image",
            # Wider z and c than the class defaults (CPC v2: width helps the linear probe);
            # they cost little, as the patch ResNet stays 64 channels wide.
            model=ImageModelConfig(encoder_dim=256, context_dim=256),
            loss=LossConfig(prediction_steps=3, min_step=2),
            optim=OptimConfig(batch_size=32, lr=5e-4),
            data=DataConfig(window=0, patch_jitter=0.4),
        )
    if modality == "text":
        return TrainConfig(
            modality="text",
            # Token dropout: without it the model memorised its training sentences. Units of
            # 4 tokens (chunks-v1) rather than sentences: short texts get several steps; the
            # man-page probe rose from 85.6% (sentences) to 88.8%, and units of 4 kept the
            # fortunes at 40.0% where units of 8 gave 38.0%. Windows of 16 units (64 tokens).
            model=TextModelConfig(token_dropout=0.3, chunk_tokens=4),
            loss=LossConfig(prediction_steps=3),
            optim=OptimConfig(batch_size=64, lr=5e-4),
            data=DataConfig(window=16),
        )
    raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")


def paper_config(modality: Modality) -> TrainConfig:
    """The sizes of the CPC paper (slow on a CPU; for a GPU)."""
    cfg = default_config(modality)
    cfg.preset = "paper"
    if modality == "audio":
        cfg.model = AudioModelConfig(channels=512, encoder_dim=512, context_dim=256)
        cfg.optim = OptimConfig(batch_size=8, lr=2e-4, steps=300_000)
    elif modality == "image":
        cfg.model = ImageModelConfig(
            image_size=256,
            patch_size=64,
            patch_stride=32,
            channels=256,
            blocks=3,
            encoder_dim=1024,
            context_dim=1024,
            context_layers=5,
        )
        cfg.loss = LossConfig(prediction_steps=5, min_step=2)
        cfg.optim = OptimConfig(batch_size=32, lr=2e-4, steps=300_000)
    else:
        cfg.model = TextModelConfig(
            vocab_size=20000, embed_dim=620, channels=2400, encoder_dim=2400, context_dim=2400
        )
        cfg.loss = LossConfig(prediction_steps=3)
        cfg.optim = OptimConfig(batch_size=32, lr=2e-4, steps=300_000)
    return cfg


PRESETS = {"default": default_config, "paper": paper_config}


def _merge(obj: Any, overrides: dict[str, Any], where: str) -> Any:
    """Return a copy of dataclass `obj` with `overrides` applied, rejecting unknown keys."""
    known = {f.name: f for f in fields(obj)}
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in known:
            raise ValueError(f"unknown config key {where}{key!r}; known: {sorted(known)}")
        current = getattr(obj, key)
        if is_dataclass(current) and not isinstance(current, type):
            if not isinstance(value, dict):
                raise ValueError(f"config key {where}{key} must be a table/object")
            changes[key] = _merge(current, value, f"{where}{key}.")
        elif isinstance(current, tuple):
            changes[key] = tuple(value)
        else:
            changes[key] = value
    return dataclasses.replace(obj, **changes)


def config_from_dict(raw: dict[str, Any]) -> TrainConfig:
    """Rebuild a config from `to_dict()` output (a checkpoint) or a user file."""
    modality = raw.get("modality", "audio")
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
    preset = raw.get("preset", "default")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    base = PRESETS[preset](modality)
    rest = {k: v for k, v in raw.items() if k not in ("modality",)}
    merged: TrainConfig = _merge(base, rest, "")
    return merged


def load_config(
    modality: Modality, path: str | Path | None = None, preset: str = "default"
) -> TrainConfig:
    """The preset for `modality`, overridden by a JSON or TOML file if given."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        try:
            raw = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(
                f"{path}: not valid {path.suffix.lstrip('.') or 'JSON'}: {exc}"
            ) from exc
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: the config must be an object of sections")
    if raw.get("modality", modality) != modality:
        raise ValueError(f"config file is for {raw['modality']}, but --modality is {modality}")
    raw = {**raw, "modality": modality, "preset": raw.get("preset", preset)}
    return config_from_dict(raw)
