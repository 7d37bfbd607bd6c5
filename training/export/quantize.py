"""The int8 copy of a bundle: static quantization calibrated on real inputs.

It is static QDQ quantization (per-channel int8 weights, uint8 activations),
calibrated on files of the model's own data prepared with the service's
preprocessing, so the activation ranges are what the model will see. The
convolution that reads the raw input (waveform samples, pixels) stays fp32,
and so does the GRU. `quantize_bundle` checks the copy on held-out files and
refuses one whose pooled vectors fall below `min_cosine` of fp32. Why static,
and why those layers stay fp32: docs/training.md (Export and the int8 copy).
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.errors import CPCError
from service.inference.model import OnnxEncoder, Prepared
from service.inference.pooling import pool
from service.inference.runner import open_session
from training.data import EXTENSIONS, DataError, list_files

logger = logging.getLogger(__name__)
QUANTIZED_FILE = "model.quant.onnx"
# Layers whose weights and activations become int8. Raw-input convolutions are
# excluded per modality (see the module docstring); text's first convolution
# reads learned embeddings, not raw input, and quantizes well.
QUANTIZED_OPS = ("Conv", "Gemm", "MatMul")
KEEP_FIRST_CONV_FP32 = {"audio": True, "image": True, "text": False}


class QuantizeError(Exception):
    """No calibration data, or a quantized copy too far from fp32."""


@dataclass
class CalibrationConfig:
    """How calibration inputs are drawn from a data folder."""

    files: int = 64  # files read: 3/4 calibrate, 1/4 check the agreement
    audio_seconds: float = 2.0  # clips are cut to this length, or to the shortest clip
    seed: int = 0  # which files, and where audio is cut
    min_cosine: float = 0.999  # the agreement a copy needs, on the held-out files


@dataclass
class QuantizeResult:
    path: Path
    min_cosine: float
    calibration_inputs: int
    check_inputs: int


def calibration_inputs(
    encoder: OnnxEncoder, data_dir: str | Path, cfg: CalibrationConfig
) -> list[Prepared]:
    """Prepared inputs from up to `cfg.files` files of `data_dir`, in a seeded order."""
    root = Path(data_dir)
    try:
        files = list_files(root, EXTENSIONS[encoder.modality])
    except DataError as exc:
        raise QuantizeError(f"no files to calibrate with: {exc}") from exc
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(files))[: cfg.files]
    length = int(cfg.audio_seconds * getattr(encoder.spec.preprocess, "sample_rate", 0))
    prepared: list[Prepared] = []
    for index in order:
        path = files[index]
        try:
            raw: bytes | str = (
                path.read_text(encoding="utf-8")
                if encoder.modality == "text"
                else path.read_bytes()
            )
            item = encoder.prepare(raw)
        except (CPCError, OSError, UnicodeDecodeError) as exc:
            logger.warning("calibration skips %s (%s)", path, exc)
            continue
        prepared.append(item)
    if encoder.modality == "audio" and prepared:
        length = min(length, *(p.array.shape[0] for p in prepared))
        cut = []
        for item in prepared:
            start = int(rng.integers(0, item.array.shape[0] - length + 1))
            cut.append(encoder.prepare_wave(item.array[start : start + length]))
        prepared = cut
    if len(prepared) < 4:
        raise QuantizeError(
            f"only {len(prepared)} readable {encoder.modality} files in {root}; "
            "calibration needs at least 4"
        )
    return prepared


class _Reader:
    """onnxruntime's CalibrationDataReader: the inputs as one padded batch.

    The percentile calibrator stacks what every call returns, so all calls
    must agree in shape; one batch does (audio clips are cut to one length,
    text is padded as the service pads it).
    """

    def __init__(self, encoder: OnnxEncoder, inputs: Sequence[Prepared]) -> None:
        self._feeds: Iterator[dict[str, np.ndarray]] = iter(
            [{encoder.spec.onnx.input: encoder.collate(list(inputs))}]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def first_conv(model_path: Path) -> str | None:
    """The name of the first convolution in graph order (the one reading the input)."""
    import onnx  # the train extra's; this module is imported by the CLI's argument parser

    graph = onnx.load(str(model_path)).graph
    return next((n.name for n in graph.node if n.op_type == "Conv"), None)


def quantize_static_copy(encoder: OnnxEncoder, calibration: Sequence[Prepared], out: Path) -> None:
    """Write the QDQ int8 copy of `encoder`'s fp32 model to `out`."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source = encoder.folder / encoder.spec.onnx.file
    with tempfile.TemporaryDirectory(prefix="cpc-quant-") as tmp:
        prepared_model = Path(tmp) / "pre.onnx"
        quant_pre_process(str(source), str(prepared_model), skip_symbolic_shape=True)
        exclude = []
        if KEEP_FIRST_CONV_FP32[encoder.modality]:
            name = first_conv(prepared_model)
            exclude = [name] if name else []
        quantize_static(
            str(prepared_model),
            str(out),
            _Reader(encoder, calibration),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OPS),
            nodes_to_exclude=exclude,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.Percentile,
        )


def pooled_cosines(a: OnnxEncoder, b: OnnxEncoder, inputs: Sequence[Prepared]) -> np.ndarray:
    """Cosine between the mean-pooled context vectors of two encoders, per input."""
    out = []
    for item in inputs:
        (_, ca), (_, cb) = a.run([item])[0], b.run([item])[0]
        va, vb = pool(ca, "mean"), pool(cb, "mean")
        out.append(float(va @ vb / (np.linalg.norm(va) * np.linalg.norm(vb) + 1e-12)))
    return np.asarray(out)


def quantize_bundle(
    folder: str | Path, data_dir: str | Path, cfg: CalibrationConfig | None = None
) -> QuantizeResult:
    """Write `folder/model.quant.onnx`, calibrated on `data_dir` and checked against fp32.

    The caller records the file and its agreement in bundle.json. A copy below
    `cfg.min_cosine` is deleted and QuantizeError says by how much it missed.
    """
    cfg = cfg or CalibrationConfig()
    folder = Path(folder)
    fp32 = OnnxEncoder.load(folder, use_quantized=False)
    inputs = calibration_inputs(fp32, data_dir, cfg)
    cut = max(1, len(inputs) // 4)
    calibrate, check = inputs[cut:], inputs[:cut]
    out = folder / QUANTIZED_FILE
    quantize_static_copy(fp32, calibrate, out)
    runner = dataclasses.replace(fp32.runner, session=open_session(out))
    quant = dataclasses.replace(fp32, runner=runner, model_file=QUANTIZED_FILE)
    worst = float(pooled_cosines(fp32, quant, check).min())
    if worst < cfg.min_cosine:
        out.unlink()
        raise QuantizeError(
            f"the int8 copy of {folder} agrees with fp32 only at cosine {worst:.5f} "
            f"(< {cfg.min_cosine}) on {len(check)} held-out files; it was not kept"
        )
    logger.info(
        "quantized %s: cosine to fp32 >= %.5f on %d held-out inputs (%d calibrated)",
        folder,
        worst,
        len(check),
        len(calibrate),
    )
    return QuantizeResult(out, worst, len(calibrate), len(check))
