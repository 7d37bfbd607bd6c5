"""InfoNCE, the contrastive loss of CPC, and the multi-step CPC criterion.

For a prediction p and candidates {t_j}, one of which (t_pos) is its true target,
InfoNCE is -log(exp(<p, t_pos>) / sum_j exp(<p, t_j>)), averaged over predictions.
With N candidates, log N - loss is a lower bound on the mutual information
(van den Oord et al. 2018). `CPCCriterion` owns the W_k maps of the paper
(prediction heads), so the exported model never carries them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.config import LossConfig

NEGATIVE_MODES = ("batch", "sequence")


@dataclass(frozen=True)
class BatchShard:
    """Where one process's sequences sit in the global batch of a data-parallel step.

    This rank holds sequences `first .. first+B-1` of `total`. With `gather`
    (an all-gather along dim 0 that lets gradients flow back, see
    `training.distributed.gather_rows`), negatives="batch" draws candidates
    from every rank's targets, so a step on R ranks sees the same candidates
    as one process with the whole batch; without it each rank uses its own.
    """

    first: int  # index of this rank's first sequence in the global batch
    total: int  # sequences in the global batch, over all ranks
    gather: Callable[[Tensor], Tensor] | None = None  # rows of every rank, in rank order


@dataclass
class InfoNCEOutput:
    """Loss and health signals of one InfoNCE evaluation."""

    loss: Tensor  # scalar, mean cross-entropy over predictions
    accuracy: Tensor  # scalar, fraction of predictions whose positive strictly scores highest
    num_candidates: int  # N (positive included); log N - loss bounds the MI


@dataclass
class CPCLossOutput:
    """The CPC loss averaged over prediction steps k, with per-k diagnostics."""

    loss: Tensor  # scalar, mean over k of the InfoNCE loss
    accuracy: dict[int, float]  # k -> prediction accuracy at step k
    mi_bound: float  # mean over k of log N_k - L_k
    loss_per_step: dict[int, float] = field(default_factory=dict)  # k -> L_k; extra, for logs


def _strict_accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Fraction of rows whose label's logit is strictly greater than every other logit."""
    positive = logits.gather(1, labels[:, None]).squeeze(1)  # [M]
    others = logits.scatter(1, labels[:, None], float("-inf"))  # [M, N]
    return (positive > others.max(dim=1).values).float().mean()


