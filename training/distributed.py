"""Data-parallel training with torch.distributed: ranks, process group, sharding, collectives.

`cpc-embed train` started by torchrun joins a process group (NCCL when it
trains on a GPU, gloo on the CPU); without torchrun there is one rank and
nothing here talks to anyone. `optim.batch_size` is the global batch: every
rank draws the same global batch from the shared generator and keeps its own
contiguous slice (`shard_rows`), so R processes update as one process with the
whole batch, and a checkpoint resumes with any number of them. How and why:
docs/training.md (torchrun).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RankInfo:
    """This process's place among the training processes."""

    rank: int = 0  # 0 .. world_size-1; rank 0 logs, checkpoints and writes the run folder
    world_size: int = 1  # processes in the job, over every machine
    local_rank: int = 0  # index among the processes of this machine (picks the GPU)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def rank_from_env(env: Mapping[str, str]) -> RankInfo:
    """The rank torchrun gave this process (one rank of one when not under torchrun)."""
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise ValueError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers ({exc})") from exc
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    return RankInfo(rank, world, local)


def backend_for(device: torch.device) -> str:
    """NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if device.type == "cuda" else "gloo"


def per_rank_batch(global_batch: int, world_size: int) -> int:
    """Sequences each rank trains on per step; the global batch must split evenly."""
    if global_batch % world_size:
        raise ValueError(
            f"optim.batch_size is the global batch ({global_batch}); it must be a multiple of "
            f"the {world_size} processes (e.g. {max(1, global_batch // world_size) * world_size})"
        )
    return global_batch // world_size


def shard_rows(batch: np.ndarray, ranks: RankInfo) -> np.ndarray:
    """This rank's contiguous slice of a global batch (dim 0)."""
    size = per_rank_batch(batch.shape[0], ranks.world_size)
    return np.ascontiguousarray(batch[ranks.rank * size : (ranks.rank + 1) * size])


def join(ranks: RankInfo, device: torch.device) -> bool:
    """Join the process group of a torchrun job; True when this call created it."""
    if not ranks.distributed or dist.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend=backend_for(device),
        rank=ranks.rank,
        world_size=ranks.world_size,
        device_id=device if device.type == "cuda" else None,
    )
    if not ranks.is_main:  # one voice: the other ranks only report errors
        logging.getLogger("training").setLevel(logging.ERROR)
    logger.info(
        "rank %d of %d joined (%s on %s)", ranks.rank, ranks.world_size, backend_for(device), device
    )
    return True


def leave(created: bool, finished: bool) -> None:
    """Leave the process group if `join` created it.

    After a run that `finished`, the ranks first wait for each other (rank 0
    may still be writing the last checkpoint): a rank that tears down its
    gloo connections while a peer still uses them can abort the process.
    After an error there is no waiting: torchrun stops the other ranks.
    """
    if not (created and dist.is_initialized()):
        return
    if finished:
        dist.barrier()
    dist.destroy_process_group()


class _GatherRows(torch.autograd.Function):
    """All-gather along dim 0 whose backward hands each rank the gradient of its own rows.

    Every rank's loss uses every rank's rows, so the gradient of a rank's rows
    is the sum over ranks of the gradients they computed for them: an
    all-reduce (sum) of the gathered gradient, then this rank's slice.
    """

    @staticmethod
    def forward(ctx: Any, local: Tensor) -> Tensor:
        local = local.contiguous()
        parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, local)
        ctx.rows = local.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.rows
        return grad[start : start + ctx.rows]


def gather_rows(local: Tensor) -> Tensor:
    """Every rank's `local` stacked in rank order along dim 0, with gradients flowing back."""
    out: Tensor = _GatherRows.apply(local)
    return out


def mean_over_ranks(values: Sequence[float], ranks: RankInfo) -> list[float]:
    """The mean of each value over all ranks (for logging; each rank must call it)."""
    if not ranks.distributed:
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) / ranks.world_size for v in t.cpu()]


def share_from_main(obj: Any, ranks: RankInfo) -> Any:
    """Rank 0's `obj` on every rank (a checkpoint, a tokenizer file); others pass anything."""
    if not ranks.distributed:
        return obj
    box = [obj if ranks.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
