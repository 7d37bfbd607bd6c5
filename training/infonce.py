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
from typing import cast

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


def draw_negatives(pool: int, pos: Tensor, n: int, t: int, first: int, total: int) -> Tensor:
    """`n` indices per row into a pool of `pool` candidates, uniform over all but `pos`.

    Draws from pool-1 and skips the positive. The draw covers the `total`
    sequences of `t` rows of the global batch and this rank keeps its rows
    (`pos` holds one positive per row, `first` is its first sequence), as one
    process would. `InfoNCE` and `CPCCriterion` draw through here, one call per
    prediction step, so both consume the random stream alike.
    """
    idx = torch.randint(0, pool - 1, (total * t, n), device=pos.device)
    idx = idx[first * t : first * t + pos.shape[0]]  # [M, n]
    return idx + (idx >= pos[:, None]).long()


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

    def check(
        self, pred_shape: tuple[int, ...], targ_shape: tuple[int, ...], first: int, total: int
    ) -> None:
        """Raise ValueError unless predictions and targets of these shapes can be scored."""
        if len(pred_shape) != 3 or len(targ_shape) != 3:
            raise ValueError(
                "predictions and targets must be 3-D [B, T, D]; got shapes "
                f"{tuple(pred_shape)} and {tuple(targ_shape)}"
            )
        b, t, _ = pred_shape
        allowed = {b, total} if self.negatives == "batch" else {b}
        if tuple(targ_shape[1:]) != tuple(pred_shape[1:]) or targ_shape[0] not in allowed:
            raise ValueError(
                f"predictions {tuple(pred_shape)} and targets "
                f"{tuple(targ_shape)} must have the same shape"
                + (" (or targets of the whole global batch)" if total != b else "")
            )
        if b == 0 or t == 0:
            raise ValueError(f"empty batch or sequence: B={b}, T={t}")
        if not 0 <= first <= total - b:
            raise ValueError(f"sequences {first}..{first + b - 1} are not in a batch of {total}")
        if self.negatives == "sequence" and t < 2:
            raise ValueError(f"negatives='sequence' needs T >= 2 steps per sequence, got T={t}")
        if self.negatives == "batch" and targ_shape[0] * t < 2:
            raise ValueError(f"negatives='batch' needs B*T >= 2 targets, got B={b}, T={t}")

    def forward(
        self, predictions: Tensor, targets: Tensor, *, first: int = 0, total: int | None = None
    ) -> InfoNCEOutput:
        total = predictions.shape[0] if total is None else total
        self.check(tuple(predictions.shape), tuple(targets.shape), first, total)
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
        idx = draw_negatives(pool, pos, n, t, first, total)  # [M, n]
        negatives = flat_targ[base[:, None] + idx]  # [M, n, D]
        positives = flat_targ[offset * t + rows]  # [M, D]
        pos_score = (flat_pred * positives).sum(dim=-1, keepdim=True)  # [M, 1]
        neg_score = torch.einsum("md,mnd->mn", flat_pred, negatives)  # [M, n]
        logits = torch.cat([pos_score, neg_score], dim=1)  # [M, 1+n]
        labels = torch.zeros(b * t, dtype=torch.long, device=pred.device)
        return logits, labels


