"""The training subcommands from the command line: errors in one line, no stack trace."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from service.bundle import load_bundle_spec
from service.cli import main

# Hides torch from a child interpreter, as on a serving-only install.
NO_TORCH = """
import sys
class _HideTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError("No module named 'torch'")
        return None
sys.meta_path.insert(0, _HideTorch())
from service.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_without_torch_train_says_how_to_install_and_exits_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            NO_TORCH,
            "train",
            "--modality",
            "audio",
            "--data",
            str(tmp_path),
            "--out",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "train" in lines[0] and "pip install 'cpc-embed[train]'" in lines[0]


def test_empty_data_folder_is_one_line_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "data").mkdir()
    code = main(
        [
            "train",
            "--modality",
            "audio",
            "--data",
            str(tmp_path / "data"),
            "--out",
            str(tmp_path / "run"),
            "--no-progress",
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "error: data folder" in err and "Traceback" not in err


def test_bad_config_key_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "cfg.toml"
    cfg.write_text("[optim]\nlearning_rate = 1.0\n")
    code = main(
        [
            "train",
            "--modality",
            "audio",
            "--data",
            str(tmp_path),
            "--out",
            str(tmp_path / "run"),
            "--config",
            str(cfg),
        ]
    )
    assert code == 1
    assert "unknown config key optim.'learning_rate'" in capsys.readouterr().err


def test_train_then_export_from_the_command_line(corpora: dict[str, Path], tmp_path: Path) -> None:
    cfg = tmp_path / "tiny.json"
    cfg.write_text(
        '{"model": {"vocab_size": 300, "max_tokens": 16, "embed_dim": 16,'
        ' "channels": 16, "encoder_dim": 16, "context_dim": 16},'
        ' "loss": {"prediction_steps": 2}, "data": {"window": 6},'
        ' "optim": {"batch_size": 4}, "precision": "fp32"}'
    )
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--modality",
                "text",
                "--data",
                str(corpora["text"]),
                "--out",
                str(run),
                "--config",
                str(cfg),
                "--steps",
                "3",
                "--no-progress",
            ]
        )
        == 0
    )
    assert main(["export", str(run), "--out", str(tmp_path / "bundle")]) == 0
    spec = load_bundle_spec(tmp_path / "bundle")
    assert spec.modality == "text" and spec.metrics["step"] == 3
    assert (tmp_path / "bundle" / "tokenizer.json").is_file()
    assert spec.onnx.quantized_file is None

    bundle, data = str(tmp_path / "bundle"), str(corpora["text"])
    assert main(["quantize", bundle, "--data", data, "--min-cosine", "0.9"]) == 0
    spec = load_bundle_spec(tmp_path / "bundle")
    assert spec.onnx.quantized_file == "model.quant.onnx"
    assert spec.metrics["quantized_min_cosine"] >= 0.9
    assert spec.metrics["quantization"]["calibration_data"] == data


def test_quantize_below_the_bound_is_one_line_exit_1(
    corpora: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.training.tiny import tiny_config
    from training.export.onnx_export import export_model
    from training.models.cpc import build_model

    cfg = tiny_config("image")
    export_model(build_model(cfg), cfg, tmp_path / "b", name="b")
    code = main(
        ["quantize", str(tmp_path / "b"), "--data", str(corpora["image"]), "--min-cosine", "1.5"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert err.startswith("cpc-embed quantize: error:") and "it was not kept" in err
    assert not (tmp_path / "b" / "model.quant.onnx").exists()


def test_device_cuda_without_a_gpu_is_one_line(
    corpora: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    args = ["train", "--modality", "audio", "--data", str(corpora["audio"])]
    code = main([*args, "--out", str(tmp_path / "run"), "--device", "cuda", "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err
    assert "error: --device cuda, but torch sees no CUDA GPU" in err and "Traceback" not in err


def test_export_under_torchrun_runs_on_rank_0_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    # Rank 1 returns before reading anything: no run folder is needed.
    assert main(["export", str(tmp_path / "missing-run"), "--out", str(tmp_path / "b")]) == 0
    assert not (tmp_path / "b").exists()
