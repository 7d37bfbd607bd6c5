"""Training throughput (examples/s) of each default config, split into data and compute time.

Run: `.venv/bin/python -m bench.train_throughput [--steps 10]`. Uses tiny
synthetic folders (the throughput does not depend on the content) and writes
bench/results/train_throughput.json.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.machine import machine_info, setup_logging, write_results
from bench.train_scaling import make_folder
from training.config import default_config
from training.data import load_datasets
from training.train import build_trainer

logger = logging.getLogger(__name__)
RESULTS = Path(__file__).parent / "results"
MODALITIES = ("audio", "image", "text")


def measure(modality: str, folder: Path, run_dir: Path, steps: int) -> dict[str, Any]:
    cfg = default_config(modality)  # type: ignore[arg-type]
    trainer = build_trainer(cfg, load_datasets(cfg, folder, run_dir))
    trainer.step()  # warm-up
    data_s = compute_s = 0.0
    rng = np.random.default_rng(0)
    for _ in range(steps):
        t0 = time.perf_counter()
        x = trainer.batch(trainer.data.train, rng)
        t1 = time.perf_counter()
        out = trainer.forward(x)
        trainer.optimizer.zero_grad()
        out.loss.backward()
        trainer.optimizer.step()
        t2 = time.perf_counter()
        data_s += t1 - t0
        compute_s += t2 - t1
    batch = cfg.optim.batch_size
    return {
        "modality": modality,
        "batch_size": batch,
        "autocast": str(trainer.amp),
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "step_s": round((data_s + compute_s) / steps, 4),
        "data_s_per_step": round(data_s / steps, 4),
        "examples_per_s": round(batch * steps / (data_s + compute_s), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    setup_logging()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        results = [
            measure(m, make_folder(m, root), root / f"run-{m}", args.steps) for m in MODALITIES
        ]
    report = {
        "machine": machine_info(),
        "torch_threads": torch.get_num_threads(),
        "results": results,
    }
    write_results(RESULTS, "train_throughput", report)
    for row in results:
        logger.info("%s", row)


if __name__ == "__main__":
    main()
