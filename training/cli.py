"""Training subcommands of `cpc-embed`: train, export and quantize.

Importing this module needs no torch (it only declares arguments); the
commands import torch when they run. `train` runs unchanged under torchrun
(one process per GPU or per CPU share, see `training.distributed`); `export`
started by torchrun runs on rank 0 only.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from training.config import MODALITIES, PRESETS, load_config
from training.data import DataError
from training.export.quantize import CalibrationConfig

logger = logging.getLogger(__name__)


def add_training_commands(sub: argparse._SubParsersAction) -> None:
    from training.corpora.cli import add_data_command
    from training.evaluation.cli import add_eval_command

    add_data_command(sub)
    add_eval_command(sub)
    p = sub.add_parser("train", help="train a CPC model on a folder of unlabelled files")
    p.add_argument("--modality", choices=MODALITIES, required=True)
    p.add_argument(
        "--data",
        required=True,
        type=Path,
        action="append",
        help="folder of audio, image or .txt files; repeat it to train on several folders",
    )
    p.add_argument("--out", required=True, type=Path, help="run folder (checkpoints, curves)")
    p.add_argument("--config", type=Path, help="JSON or TOML file overriding config fields")
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="default",
        help="starting sizes: default (2 CPU cores) or paper",
    )
    p.add_argument("--steps", type=int, help="total optimisation steps (extends a resumed run)")
    p.add_argument("--split", help="train only on this split of each folder's manifest.csv")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint.pt")
    p.add_argument("--no-progress", action="store_true", help="log lines instead of a bar")
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto: a GPU when torch sees one, else the CPU (under torchrun: one GPU per process)",
    )

    e = sub.add_parser("export", help="export a run to an ONNX model bundle")
    e.add_argument("run_dir", type=Path)
    e.add_argument("--out", required=True, type=Path, help="bundle folder, e.g. models/audio")
    e.add_argument("--name", help="bundle name (default: the folder's name)")
    e.add_argument(
        "--quantize", action="store_true", help="add an int8 copy (model.quant.onnx), calibrated"
    )
    e.add_argument(
        "--calibration-data",
        type=Path,
        help="files to calibrate the int8 copy on (default: the run's training data folder)",
    )

    q = sub.add_parser(
        "quantize", help="add (or rebuild) the int8 copy of a bundle, calibrated on a folder"
    )
    q.add_argument("bundle", type=Path, help="bundle folder, e.g. models/audio")
    q.add_argument("--data", required=True, type=Path, help="files of the model's modality")
    q.add_argument(
        "--min-cosine",
        type=float,
        default=CalibrationConfig.min_cosine,
        help="refuse a copy whose pooled vectors agree less with fp32 on held-out files",
    )


def _train(args: argparse.Namespace) -> int:
    from training.train import train

    cfg = None if args.resume else load_config(args.modality, args.config, args.preset)
    if cfg is not None and args.split:
        cfg.data.split = args.split
    if args.resume and args.config:
        logger.warning("--config is ignored with --resume: the checkpoint carries its config")
    trainer = train(
        cfg,
        args.data,
        args.out,
        resume=args.resume,
        steps=args.steps,
        progress=not args.no_progress,
        device=args.device,
    )
    logger.info("done: %d steps; checkpoint and curves in %s", trainer.step_count, args.out)
    return 0


def _export(args: argparse.Namespace) -> int:
    import os

    from training.distributed import rank_from_env
    from training.export.onnx_export import export_run

    if not rank_from_env(os.environ).is_main:
        return 0  # under torchrun: rank 0 exports, the others have nothing to do

    result = export_run(
        args.run_dir,
        args.out,
        name=args.name,
        quantize_weights=args.quantize,
        calibration_data=args.calibration_data,
    )
    logger.info("bundle %s written to %s", result.spec.name, args.out)
    return 0


def _quantize(args: argparse.Namespace) -> int:
    from training.export.onnx_export import add_quantized_copy

    calibration = CalibrationConfig(min_cosine=args.min_cosine)
    spec = add_quantized_copy(args.bundle, args.data, calibration)
    logger.info(
        "%s/%s written: cosine to fp32 >= %.5f",
        args.bundle,
        spec.onnx.quantized_file,
        spec.metrics["quantized_min_cosine"],
    )
    return 0


def run_training_command(args: argparse.Namespace) -> int:
    from training.corpora.cli import run_data_command
    from training.evaluation.cli import run_eval_command
    from training.export.onnx_export import ExportError
    from training.export.quantize import QuantizeError
    from training.train import TrainingDiverged

    handlers = {
        "train": _train,
        "export": _export,
        "quantize": _quantize,
        "data": run_data_command,
        "eval": run_eval_command,
    }
    try:
        return handlers[args.command](args)
    except (
        DataError,
        ExportError,
        QuantizeError,
        TrainingDiverged,
        ValueError,
        FileNotFoundError,
    ) as exc:
        sys.stderr.write(f"cpc-embed {args.command}: error: {exc}\n")
        return 1
