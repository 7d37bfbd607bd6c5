"""The CPC training loop: sample windows, encode, predict k steps ahead, minimise InfoNCE.

`train(cfg, data_dir, run_dir)` writes RUN_DIR/{config.json, checkpoint.pt,
curves.csv, curves.png, train.log}. With `resume=True` it reloads the
checkpoint (model, criterion, optimizer, scheduler, step, RNG states, config)
and continues exactly; `steps` can extend a finished run.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from training.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from training.config import TrainConfig, config_from_dict
from training.curves import CurveWriter
from training.data import Dataset, Datasets, load_datasets
from training.infonce import CPCCriterion
from training.models.cpc import CPCModel, build_model, count_parameters

logger = logging.getLogger(__name__)
VAL_BATCHES = 4  # batches drawn (with a fixed seed) to report validation loss


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 instructions (autocast is slower without them)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(precision: str) -> torch.dtype | None:
    if precision == "fp32":
        return None
    if precision == "bf16" or (precision == "auto" and cpu_supports_bf16()):
        return torch.bfloat16
    return None


def seed_everything(seed: int) -> np.random.Generator:
    random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def warmup_then_constant(warmup_steps: int) -> Any:
    """LR multiplier: linear warm-up over `warmup_steps`, then 1 (the paper's constant Adam lr)."""

    def factor(step: int) -> float:
        return min(1.0, (step + 1) / max(1, warmup_steps))

    return factor


@dataclass
class Trainer:
    """Model, loss, optimiser and data for one run; `step()` does one update."""

    cfg: TrainConfig
    model: CPCModel
    criterion: CPCCriterion
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    data: Datasets
    rng: np.random.Generator
    amp: torch.dtype | None
    step_count: int = 0

    def batch(self, dataset: Dataset, rng: np.random.Generator) -> torch.Tensor:
        return torch.from_numpy(dataset.sample(self.cfg.optim.batch_size, rng))

    def forward(self, x: torch.Tensor) -> Any:
        with torch.autocast("cpu", dtype=self.amp or torch.bfloat16, enabled=self.amp is not None):
            z, c = self.model(x)
        return self.criterion(z.float(), c.float())  # the loss stays in fp32

    def step(self) -> Any:
        self.model.train()
        out = self.forward(self.batch(self.data.train, self.rng))
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if self.cfg.optim.grad_clip > 0:
            params = [*self.model.parameters(), *self.criterion.parameters()]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.step_count += 1
        return out

    @torch.no_grad()
    def validate(self) -> float | None:
        if self.data.val is None:
            return None
        self.model.eval()
        rng = np.random.default_rng(self.cfg.seed + 1)
        torch_state = torch.get_rng_state()
        losses = [
            self.forward(self.batch(self.data.val, rng)).loss.item() for _ in range(VAL_BATCHES)
        ]
        torch.set_rng_state(torch_state)  # validation must not shift training's negatives
        return float(np.mean(losses))

    def state(self) -> dict[str, Any]:
        return {
            "format": "cpc-embed-checkpoint-1",
            "config": self.cfg.to_dict(),
            "step": self.step_count,
            "model": self.model.state_dict(),
            "criterion": self.criterion.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": capture_rng(self.rng),
            "data": self.data.description,
            "tokenizer": self.data.tokenizer_path.name if self.data.tokenizer_path else None,
            "parameters": count_parameters(self.model),
        }


def build_trainer(cfg: TrainConfig, data: Datasets) -> Trainer:
    rng = seed_everything(cfg.seed)
    model = build_model(cfg)
    criterion = CPCCriterion(cfg.model.context_dim, cfg.model.encoder_dim, cfg.loss)
    optimizer = torch.optim.AdamW(
        [*model.parameters(), *criterion.parameters()],
        lr=cfg.optim.lr,
        weight_decay=cfg.optim.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_then_constant(cfg.optim.warmup_steps)
    )
    return Trainer(
        cfg, model, criterion, optimizer, scheduler, data, rng, autocast_dtype(cfg.precision)
    )


def _attach_log_file(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("training").addHandler(handler)
    return handler


def train(
    cfg: TrainConfig | None,
    data_dir: str | Path,
    run_dir: str | Path,
    *,
    resume: bool = False,
    steps: int | None = None,
    stop_at: int | None = None,
    progress: bool = True,
) -> Trainer:
    """Train (or resume) a run; `stop_at` ends this call early as an interruption would."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = load_checkpoint(run_dir) if resume else None
    if checkpoint is not None:
        cfg = config_from_dict(checkpoint["config"])
    if cfg is None:
        raise ValueError("a config is needed unless resuming")
    if steps is not None:
        cfg.optim.steps = steps
    handler = _attach_log_file(run_dir)
    try:
        data = load_datasets(cfg, data_dir, run_dir)
        trainer = build_trainer(cfg, data)
        if checkpoint is not None:
            trainer.model.load_state_dict(checkpoint["model"])
            trainer.criterion.load_state_dict(checkpoint["criterion"])
            trainer.optimizer.load_state_dict(checkpoint["optimizer"])
            trainer.scheduler.load_state_dict(checkpoint["scheduler"])
            restore_rng(checkpoint["rng"], trainer.rng)
            trainer.step_count = int(checkpoint["step"])
            logger.info("resumed %s at step %d", run_dir, trainer.step_count)
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2), encoding="utf-8")
        logger.info(
            "training %s CPC, %d parameters, autocast %s, data %s",
            cfg.modality,
            count_parameters(trainer.model),
            trainer.amp,
            data.description,
        )
        _loop(trainer, run_dir, stop_at, progress, checkpoint is not None)
        return trainer
    finally:
        logging.getLogger("training").removeHandler(handler)
        handler.close()


def _loop(
    trainer: Trainer, run_dir: Path, stop_at: int | None, progress: bool, resumed: bool
) -> None:
    cfg = trainer.cfg
    end = cfg.optim.steps if stop_at is None else min(stop_at, cfg.optim.steps)
    curves = CurveWriter(run_dir, trainer.step_count if resumed else None)
    bar = tqdm(
        total=end, initial=trainer.step_count, disable=not progress, unit="step", dynamic_ncols=True
    )
    compute_s, examples = 0.0, 0
    while trainer.step_count < end:
        t0 = time.perf_counter()
        out = trainer.step()
        compute_s += time.perf_counter() - t0
        examples += cfg.optim.batch_size
        step = trainer.step_count
        bar.update(1)
        if step % cfg.log_every == 0 or step == end:
            row: dict[str, Any] = {
                "step": step,
                "loss": round(out.loss.item(), 5),
                "mi_bound": round(out.mi_bound, 5),
                "lr": trainer.scheduler.get_last_lr()[0],
                "examples_per_s": round(examples / max(compute_s, 1e-9), 2),
                **{f"acc_k{k}": round(a, 4) for k, a in out.accuracy.items()},
            }
            accs = "/".join(f"{a:.2f}" for a in out.accuracy.values())
            bar.set_postfix_str(f"loss={row['loss']:.3f} mi={row['mi_bound']:.2f} acc={accs}")
            if step % cfg.checkpoint_every == 0 or step == end:
                row["val_loss"] = trainer.validate()
                save_checkpoint(run_dir, trainer.state())
                curves.append(row)
                curves.plot()
            else:
                curves.append(row)
            logger.info("step %d %s", step, {k: v for k, v in row.items() if k != "step"})
            compute_s, examples = 0.0, 0
        elif step % cfg.checkpoint_every == 0:
            save_checkpoint(run_dir, trainer.state())
    bar.close()
