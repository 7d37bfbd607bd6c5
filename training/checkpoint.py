"""Checkpoints that carry everything needed to resume exactly or to export.

A checkpoint holds the model, the CPC criterion (the W_k heads), optimizer and
scheduler state, the step, every RNG state (Python, NumPy's sampling generator,
torch, and the GPU's when training on one) and the full config, so `--resume`
continues bit for bit and `export` needs nothing but the run folder.

Data-parallel runs save the same thing from rank 0: the weights of the bare
model (no DistributedDataParallel wrapper), and generator states that every
rank shares, so a checkpoint resumes with any number of processes.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_FILE = "checkpoint.pt"


def capture_rng(np_rng: np.random.Generator, device: torch.device | None = None) -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np_rng.bit_generator.state,
        "torch": torch.get_rng_state(),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(
    state: dict[str, Any], np_rng: np.random.Generator, device: torch.device | None = None
) -> None:
    """Restore the generators; a GPU's state applies only when resuming on a GPU."""
    random.setstate(state["python"])
    np_rng.bit_generator.state = state["numpy"]
    torch.set_rng_state(state["torch"])
    if device is not None and device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_checkpoint(run_dir: Path, payload: dict[str, Any]) -> Path:
    """Write atomically: a crash mid-save leaves the previous checkpoint intact."""
    target = run_dir / CHECKPOINT_FILE
    tmp = run_dir / f".{CHECKPOINT_FILE}.tmp"
    with open(tmp, "wb") as fh:
        torch.save(payload, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    return target


def load_checkpoint(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint (train first, or check the run folder)")
    payload: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    return payload
