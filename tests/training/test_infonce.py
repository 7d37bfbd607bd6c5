"""InfoNCE and CPCCriterion against a naive loop written from the paper's formula."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from training.config import LossConfig
from training.infonce import CPCCriterion, InfoNCE


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