class InfoNCE(nn.Module):
    """InfoNCE between predictions and targets of shape [B, T, D]; scores are dot products.

    negatives="batch": the candidates of prediction (b, t) are all B*T targets.
    negatives="sequence": they are the T targets of the same sequence b.
    num_negatives=n: instead of all candidates, n negatives are drawn uniformly
    (with replacement, never the positive itself) from that pool; N = n + 1.
    The loss is computed in fp32 even under autocast.

    Data-parallel: `first`/`total` say where these B sequences sit in a global
    batch of `total`; `targets` then hold either these B sequences' targets or
    (negatives="batch") all `total` of them, gathered from every rank. Sampled
    negatives are drawn for the whole global batch and this rank keeps its
    rows, so R ranks draw exactly what one process would.
    """

    def __init__(self, negatives: str = "batch", num_negatives: int | None = None) -> None:
        super().__init__()
        if negatives not in NEGATIVE_MODES:
            raise ValueError(
                f"unknown negatives mode {negatives!r}; expected one of {NEGATIVE_MODES}"
            )
        if num_negatives is not None and num_negatives < 1:
            raise ValueError(f"num_negatives must be >= 1 (or None for all), got {num_negatives}")
        self.negatives = negatives
        self.num_negatives = num_negatives

    def _check(self, predictions: Tensor, targets: Tensor, first: int, total: int) -> None:
        if predictions.dim() != 3 or targets.dim() != 3:
            raise ValueError(
                "predictions and targets must be 3-D [B, T, D]; got shapes "
                f"{tuple(predictions.shape)} and {tuple(targets.shape)}"
            )
        b, t, _ = predictions.shape
        allowed = {b, total} if self.negatives == "batch" else {b}
        if targets.shape[1:] != predictions.shape[1:] or targets.shape[0] not in allowed:
            raise ValueError(
                f"predictions {tuple(predictions.shape)} and targets "
                f"{tuple(targets.shape)} must have the same shape"
                + (" (or targets of the whole global batch)" if total != b else "")
            )
        if b == 0 or t == 0:
            raise ValueError(f"empty batch or sequence: B={b}, T={t}")
        if not 0 <= first <= total - b:
            raise ValueError(f"sequences {first}..{first + b - 1} are not in a batch of {total}")
        if self.negatives == "sequence" and t < 2:
            raise ValueError(f"negatives='sequence' needs T >= 2 steps per sequence, got T={t}")
        if self.negatives == "batch" and targets.shape[0] * t < 2:
            raise ValueError(f"negatives='batch' needs B*T >= 2 targets, got B={b}, T={t}")

    def forward(
        self, predictions: Tensor, targets: Tensor, *, first: int = 0, total: int | None = None
    ) -> InfoNCEOutput:
        total = predictions.shape[0] if total is None else total
        self._check(predictions, targets, first, total)
        # Position of this rank's first target among `targets` (0 unless they are global).
        offset = first if targets.shape[0] != predictions.shape[0] else 0
        with torch.autocast(device_type=predictions.device.type, enabled=False):
            pred, targ = predictions.float(), targets.float()
            if self.num_negatives is None:
                logits, labels = self._all_candidates(pred, targ, offset)
            else:
                logits, labels = self._sampled(pred, targ, self.num_negatives, offset, first, total)
            loss = F.cross_entropy(logits, labels)
        with torch.no_grad():
            accuracy = _strict_accuracy(logits.detach(), labels)
        return InfoNCEOutput(loss=loss, accuracy=accuracy, num_candidates=logits.shape[1])

    def _all_candidates(self, pred: Tensor, targ: Tensor, offset: int) -> tuple[Tensor, Tensor]:
        # pred: [B, T, D]; targ: [B, T, D], or [G, T, D] for the global batch of G sequences
        b, t, d = pred.shape
        if self.negatives == "batch":
            logits = pred.reshape(b * t, d) @ targ.reshape(-1, d).T  # [B*T, G*T]
            labels = offset * t + torch.arange(b * t, device=pred.device)  # this rank's diagonal
        else:
            logits = torch.bmm(pred, targ.transpose(1, 2)).reshape(b * t, t)  # [B*T, T]
            labels = torch.arange(t, device=pred.device).repeat(b)  # [B*T]
        return logits, labels

    def _sampled(
        self, pred: Tensor, targ: Tensor, n: int, offset: int, first: int, total: int
    ) -> tuple[Tensor, Tensor]:
        # pred: [B, T, D]; targ: [B, T, D], or [G, T, D] for the global batch of G sequences
        b, t, d = pred.shape
        flat_pred = pred.reshape(b * t, d)  # [M, D], M = B*T
        flat_targ = targ.reshape(-1, d)  # [M or G*T, D]
        rows = torch.arange(b * t, device=pred.device)  # [M]
        if self.negatives == "batch":
            pool, pos, base = flat_targ.shape[0], offset * t + rows, torch.zeros_like(rows)
        else:  # the T targets of the same sequence
            pool, pos, base = t, rows % t, (rows // t) * t
        # Uniform over the pool minus the positive: draw from pool-1 and skip the positive.
        # The draw covers the global batch and this rank keeps its rows, as one process would.
        idx = torch.randint(0, pool - 1, (total * t, n), device=pred.device)
        idx = idx[first * t : (first + b) * t]  # [M, n]
        idx = idx + (idx >= pos[:, None]).long()
        negatives = flat_targ[base[:, None] + idx]  # [M, n, D]
        positives = flat_targ[offset * t + rows]  # [M, D]
        pos_score = (flat_pred * positives).sum(dim=-1, keepdim=True)  # [M, 1]
        neg_score = torch.einsum("md,mnd->mn", flat_pred, negatives)  # [M, n]
        logits = torch.cat([pos_score, neg_score], dim=1)  # [M, 1+n]
        labels = torch.zeros(b * t, dtype=torch.long, device=pred.device)
        return logits, labels


class CPCCriterion(nn.Module):
    """Sum of InfoNCE over prediction steps k = min_step..prediction_steps, with W_k heads.

    z and c are [B, T, D] sequences or [B, R, Cc, D] grids. For a grid, step k moves
    k rows down (dim 1) and the (row, column) positions are flattened into T.
    """

    def __init__(self, context_dim: int, encoder_dim: int, loss_cfg: LossConfig) -> None:
        super().__init__()
        if loss_cfg.min_step < 1 or loss_cfg.prediction_steps < loss_cfg.min_step:
            raise ValueError(
                f"need 1 <= min_step <= prediction_steps, got min_step={loss_cfg.min_step}, "
                f"prediction_steps={loss_cfg.prediction_steps}"
            )
        self.steps = list(range(loss_cfg.min_step, loss_cfg.prediction_steps + 1))
        self.prediction_steps = loss_cfg.prediction_steps
        self.heads = nn.ModuleList(
            [nn.Linear(context_dim, encoder_dim, bias=False) for _ in self.steps]
        )
        self.infonce = InfoNCE(loss_cfg.negatives, loss_cfg.num_negatives)

    def forward(self, z: Tensor, c: Tensor, shard: BatchShard | None = None) -> CPCLossOutput:
        """The CPC loss of this batch; with `shard`, this rank's part of a global batch."""
        # z: [B, T, Z] or [B, R, Cc, Z]; c: same leading shape, last dim C
        if z.dim() not in (3, 4) or z.dim() != c.dim() or z.shape[:-1] != c.shape[:-1]:
            raise ValueError(
                f"z {tuple(z.shape)} and c {tuple(c.shape)} must be [B, T, D] or "
                "[B, R, Cc, D] with the same leading shape"
            )
        length = z.shape[1]
        if length <= self.prediction_steps:
            raise ValueError(
                f"sequence too short: {length} steps (rows) but predicting up to "
                f"k={self.prediction_steps} needs more than {self.prediction_steps}"
            )
        batch = z.shape[0]
        first, total = (0, batch) if shard is None else (shard.first, shard.total)
        candidates = z
        if shard is not None and shard.gather is not None and self.infonce.negatives == "batch":
            candidates = shard.gather(z)  # [G, T(, Cc), Z]: every rank's targets
        losses: list[Tensor] = []
        accuracy: dict[int, float] = {}
        loss_per_step: dict[int, float] = {}
        bounds: list[float] = []
        for k, head in zip(self.steps, self.heads, strict=True):
            pred = head(c[:, : length - k])  # [B, T-k(, Cc), Z]
            targ = candidates[:, k:]  # [B or G, T-k(, Cc), Z]
            out = self.infonce(
                pred.reshape(batch, -1, pred.shape[-1]),
                targ.reshape(targ.shape[0], -1, targ.shape[-1]),
                first=first,
                total=total,
            )
            losses.append(out.loss)
            step_loss = float(out.loss.detach())
            loss_per_step[k] = step_loss
            accuracy[k] = float(out.accuracy)
            bounds.append(math.log(out.num_candidates) - step_loss)
        return CPCLossOutput(
            loss=torch.stack(losses).mean(),
            accuracy=accuracy,
            mi_bound=sum(bounds) / len(bounds),
            loss_per_step=loss_per_step,
        )
