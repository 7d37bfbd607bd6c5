"""The CPC training loop: sample windows, encode, predict k steps ahead, minimise InfoNCE.

`train(cfg, data_dir, run_dir)` writes RUN_DIR/{config.json, checkpoint.pt,
curves.csv, curves.png, train.log}. With `resume=True` it reloads the
checkpoint (model, criterion, optimizer, scheduler, step, RNG states, config)
and continues exactly; `steps` can extend a finished run.

Started by torchrun, every process runs this same loop on its share of each
global batch, wrapped in DistributedDataParallel (`training.distributed`);
rank 0 alone writes the run folder and logs. `device` picks the CPU or a GPU
(`training.device`); on a GPU, `precision="auto"` means bf16 autocast.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from training import distributed
from training.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from training.config import TrainConfig, config_from_dict
from training.curves import CurveWriter
from training.data import DataDirs, Dataset, Datasets, load_datasets
from training.device import autocast_dtype, resolve_device_here
from training.distributed import RankInfo
from training.infonce import BatchShard, CPCCriterion, CPCLossOutput
from training.models.cpc import CPCModel, build_model, count_parameters

logger = logging.getLogger(__name__)
VAL_BATCHES = 4  # batches drawn (with a fixed seed) to report validation loss
# A step whose loss or gradient is not finite (a bf16 overflow, a degenerate crop) is
# skipped rather than written into the weights; this many in a row stop the run.
MAX_NONFINITE_IN_A_ROW = 20


class TrainingDiverged(RuntimeError):
    """Too many steps in a row had a non-finite loss or gradient."""


StepHook = Callable[["Trainer"], None]


def seed_everything(seed: int) -> np.random.Generator:
    random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def warmup_then_constant(warmup_steps: int) -> Any:
    """LR multiplier: linear warm-up over `warmup_steps`, then 1 (the paper's constant Adam lr)."""

    def factor(step: int) -> float:
        return min(1.0, (step + 1) / max(1, warmup_steps))

    return factor


class CPCObjective(nn.Module):
    """Model and criterion as one module (what DistributedDataParallel wraps): x -> CPC loss.

    The W_k heads live in the criterion and must be averaged over ranks like
    the model's weights, hence one module for both.
    """

    def __init__(
        self, model: CPCModel, criterion: CPCCriterion, amp: torch.dtype | None, device_type: str
    ) -> None:
        super().__init__()
        self.model = model
        self.criterion = criterion
        self.amp = amp
        self.device_type = device_type

    def forward(self, x: torch.Tensor, shard: BatchShard | None = None) -> CPCLossOutput:
        # x: one modality's batch (see CPCModel.forward)
        with torch.autocast(
            self.device_type, dtype=self.amp or torch.bfloat16, enabled=self.amp is not None
        ):
            z, c = self.model(x)
            # The criterion's score products follow the autocast; its softmax and loss are fp32.
            out: CPCLossOutput = self.criterion(z.float(), c.float(), shard)
        return out


@dataclass
class Trainer:
    """Model, loss, optimiser and data for one run (or one rank of it); `step()` does one update."""

    cfg: TrainConfig
    model: CPCModel
    criterion: CPCCriterion
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    data: Datasets
    rng: np.random.Generator  # shared by every rank: all draw the same global batch
    amp: torch.dtype | None
    step_count: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    ranks: RankInfo = field(default_factory=RankInfo)
    objective: CPCObjective = field(init=False)
    trained: nn.Module = field(init=False)  # the objective, inside DDP when distributed
    shard: BatchShard | None = field(init=False)
    skipped_steps: int = field(default=0, init=False)  # updates skipped as non-finite
    nonfinite_in_a_row: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.objective = CPCObjective(self.model, self.criterion, self.amp, self.device.type)
        self.shard, self.trained = None, self.objective
        if self.ranks.distributed:
            per_rank = distributed.per_rank_batch(self.cfg.optim.batch_size, self.ranks.world_size)
            cross = self.cfg.loss.cross_rank_negatives
            self.shard = BatchShard(
                first=self.ranks.rank * per_rank,
                total=self.cfg.optim.batch_size,
                gather=distributed.gather_rows if cross else None,
            )
            self.trained = DistributedDataParallel(self.objective)

    def batch(
        self, dataset: Dataset, rng: np.random.Generator, whole: bool = False
    ) -> torch.Tensor:
        """The next global batch from `rng`: this rank's share of it, or all of it."""
        x = dataset.sample(self.cfg.optim.batch_size, rng)
        if not whole and self.ranks.distributed:
            x = distributed.shard_rows(x, self.ranks)
        return torch.from_numpy(x).to(self.device, non_blocking=True)

    def forward(self, x: torch.Tensor) -> CPCLossOutput:
        """The loss of `x` in this process alone (no DDP, no gathering)."""
        return self.objective(x)

    def step(self) -> CPCLossOutput:
        self.objective.train()
        out: CPCLossOutput = self.trained(self.batch(self.data.train, self.rng), self.shard)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()  # under DDP: gradients averaged over ranks, so all ranks agree
        clip = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.objective.parameters(), clip)
        if torch.isfinite(norm) and torch.isfinite(out.loss.detach()):
            self.optimizer.step()
            self.nonfinite_in_a_row = 0
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            self.nonfinite_in_a_row += 1
            logger.warning(
                "step %d: non-finite loss or gradient, update skipped (%d so far)",
                self.step_count + 1,
                self.skipped_steps,
            )
            if self.nonfinite_in_a_row >= MAX_NONFINITE_IN_A_ROW:
                raise TrainingDiverged(
                    f"{self.nonfinite_in_a_row} steps in a row had a non-finite loss or "
                    "gradient; lower optim.lr or try precision fp32"
                )
        self.scheduler.step()
        self.step_count += 1
        return out

    @torch.no_grad()
    def validate(self) -> float | None:
        """Validation loss over whole global batches, in this process alone (rank 0)."""
        if self.data.val is None:
            return None
        self.objective.eval()
        rng = np.random.default_rng(self.cfg.seed + 1)
        torch_state = torch.get_rng_state()
        cuda_state = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        losses = [
            self.forward(self.batch(self.data.val, rng, whole=True)).loss.item()
            for _ in range(VAL_BATCHES)
        ]
        torch.set_rng_state(torch_state)  # validation must not shift training's negatives
        if cuda_state is not None:
            torch.cuda.set_rng_state(cuda_state, self.device)
        return float(np.mean(losses))

    def state(self) -> dict[str, Any]:
        return {
            "format": "cpc-embed-checkpoint-1",
            "config": self.cfg.to_dict(),
            "step": self.step_count,
            "model": self.model.state_dict(),  # the bare model: loads with any world size
            "criterion": self.criterion.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": capture_rng(self.rng, self.device),
            "data": self.data.description,
            "tokenizer": self.data.tokenizer_path.name if self.data.tokenizer_path else None,
            "parameters": count_parameters(self.model),
            "world_size": self.ranks.world_size,  # informative: resuming may use another
        }

    def load_state(self, checkpoint: dict[str, Any]) -> None:
        """Continue from a checkpoint (saved with any number of processes)."""
        self.model.load_state_dict(checkpoint["model"])
        self.criterion.load_state_dict(checkpoint["criterion"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        restore_rng(checkpoint["rng"], self.rng, self.device)
        self.step_count = int(checkpoint["step"])


def build_trainer(
    cfg: TrainConfig,
    data: Datasets,
    device: torch.device | None = None,
    ranks: RankInfo | None = None,
) -> Trainer:
    """A trainer on `device` (the CPU by default); distributed when `ranks` has several."""
    device = device or torch.device("cpu")
    rng = seed_everything(cfg.seed)
    model = build_model(cfg).to(device)
    criterion = CPCCriterion(cfg.model.context_dim, cfg.model.encoder_dim, cfg.loss).to(device)
    optimizer = torch.optim.AdamW(
        [*model.parameters(), *criterion.parameters()],
        lr=cfg.optim.lr,
        weight_decay=cfg.optim.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_then_constant(cfg.optim.warmup_steps)
    )
    amp = autocast_dtype(cfg.precision, device)
    return Trainer(
        cfg, model, criterion, optimizer, scheduler, data, rng, amp, 0, device, ranks or RankInfo()
    )


def _attach_log_file(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("training").addHandler(handler)
    return handler


def _load_data(cfg: TrainConfig, data_dir: DataDirs, run_dir: Path, ranks: RankInfo) -> Datasets:
    """Every rank decodes the data; rank 0 first, so a text run's tokenizer is made once.

    Rank 0 then hands its tokenizer file to the others, which on another
    machine may not see rank 0's run folder.
    """
    data = load_datasets(cfg, data_dir, run_dir) if ranks.is_main else None
    tokenizer = None
    if data is not None and data.tokenizer_path is not None:
        tokenizer = (data.tokenizer_path.name, data.tokenizer_path.read_bytes())
    tokenizer = distributed.share_from_main(tokenizer, ranks)
    if data is not None:
        return data
    if tokenizer is not None:
        name, content = tokenizer
        path = run_dir / name
        if not path.is_file() or path.read_bytes() != content:
            tmp = run_dir / f".{name}.rank{ranks.rank}.tmp"
            tmp.write_bytes(content)
            tmp.replace(path)
    return load_datasets(cfg, data_dir, run_dir)


def train(
    cfg: TrainConfig | None,
    data_dir: DataDirs,
    run_dir: str | Path,
    *,
    resume: bool = False,
    steps: int | None = None,
    stop_at: int | None = None,
    progress: bool = True,
    device: str = "auto",
    on_step: StepHook | None = None,
) -> Trainer:
    """Train (or resume) a run; `stop_at` ends this call early as an interruption would.

    Under torchrun this is one rank of a data-parallel run (see
    `training.distributed`). `device` is auto, cpu or cuda; `on_step` is
    called on every rank after every update.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ranks = distributed.rank_from_env(os.environ)
    where = resolve_device_here(device, ranks.local_rank)
    joined = distributed.join(ranks, where)
    handler = _attach_log_file(run_dir) if ranks.is_main else None
    finished = False
    try:
        checkpoint = None
        if resume:  # rank 0 reads it; the others may not see its run folder
            checkpoint = distributed.share_from_main(
                load_checkpoint(run_dir) if ranks.is_main else None, ranks
            )
        if checkpoint is not None:
            cfg = config_from_dict(checkpoint["config"])
        if cfg is None:
            raise ValueError("a config is needed unless resuming")
        if steps is not None:
            cfg.optim.steps = steps
        distributed.per_rank_batch(cfg.optim.batch_size, ranks.world_size)
        data = _load_data(cfg, data_dir, run_dir, ranks)
        trainer = build_trainer(cfg, data, where, ranks)
        if checkpoint is not None:
            trainer.load_state(checkpoint)
            logger.info(
                "resumed %s at step %d (saved by %s process(es), now %d)",
                run_dir,
                trainer.step_count,
                checkpoint.get("world_size", 1),
                ranks.world_size,
            )
        if ranks.is_main:
            text = json.dumps(cfg.to_dict(), indent=2)
            (run_dir / "config.json").write_text(text, encoding="utf-8")
        logger.info(
            "training %s CPC, %d parameters, %s, autocast %s, %d process(es) x %d sequences, "
            "data %s",
            cfg.modality,
            count_parameters(trainer.model),
            where,
            trainer.amp,
            ranks.world_size,
            cfg.optim.batch_size // ranks.world_size,
            data.description,
        )
        _loop(trainer, run_dir, stop_at, progress, checkpoint is not None, on_step)
        finished = True
        return trainer
    finally:
        if handler is not None:
            logging.getLogger("training").removeHandler(handler)
            handler.close()
        distributed.leave(joined, finished)


def _loop(
    trainer: Trainer,
    run_dir: Path,
    stop_at: int | None,
    progress: bool,
    resumed: bool,
    on_step: StepHook | None = None,
) -> None:
    cfg, main = trainer.cfg, trainer.ranks.is_main
    end = cfg.optim.steps if stop_at is None else min(stop_at, cfg.optim.steps)
    curves = CurveWriter(run_dir, trainer.step_count if resumed else None) if main else None
    bar = tqdm(
        total=end,
        initial=trainer.step_count,
        disable=not (progress and main),
        unit="step",
        dynamic_ncols=True,
    )
    compute_s, examples = 0.0, 0
    while trainer.step_count < end:
        t0 = time.perf_counter()
        out = trainer.step()
        compute_s += time.perf_counter() - t0
        examples += cfg.optim.batch_size
        step = trainer.step_count
        bar.update(1)
        if on_step is not None:
            on_step(trainer)
        if step % cfg.log_every == 0 or step == end:
            # Every rank takes part in the mean; then rank 0 alone writes.
            loss, mi, *accs = distributed.mean_over_ranks(
                [out.loss.item(), out.mi_bound, *out.accuracy.values()], trainer.ranks
            )
            if curves is not None:
                row: dict[str, Any] = {
                    "step": step,
                    "loss": round(loss, 5),
                    "mi_bound": round(mi, 5),
                    "lr": trainer.scheduler.get_last_lr()[0],
                    "examples_per_s": round(examples / max(compute_s, 1e-9), 2),
                    **{f"acc_k{k}": round(a, 4) for k, a in zip(out.accuracy, accs, strict=True)},
                }
                text = "/".join(f"{a:.2f}" for a in accs)
                bar.set_postfix_str(f"loss={row['loss']:.3f} mi={row['mi_bound']:.2f} acc={text}")
                if step % cfg.checkpoint_every == 0 or step == end:
                    row["val_loss"] = trainer.validate()
                    save_checkpoint(run_dir, trainer.state())
                    curves.append(row)
                    curves.plot()
                else:
                    curves.append(row)
                logger.info("step %d %s", step, {k: v for k, v in row.items() if k != "step"})
            compute_s, examples = 0.0, 0
        elif step % cfg.checkpoint_every == 0 and main:
            save_checkpoint(run_dir, trainer.state())
    bar.close()