class CPCCriterion(nn.Module):
    """Mean of InfoNCE over prediction steps k = min_step..prediction_steps, with W_k heads.

    z and c are [B, T, D] sequences or [B, R, Cc, D] grids. For a grid, step k moves
    k rows down (dim 1) and the (row, column) positions are flattened into T.

    Step k is the `InfoNCE` of predictions W_k c_t against targets z_{t+k}, as a
    loop over k calling `InfoNCE` would give (the same candidates, and with
    `num_negatives` the same draws from the random stream), but every k is
    scored at once: one product of all heads' predictions with every
    candidate, from which each k takes its sampled negatives (or, with all
    candidates, masks the candidates outside its pool). So sampled negatives
    cost one matrix product instead of gathering a [B*T, n, D] block per k.
    The products run in bf16 under an enclosing bf16 autocast; log-softmax,
    loss and accuracy always in fp32. Steps are scored in groups that keep the
    score matrix under `score_budget` elements.
    """

    score_budget = 1 << 25  # elements of one group's score matrix (fp32: 128 MiB)

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
        batch, dim = z.shape[0], z.shape[-1]
        first, total = (0, batch) if shard is None else (shard.first, shard.total)
        candidates = z
        if shard is not None and shard.gather is not None and self.infonce.negatives == "batch":
            candidates = shard.gather(z)  # [G, T(, Cc), Z]: every rank's targets
        cols = z.shape[2] if z.dim() == 4 else 1
        positions = length * cols  # P: flattened positions per sequence
        pool_seqs = candidates.shape[0]
        # Position of this rank's first sequence among the candidates (0 unless they are global).
        offset = first if pool_seqs != batch else 0
        for k in self.steps:  # what InfoNCE would check for each k
            kept = (length - k) * cols
            self.infonce.check((batch, kept, dim), (pool_seqs, kept, dim), first, total)
        draws = self._draw(batch, positions, cols, pool_seqs, offset, first, total, z.device)
        cands = candidates.reshape(pool_seqs, positions, dim)
        ctx = c.reshape(batch, positions, c.shape[-1])
        losses: list[Tensor] = []
        accuracies: list[Tensor] = []
        for group in self._groups(batch, positions, pool_seqs):
            loss, acc = self._score(ctx, cands, group, draws, cols, offset)
            losses.append(loss)
            accuracies.append(acc)
        loss_k = torch.cat(losses)  # [K]
        stats = torch.stack([loss_k.detach(), torch.cat(accuracies)]).tolist()  # one host sync
        accuracy, loss_per_step, bounds = {}, {}, []
        for i, k in enumerate(self.steps):
            kept = (length - k) * cols
            n_cand = self._num_candidates(kept, pool_seqs)
            loss_per_step[k] = stats[0][i]
            accuracy[k] = stats[1][i]
            bounds.append(math.log(n_cand) - stats[0][i])
        return CPCLossOutput(
            loss=loss_k.mean(),
            accuracy=accuracy,
            mi_bound=sum(bounds) / len(bounds),
            loss_per_step=loss_per_step,
        )

    def _num_candidates(self, kept: int, pool_seqs: int) -> int:
        n = self.infonce.num_negatives
        if n is not None:
            return n + 1
        return pool_seqs * kept if self.infonce.negatives == "batch" else kept

    def _groups(self, batch: int, positions: int, pool_seqs: int) -> list[list[int]]:
        """Indices into self.steps, in order, in groups whose scores fit the budget."""
        width = pool_seqs * positions if self.infonce.negatives == "batch" else positions
        per_group = max(1, self.score_budget // max(1, batch * positions * width))
        idx = list(range(len(self.steps)))
        return [idx[i : i + per_group] for i in range(0, len(idx), per_group)]

    def _draw(
        self,
        batch: int,
        positions: int,
        cols: int,
        pool_seqs: int,
        offset: int,
        first: int,
        total: int,
        device: torch.device,
    ) -> list[Tensor]:
        """Per step, the candidate columns [B*T_k, 1+n] (positive first) of its rows; or []."""
        n = self.infonce.num_negatives
        if n is None:
            return []
        out = []
        for k in self.steps:  # in order, as InfoNCE called per k would draw
            shift = k * cols
            kept = positions - shift  # T_k
            rows = torch.arange(batch * kept, device=device)
            b, t = rows // kept, rows % kept
            if self.infonce.negatives == "batch":
                idx = draw_negatives(pool_seqs * kept, offset * kept + rows, n, kept, first, total)
                neg = (idx // kept) * positions + shift + idx % kept
                pos = (offset + b) * positions + t + shift
            else:
                neg = shift + draw_negatives(kept, t, n, kept, first, total)
                pos = t + shift
            out.append(torch.cat([pos[:, None], neg], dim=1))
        return out

    def _score(
        self,
        ctx: Tensor,
        cands: Tensor,
        group: list[int],
        draws: list[Tensor],
        cols: int,
        offset: int,
    ) -> tuple[Tensor, Tensor]:
        """Loss [len(group)] and accuracy [len(group)] of the steps self.steps[i], i in group."""
        # ctx: [B, P, C]; cands: [G, P, Z] (G = B for negatives="sequence")
        batch, positions, _ = ctx.shape
        dim = cands.shape[-1]
        kg = len(group)
        heads = [cast(nn.Linear, self.heads[i]) for i in group]
        weight = torch.cat([h.weight for h in heads])  # [kg*Z, C]
        pred = F.linear(ctx, weight).reshape(batch, positions * kg, dim)  # rows (b, t, i)
        if self.infonce.negatives == "batch":
            flat = pred.reshape(batch * positions * kg, dim) @ cands.reshape(-1, dim).T
            width = cands.shape[0] * positions  # columns: (b', t') of every candidate sequence
        else:
            flat = torch.bmm(pred, cands.transpose(1, 2))  # [B, P*kg, P]
            width = positions
        scores = flat.reshape(batch, positions, kg, width)  # bf16 under autocast
        shifts = [self.steps[i] * cols for i in group]
        kept = torch.tensor([positions - s for s in shifts], device=ctx.device)  # T_k
        with torch.autocast(device_type=ctx.device.type, enabled=False):
            if self.infonce.num_negatives is None:
                return self._all_candidates(scores.float(), shifts, kept, offset)
            # Sampled: only the drawn scores are taken out, and made fp32 after.
            return self._sampled(scores, group, draws, kept)

    def _all_candidates(
        self, scores: Tensor, shifts: list[int], kept: Tensor, offset: int
    ) -> tuple[Tensor, Tensor]:
        # scores: [B, P, kg, W]; step i's pool is every column whose position t' >= shift_i
        batch, positions, kg, width = scores.shape
        device = scores.device
        position = torch.arange(positions, device=device)
        shift = torch.tensor(shifts, device=device)
        outside = torch.full((kg, positions), float("-inf"), device=device)
        outside = outside.masked_fill(position[None, :] >= shift[:, None], 0.0)  # [kg, P]
        masked = (scores.view(batch, positions, kg, -1, positions) + outside[:, None]).view(
            batch * positions * kg, width
        )
        # The positive of row (b, t, i) is candidate (offset + b, t + shift_i); rows with
        # t >= T_i predict past the end and are left out (clamped to stay in range).
        b = torch.arange(batch, device=device)[:, None, None]
        target = (position[None, :, None] + shift[None, None, :]).clamp(max=positions - 1)
        if self.infonce.negatives == "batch":
            target = (offset + b) * positions + target
        labels = target.expand(batch, positions, kg).reshape(-1)
        row_loss = F.cross_entropy(masked, labels, reduction="none").view(batch, positions, kg)
        valid = position[:, None] < kept[None, :]  # [P, kg]
        count = (batch * kept).to(scores.dtype)
        loss = torch.where(valid, row_loss, 0.0).sum(dim=(0, 1)) / count
        with torch.no_grad():
            positive = masked.gather(1, labels[:, None])
            wins = ((masked >= positive).sum(dim=1) == 1).view(batch, positions, kg)
            accuracy = (wins & valid).sum(dim=(0, 1)).to(scores.dtype) / count
        return loss, accuracy

    def _sampled(
        self, scores: Tensor, group: list[int], draws: list[Tensor], kept: Tensor
    ) -> tuple[Tensor, Tensor]:
        # scores: [B, P, kg, W]; draws[i]: [B*T_i, 1+n] columns of step i's rows (b, t < T_i)
        batch, positions, kg, width = scores.shape
        device = scores.device
        index = []
        for j, i in enumerate(group):
            rows = torch.arange(draws[i].shape[0], device=device)
            b, t = rows // kept[j], rows % kept[j]
            row = (b * positions + t) * kg + j  # row (b, t, j) of the group's scores
            index.append(row[:, None] * width + draws[i])
        flat_index = torch.cat(index)  # [sum_i B*T_i, 1+n]
        # index_select: its backward (index_add_) is the fastest scatter of the drawn scores' grads
        logits = scores.reshape(-1).index_select(0, flat_index.reshape(-1))
        logits = logits.view(flat_index.shape).float()
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=device)
        row_loss = F.cross_entropy(logits, labels, reduction="none")
        segment = torch.repeat_interleave(torch.arange(kg, device=device), batch * kept)
        count = (batch * kept).to(logits.dtype)
        loss = torch.zeros(kg, device=device).index_add(0, segment, row_loss) / count
        with torch.no_grad():
            wins = ((logits >= logits[:, :1]).sum(dim=1) == 1).to(logits.dtype)
            accuracy = torch.zeros(kg, device=device).index_add_(0, segment, wins) / count
        return loss, accuracy
