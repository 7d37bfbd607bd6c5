"""Export a trained CPC model (g_enc + g_ar) to an ONNX model bundle the service loads.

The graph takes one input (audio samples, image patches or sentence tokens)
with dynamic batch and length axes and returns both z (encoder) and c
(context). Export checks the graph with `onnx.checker` (full check), compares
onnxruntime with torch on several lengths and batch sizes, writes
`bundle.json` (service.bundle.BundleSpec) and, when asked, adds an int8 copy
calibrated on the training data (`training.export.quantize`) with its measured
agreement.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from service.bundle import (
    AudioPreprocess,
    BundleSpec,
    Dims,
    OnnxSpec,
    Preprocess,
    load_bundle_spec,
    write_bundle_spec,
)
from service.inference.runner import OnnxRunner
from training.checkpoint import load_checkpoint
from training.config import AudioModelConfig, ImageModelConfig, TrainConfig, config_from_dict
from training.data import image_spec, text_spec
from training.export.quantize import CalibrationConfig, QuantizeError, quantize_bundle
from training.models.cpc import CPCModel, build_model

logger = logging.getLogger(__name__)
OPSET = 17
MODEL_FILE = "model.onnx"
INPUT_NAMES = {"audio": "audio", "image": "patches", "text": "tokens"}
ROUNDTRIP_BATCHES = (1, 4)


class ExportError(Exception):
    """The exported graph failed a check; the message says which and by how much."""


class _Graph(nn.Module):
    """The exported function: input → (z, c)."""

    def __init__(self, model: CPCModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z, c = self.model(x)
        return z, c


def preprocess_spec(cfg: TrainConfig) -> Preprocess:
    model = cfg.model
    if isinstance(model, AudioModelConfig):
        return AudioPreprocess(
            sample_rate=model.sample_rate,
            conv_kernels=list(model.conv_kernels),
            conv_strides=list(model.conv_strides),
        )
    if isinstance(model, ImageModelConfig):
        return image_spec(model)
    return text_spec(model)


def example_inputs(cfg: TrainConfig, batch: int, variant: int, seed: int = 0) -> np.ndarray:
    """Input `variant` (0, 1, 2: three lengths where the modality has one) of size `batch`."""
    rng = np.random.default_rng(seed + 10 * variant + batch)
    model = cfg.model
    if isinstance(model, AudioModelConfig):
        length = (4000, 12345, 20480)[variant]
        return (0.1 * rng.standard_normal((batch, length))).astype(np.float32)
    if isinstance(model, ImageModelConfig):
        rows, cols = image_spec(model).grid
        p = model.patch_size
        return rng.standard_normal((batch, rows, cols, 3, p, p)).astype(np.float32)
    sentences, tokens = ((1, 5), (4, 9), (12, 17))[variant]
    ids = rng.integers(2, model.vocab_size, size=(batch, sentences, tokens))
    ids[:, :, tokens - 2 :] = 0  # some right padding, as batched documents have
    return ids.astype(np.int64)


def _dynamic_axes(modality: str, name: str) -> dict[str, dict[int, str]]:
    inputs = {
        "audio": {0: "batch", 1: "samples"},
        "image": {0: "batch"},
        "text": {0: "batch", 1: "sentences", 2: "tokens"},
    }[modality]
    steps = {0: "batch"} if modality == "image" else {0: "batch", 1: "steps"}
    return {name: inputs, "z": steps, "c": steps}


@torch.no_grad()
def compare_with_torch(model: CPCModel, cfg: TrainConfig, path: Path) -> float:
    """Largest |onnxruntime − torch| over z and c, three lengths × batch 1 and 4."""
    runner = OnnxRunner.open(path, INPUT_NAMES[cfg.modality])
    worst = 0.0
    for batch in ROUNDTRIP_BATCHES:
        for variant in range(3):
            x = example_inputs(cfg, batch, variant)
            z, c = model(torch.from_numpy(x))
            oz, oc = runner.forward(x)
            worst = max(
                worst, float(np.abs(oz - z.numpy()).max()), float(np.abs(oc - c.numpy()).max())
            )
    return worst


@dataclass
class ExportResult:
    spec: BundleSpec
    max_abs_diff: float


def export_model(
    model: CPCModel,
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    name: str,
    tokenizer_path: Path | None = None,
    quantize_weights: bool = False,
    calibration_data: str | Path | None = None,
    calibration: CalibrationConfig | None = None,
    data_info: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    atol: float = 1e-4,
) -> ExportResult:
    """Write `out_dir/{model.onnx, bundle.json[, tokenizer.json, model.quant.onnx]}`.

    `quantize_weights` needs `calibration_data`, a folder of the model's kind of
    files. A copy that misses `calibration.min_cosine` is not kept: the bundle
    is written without it and a warning says by how much it missed.
    """
    if cfg.modality == "text" and tokenizer_path is None:
        raise ExportError("a text bundle needs the tokenizer the model was trained with")
    if quantize_weights and calibration_data is None:
        raise ExportError("a quantized copy needs calibration data: a folder of training files")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval().float()
    input_name = INPUT_NAMES[cfg.modality]
    path = out / MODEL_FILE
    x = torch.from_numpy(example_inputs(cfg, 2, 1))
    torch.onnx.export(
        _Graph(model).eval(),  # export restores this mode recursively: it must be eval
        (x,),
        str(path),
        dynamo=False,
        opset_version=OPSET,
        input_names=[input_name],
        output_names=["z", "c"],
        dynamic_axes=_dynamic_axes(cfg.modality, input_name),
    )
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    diff = compare_with_torch(model, cfg, path)
    if diff > atol:
        raise ExportError(f"onnxruntime differs from torch by {diff:.2e} (> {atol:.0e})")
    logger.info("exported %s: onnxruntime matches torch within %.2e", path, diff)
    found: dict[str, Any] = {**(metrics or {}), "onnx_max_abs_diff": diff}
    if tokenizer_path is not None:
        shutil.copyfile(tokenizer_path, out / text_spec(cfg.model).tokenizer_file)  # type: ignore[arg-type]
    spec = BundleSpec(
        name=name,
        modality=cfg.modality,
        version=hashlib.sha256(path.read_bytes()).hexdigest()[:12],
        dims=Dims(context=cfg.model.context_dim, encoder=cfg.model.encoder_dim),
        onnx=OnnxSpec(file=MODEL_FILE, input=input_name, opset=OPSET),
        preprocess=preprocess_spec(cfg),
        training=cfg.to_dict(),
        data=data_info or {},
        metrics=found,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    write_bundle_spec(out, spec)
    if quantize_weights:
        assert calibration_data is not None
        try:
            spec = add_quantized_copy(out, calibration_data, calibration)
        except QuantizeError as exc:
            logger.warning("no quantized copy: %s", exc)
    return ExportResult(spec, diff)


def add_quantized_copy(
    folder: str | Path, data_dir: str | Path, calibration: CalibrationConfig | None = None
) -> BundleSpec:
    """Quantize the bundle in `folder` and record the copy in its bundle.json."""
    result = quantize_bundle(folder, data_dir, calibration)
    spec = load_bundle_spec(folder)
    spec.onnx.quantized_file = result.path.name
    spec.metrics["quantized_min_cosine"] = result.min_cosine
    spec.metrics["quantization"] = {
        "method": "static int8 (QDQ), per-channel weights, percentile calibration",
        "calibration_data": str(data_dir),
        "calibration_inputs": result.calibration_inputs,
        "check_inputs": result.check_inputs,
    }
    write_bundle_spec(folder, spec)
    return spec


def load_run_model(run_dir: str | Path) -> tuple[CPCModel, TrainConfig, dict[str, Any]]:
    """Rebuild the trained model of a run folder from its checkpoint."""
    ckpt = load_checkpoint(run_dir)
    cfg = config_from_dict(ckpt["config"])
    model = build_model(cfg)
    model.load_state_dict(ckpt["model"])
    return model.eval(), cfg, ckpt


def export_run(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    name: str | None = None,
    quantize_weights: bool = False,
    calibration_data: str | Path | None = None,
    calibration: CalibrationConfig | None = None,
) -> ExportResult:
    """Export a run; a quantized copy calibrates on `calibration_data`, else the run's data."""
    model, cfg, ckpt = load_run_model(run_dir)
    data = ckpt.get("data") or {}
    if calibration_data is None and data.get("folder"):
        calibration_data = data["folder"]
    tok = Path(run_dir) / ckpt["tokenizer"] if ckpt.get("tokenizer") else None
    metrics = {"step": ckpt["step"], "parameters": ckpt.get("parameters")}
    return export_model(
        model,
        cfg,
        out_dir,
        name=name or Path(out_dir).name,
        tokenizer_path=tok,
        quantize_weights=quantize_weights,
        calibration_data=calibration_data,
        calibration=calibration,
        data_info=ckpt.get("data"),
        metrics=metrics,
    )
