"""InfoNCE and CPCCriterion against a naive loop written from the paper's formula."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from training.config import LossConfig
from training.infonce import BatchShard, CPCCriterion, InfoNCE, draw_negatives


def naive_infonce(pred: Tensor, targ: Tensor, negatives: str) -> float:
    """-log(exp(f_pos) / sum_j exp(f_j)) averaged over every (b, t), in float64 Python loops."""
    b_size, t_size, _ = pred.shape
    p, y = pred.double(), targ.double()
    total, count = 0.0, 0
    for b in range(b_size):
        for t in range(t_size):
            if negatives == "batch":
                cands = [(b2, t2) for b2 in range(b_size) for t2 in range(t_size)]
            else:
                cands = [(b, t2) for t2 in range(t_size)]
            scores = [float(p[b, t] @ y[b2, t2]) for b2, t2 in cands]
            f_pos = float(p[b, t] @ y[b, t])
            denom = sum(math.exp(s) for s in scores)
            total += -math.log(math.exp(f_pos) / denom)
            count += 1
    return total / count


@pytest.mark.parametrize("negatives", ["batch", "sequence"])
def test_matches_naive_loop(negatives: str) -> None:
    gen = torch.Generator().manual_seed(0)
    pred = torch.randn(3, 5, 8, generator=gen) * 0.5
    targ = torch.randn(3, 5, 8, generator=gen) * 0.5
    out = InfoNCE(negatives)(pred, targ)
    assert out.loss.item() == pytest.approx(naive_infonce(pred, targ, negatives), abs=1e-5)
    assert out.num_candidates == (15 if negatives == "batch" else 5)


@pytest.mark.parametrize(("negatives", "n_expected"), [("batch", 12), ("sequence", 4)])
def test_uniform_scores_give_log_n(negatives: str, n_expected: int) -> None:
    pred = torch.zeros(3, 4, 6)
    targ = torch.randn(3, 4, 6)
    out = InfoNCE(negatives)(pred, targ)
    assert out.num_candidates == n_expected
    assert out.loss.item() == pytest.approx(math.log(n_expected), abs=1e-6)
    assert out.accuracy.item() == 0.0  # ties are not a win


@pytest.mark.parametrize("negatives", ["batch", "sequence"])
@pytest.mark.parametrize("num_negatives", [None, 5])
def test_aligned_predictions_are_all_correct(negatives: str, num_negatives: int | None) -> None:
    targ = (torch.eye(12) * 10.0).reshape(3, 4, 12)  # distinct one-hot targets
    out = InfoNCE(negatives, num_negatives)(targ.clone(), targ)
    assert out.accuracy.item() == 1.0


def test_fp32_under_autocast() -> None:
    pred, targ = torch.randn(2, 6, 8), torch.randn(2, 6, 8)
    expected = InfoNCE()(pred, targ).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = InfoNCE()(pred.bfloat16(), targ.bfloat16()).loss
    assert got.dtype == torch.float32
    expected_bf = InfoNCE()(pred.bfloat16().float(), targ.bfloat16().float()).loss
    assert got.item() == pytest.approx(expected_bf.item(), abs=1e-5)
    assert got.item() == pytest.approx(expected.item(), abs=0.1)


@pytest.mark.parametrize(
    ("kwargs", "pred_shape", "targ_shape"),
    [
        ({"negatives": "other"}, (2, 3, 4), (2, 3, 4)),
        ({"num_negatives": 0}, (2, 3, 4), (2, 3, 4)),
        ({"num_negatives": -2}, (2, 3, 4), (2, 3, 4)),
        ({}, (6, 4), (6, 4)),
        ({}, (2, 3, 4, 1), (2, 3, 4, 1)),
        ({}, (2, 3, 4), (2, 4, 4)),
        ({}, (2, 3, 4), (2, 3, 5)),
        ({}, (2, 0, 4), (2, 0, 4)),
        ({}, (0, 3, 4), (0, 3, 4)),
        ({"negatives": "sequence"}, (4, 1, 4), (4, 1, 4)),
        ({"negatives": "batch"}, (1, 1, 4), (1, 1, 4)),
        ({"negatives": "batch", "num_negatives": 3}, (1, 1, 4), (1, 1, 4)),
    ],
)
def test_bad_arguments_raise(
    kwargs: dict[str, object], pred_shape: tuple[int, ...], targ_shape: tuple[int, ...]
) -> None:
    with pytest.raises(ValueError):
        loss = InfoNCE(**kwargs)  # type: ignore[arg-type]
        loss(torch.randn(pred_shape), torch.randn(targ_shape))


@pytest.mark.parametrize("negatives", ["batch", "sequence"])
def test_sampled_negatives(negatives: str) -> None:
    torch.manual_seed(0)
    out = InfoNCE(negatives, num_negatives=7)(torch.randn(3, 5, 8), torch.randn(3, 5, 8))
    assert out.num_candidates == 8
    assert torch.isfinite(out.loss)


def test_sampled_negatives_come_from_the_right_pool() -> None:
    """One-hot targets: a positive scores 1, own-sequence negatives 0, other sequences -1."""
    torch.manual_seed(1)
    b, t, n = 3, 4, 20
    targ = torch.eye(b * t).reshape(b, t, b * t)
    # batch: the positive itself is never drawn, so every negative scores exactly 0
    out = InfoNCE("batch", num_negatives=n)(targ.clone(), targ)
    assert out.loss.item() == pytest.approx(math.log(math.e + n) - 1.0, abs=1e-5)
    # sequence: subtract the other sequences' targets; a negative from them would score -1
    pred = targ.clone()
    for i in range(b):
        pred[i] -= targ[[j for j in range(b) if j != i]].sum(dim=(0, 1))
    out = InfoNCE("sequence", num_negatives=n)(pred, targ)
    assert out.loss.item() == pytest.approx(math.log(math.e + n) - 1.0, abs=1e-5)


@pytest.mark.parametrize("num_negatives", [None, 4])
def test_gradient_flows(num_negatives: int | None) -> None:
    pred = torch.randn(2, 5, 8, requires_grad=True)
    targ = torch.randn(2, 5, 8, requires_grad=True)
    InfoNCE(num_negatives=num_negatives)(pred, targ).loss.backward()
    for g in (pred.grad, targ.grad):
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


def test_criterion_sequence() -> None:
    cfg = LossConfig(prediction_steps=3, min_step=1)
    crit = CPCCriterion(context_dim=6, encoder_dim=8, loss_cfg=cfg)
    assert len(crit.heads) == 3
    z, c = torch.randn(2, 8, 8), torch.randn(2, 8, 6, requires_grad=True)
    out = crit(z, c)
    assert set(out.accuracy) == {1, 2, 3}
    assert torch.isfinite(out.loss) and out.loss.dim() == 0
    expected = sum(math.log(2 * (8 - k)) - out.loss_per_step[k] for k in (1, 2, 3)) / 3
    assert out.mi_bound == pytest.approx(expected)
    out.loss.backward()
    assert c.grad is not None and all(h.weight.grad is not None for h in crit.heads)


def test_criterion_grid_moves_down_rows() -> None:
    cfg = LossConfig(prediction_steps=3, min_step=2)
    crit = CPCCriterion(context_dim=6, encoder_dim=8, loss_cfg=cfg)
    z, c = torch.randn(2, 5, 1, 8), torch.randn(2, 5, 1, 6)
    grid = crit(z, c)
    assert set(grid.accuracy) == {2, 3}
    seq = crit(z.squeeze(2), c.squeeze(2))  # one column: the grid is a sequence of rows
    assert grid.loss.item() == pytest.approx(seq.loss.item(), abs=1e-6)
    out = crit(torch.randn(2, 5, 4, 8), torch.randn(2, 5, 4, 6))
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("shape", [(2, 3), (2, 2, 4)])
def test_criterion_rejects_short_sequences(shape: tuple[int, ...]) -> None:
    crit = CPCCriterion(4, 4, LossConfig(prediction_steps=3))
    with pytest.raises(ValueError, match="too short"):
        crit(torch.randn(*shape, 4), torch.randn(*shape, 4))


# --- CPCCriterion scores every k at once: the same loss as a loop over k ----------------------


def loop_over_k(crit: CPCCriterion, z: Tensor, c: Tensor) -> Tensor:
    """[K] per-step losses, each from `InfoNCE` called for its own k: the criterion's definition.

    For a grid [B, R, Cc, D], step k moves k rows down and the positions are flattened.
    """
    batch, length = z.shape[:2]
    losses = []
    for k, head in zip(crit.steps, crit.heads, strict=True):
        pred, targ = head(c[:, : length - k]), z[:, k:]
        losses.append(
            crit.infonce(
                pred.reshape(batch, -1, pred.shape[-1]), targ.reshape(batch, -1, targ.shape[-1])
            ).loss
        )
    return torch.stack(losses)


def naive_sampled(crit: CPCCriterion, z: Tensor, c: Tensor, seed: int) -> dict[int, float]:
    """k -> loss in float64 Python loops, over the negatives `draw_negatives` gives after `seed`.

    One draw per k in step order, as the criterion draws: negatives="batch" indexes the
    B*(T-k) targets of step k, sequence-major; negatives="sequence" the T-k of row's own sequence.
    """
    n = crit.infonce.num_negatives
    assert n is not None
    torch.manual_seed(seed)
    b_size, length, _ = z.shape
    z64, c64 = z.double(), c.double()
    out = {}
    for k, head in zip(crit.steps, crit.heads, strict=True):
        kept = length - k
        rows = torch.arange(b_size * kept)
        if crit.infonce.negatives == "batch":
            idx = draw_negatives(b_size * kept, rows, n, kept, 0, b_size)
        else:
            idx = draw_negatives(kept, rows % kept, n, kept, 0, b_size)
        total = 0.0
        for r in range(b_size * kept):
            b, t = divmod(r, kept)
            p = head.weight.detach().double() @ c64[b, t]
            f_pos = float(p @ z64[b, t + k])
            f_neg = []
            for j in idx[r].tolist():
                b2, t2 = divmod(j, kept) if crit.infonce.negatives == "batch" else (b, j)
                assert (b2, t2) != (b, t)  # never the positive
                f_neg.append(float(p @ z64[b2, t2 + k]))
            total += math.log(sum(math.exp(f) for f in [f_pos, *f_neg])) - f_pos
        out[k] = total / (b_size * kept)
    return out


@pytest.mark.parametrize("negatives", ["batch", "sequence"])
def test_criterion_sampled_matches_naive_loop_on_the_drawn_negatives(negatives: str) -> None:
    cfg = LossConfig(prediction_steps=4, min_step=1, negatives=negatives, num_negatives=6)  # type: ignore[arg-type]
    torch.manual_seed(0)
    crit = CPCCriterion(context_dim=5, encoder_dim=7, loss_cfg=cfg)
    z, c = torch.randn(3, 9, 7) * 0.5, torch.randn(3, 9, 5) * 0.5
    expected = naive_sampled(crit, z, c, seed=3)
    torch.manual_seed(3)
    out = crit(z, c)
    assert out.loss_per_step == pytest.approx(expected, abs=1e-5)
    assert out.loss.item() == pytest.approx(sum(expected.values()) / 4, abs=1e-5)


@pytest.mark.parametrize("negatives", ["batch", "sequence"])
@pytest.mark.parametrize("num_negatives", [None, 5])
@pytest.mark.parametrize(("shape", "min_step"), [((3, 9), 1), ((2, 6, 3), 2)])
@pytest.mark.parametrize("budget", [CPCCriterion.score_budget, 1])  # one group; a group per k
def test_criterion_equals_infonce_per_k(
    negatives: str, num_negatives: int | None, shape: tuple[int, ...], min_step: int, budget: int
) -> None:
    """Loss, per-k losses and accuracies, and every gradient, as a loop calling InfoNCE per k."""
    cfg = LossConfig(
        prediction_steps=4,
        min_step=min_step,
        negatives=negatives,  # type: ignore[arg-type]
        num_negatives=num_negatives,
    )
    torch.manual_seed(0)
    crit = CPCCriterion(context_dim=6, encoder_dim=8, loss_cfg=cfg)
    crit.score_budget = budget
    z = torch.randn(*shape, 8, requires_grad=True)
    c = torch.randn(*shape, 6, requires_grad=True)
    inputs = [z, c, *crit.heads.parameters()]
    torch.manual_seed(5)  # the same draws in both
    fast = crit(z, c)
    fast_grads = torch.autograd.grad(fast.loss, inputs)
    torch.manual_seed(5)
    loop = loop_over_k(crit, z, c)
    loop_grads = torch.autograd.grad(loop.mean(), inputs)
    torch.testing.assert_close(fast.loss, loop.mean(), atol=1e-6, rtol=1e-6)
    assert list(fast.loss_per_step.values()) == pytest.approx(loop.tolist(), abs=1e-6)
    for got, want in zip(fast_grads, loop_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("negatives", ["batch", "sequence"])
@pytest.mark.parametrize("num_negatives", [None, 5])
def test_criterion_accuracy_equals_infonce_per_k(negatives: str, num_negatives: int | None) -> None:
    cfg = LossConfig(prediction_steps=3, negatives=negatives, num_negatives=num_negatives)  # type: ignore[arg-type]
    torch.manual_seed(0)
    crit = CPCCriterion(context_dim=8, encoder_dim=8, loss_cfg=cfg)
    for head in crit.heads:  # predictions near their targets, so accuracies are neither 0 nor 1
        head.weight.data = torch.eye(8) + 0.3 * torch.randn(8, 8)
    z = torch.randn(3, 10, 8)
    c = torch.cat([z[:, 1:], z[:, -1:]], dim=1) + 0.5 * torch.randn(3, 10, 8)
    torch.manual_seed(2)
    fast = crit(z, c)
    torch.manual_seed(2)
    expected = []
    for k, head in zip(crit.steps, crit.heads, strict=True):
        expected.append(crit.infonce(head(c[:, : 10 - k]), z[:, k:]).accuracy.item())
    assert list(fast.accuracy.values()) == pytest.approx(expected, abs=1e-6)
    assert 0 < sum(expected) < len(expected)


@pytest.mark.parametrize("negatives", ["batch", "sequence"])
def test_criterion_sampled_over_shards_equals_the_whole_batch(negatives: str) -> None:
    cfg = LossConfig(prediction_steps=3, negatives=negatives, num_negatives=4)  # type: ignore[arg-type]
    torch.manual_seed(0)
    crit = CPCCriterion(8, 8, cfg)
    z, c = torch.randn(4, 10, 8), torch.randn(4, 10, 8)
    torch.manual_seed(1)
    whole = crit(z, c)
    parts = []
    for first in (0, 2):  # each rank draws as the whole batch would and keeps its rows
        torch.manual_seed(1)
        gather = (lambda _: z) if negatives == "batch" else None
        parts.append(crit(z[first : first + 2], c[first : first + 2], BatchShard(first, 4, gather)))
    torch.testing.assert_close((parts[0].loss + parts[1].loss) / 2, whole.loss)


@pytest.mark.parametrize("num_negatives", [None, 16])
def test_criterion_scores_in_bf16_under_autocast_with_an_fp32_loss(
    num_negatives: int | None,
) -> None:
    cfg = LossConfig(prediction_steps=3, num_negatives=num_negatives)
    torch.manual_seed(0)
    crit = CPCCriterion(16, 16, cfg)
    z, c = torch.randn(4, 20, 16), torch.randn(4, 20, 16)
    torch.manual_seed(1)
    fp32 = crit(z, c)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = crit(z, c)
    assert bf16.loss.dtype == torch.float32 and torch.isfinite(bf16.loss)
    assert bf16.loss.item() != fp32.loss.item()  # the products did run in bf16
    assert bf16.loss.item() == pytest.approx(fp32.loss.item(), rel=0.02)


def test_criterion_syncs_with_the_host_once_per_call() -> None:
    """Per-k numbers come back in one transfer, not one .item()/float() per k."""
    crit = CPCCriterion(8, 8, LossConfig(prediction_steps=5, num_negatives=3))
    z, c = torch.randn(2, 10, 8), torch.randn(2, 10, 8)
    calls = []
    original = Tensor.tolist

    def counting(self: Tensor) -> object:
        calls.append(self.shape)
        return original(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Tensor, "tolist", counting)
        mp.setattr(Tensor, "item", lambda self: pytest.fail("item() in the criterion"))
        mp.setattr(Tensor, "__float__", lambda self: pytest.fail("float() in the criterion"))
        crit(z, c)
    assert calls == [torch.Size([2, 5])]
