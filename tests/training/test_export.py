"""Export to ONNX bundles: the graph checks, matches torch, and describes itself."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from service.bundle import load_bundle_spec
from tests.training.tiny import LENIENT, tiny_config
from training.export.onnx_export import ExportError, example_inputs, export_model, export_run
from training.export.quantize import CalibrationConfig
from training.models.cpc import build_model
from training.tokenizer import train_tokenizer
from training.train import train

MODALITIES = ("audio", "image", "text")


@pytest.mark.parametrize("modality", MODALITIES)
def test_onnxruntime_matches_torch(modality: str, tmp_path: Path) -> None:
    cfg = tiny_config(modality)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    tokenizer = None
    if modality == "text":
        tokenizer = train_tokenizer(
            ["a few words", "and a few more words"], 300, tmp_path / "tok.json"
        )
    result = export_model(model, cfg, tmp_path, name=f"tiny-{modality}", tokenizer_path=tokenizer)
    assert result.max_abs_diff <= 1e-4
    spec = load_bundle_spec(tmp_path)
    assert spec.modality == modality
    assert spec.dims.context == 16 and spec.dims.encoder == 16
    sess = ort.InferenceSession(str(tmp_path / spec.onnx.file), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == [spec.onnx.input]
    assert [o.name for o in sess.get_outputs()] == ["z", "c"]
    # Independent of the export's own check: three lengths, batch 1 and 4.
    for batch in (1, 4):
        for variant in range(3):
            x = example_inputs(cfg, batch, variant, seed=7)
            with torch.no_grad():
                z, c = model(torch.from_numpy(x))
            oz, oc = sess.run(None, {spec.onnx.input: x})
            assert oz.shape == tuple(z.shape) and oc.shape == tuple(c.shape)
            assert np.abs(oc - c.numpy()).max() <= 1e-4
            assert np.abs(oz - z.numpy()).max() <= 1e-4


def test_audio_steps_follow_the_bundle_formula(tmp_path: Path) -> None:
    cfg = tiny_config("audio")
    export_model(build_model(cfg), cfg, tmp_path, name="a")
    spec = load_bundle_spec(tmp_path)
    sess = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    for n in (465, 1000, 16000):
        c = sess.run(["c"], {"audio": np.zeros((1, n), np.float32)})[0]
        assert c.shape[1] == spec.preprocess.num_steps(n)  # type: ignore[union-attr]
    assert spec.preprocess.hop_seconds == pytest.approx(0.01)  # type: ignore[union-attr]


@pytest.mark.parametrize("modality", MODALITIES)
def test_export_run_with_quantized_copy(
    modality: str, corpora: dict[str, Path], tmp_path: Path
) -> None:
    run = tmp_path / "run"
    train(tiny_config(modality, steps=2), corpora[modality], run, progress=False)
    result = export_run(run, tmp_path / "bundle", quantize_weights=True, calibration=LENIENT)
    spec = load_bundle_spec(tmp_path / "bundle")
    assert spec.name == "bundle" and spec.version == result.spec.version
    assert spec.onnx.quantized_file and (tmp_path / "bundle" / spec.onnx.quantized_file).is_file()
    assert spec.metrics["quantized_min_cosine"] > LENIENT.min_cosine
    assert spec.metrics["quantization"]["calibration_data"] == str(corpora[modality])
    ops = {n.op_type for n in onnx.load(str(tmp_path / "bundle" / "model.quant.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # static: activations are int8 too
    assert "ConvInteger" not in ops
    assert spec.training["modality"] == modality and spec.metrics["step"] == 2
    assert spec.data["files_found"] > 0


def test_a_quantized_copy_too_far_from_fp32_is_not_kept(
    corpora: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = tmp_path / "run"
    train(tiny_config("image", steps=2), corpora["image"], run, progress=False)
    impossible = CalibrationConfig(min_cosine=1.5)
    with caplog.at_level(logging.WARNING):
        export_run(run, tmp_path / "bundle", quantize_weights=True, calibration=impossible)
    spec = load_bundle_spec(tmp_path / "bundle")
    assert (
        spec.onnx.quantized_file is None and not (tmp_path / "bundle" / "model.quant.onnx").exists()
    )
    assert "no quantized copy" in caplog.text and "it was not kept" in caplog.text


def test_quantizing_without_calibration_data_is_refused(tmp_path: Path) -> None:
    cfg = tiny_config("image")
    with pytest.raises(ExportError, match="calibration data"):
        export_model(build_model(cfg), cfg, tmp_path / "b", name="b", quantize_weights=True)


def test_training_only_layers_are_off_in_the_export(tmp_path: Path) -> None:
    """Token dropout is active in train mode; the exported graph and the check must not see it."""
    cfg = tiny_config("text")
    cfg.model.token_dropout = 0.5  # type: ignore[union-attr]
    model = build_model(cfg).train()
    tokenizer = train_tokenizer(["a few words", "and more words"], 300, tmp_path / "tok.json")
    result = export_model(model, cfg, tmp_path / "b", name="t", tokenizer_path=tokenizer)
    assert result.max_abs_diff <= 1e-4
    assert not model.training  # left in eval mode, as export used it
