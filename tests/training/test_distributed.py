"""Data-parallel training under torchrun (gloo on the CPU), and the GPU path's pure decisions.

Two real `torchrun --nproc_per_node=2` launches on a tiny audio corpus:

1. `train()` on two ranks, dumping every rank's weights after every step:
   both ranks hold identical weights after each step, and they match
   one process training on the same global batch (fp32, within float
   tolerance); the checkpoint the two ranks saved then resumes in one
   process and ends where an uninterrupted one-process run ends.
2. `cpc-embed train --resume` on two ranks continues a one-process
   checkpoint: the result matches one process again, and only rank 0 wrote
   the run folder (each curve row once).

This module is also the worker of launch 1 (`python -m tests.training.test_distributed`).
No GPU is needed: device choice, autocast dtype and backend are pure
functions, tested here for both CPU and CUDA inputs.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.training.tiny import tiny_config
from training.config import LossConfig
from training.device import choose_autocast, resolve_device
from training.distributed import (
    RankInfo,
    backend_for,
    per_rank_batch,
    rank_from_env,
    shard_rows,
)
from training.infonce import BatchShard, CPCCriterion, InfoNCE
from training.train import Trainer, train

REPO = Path(__file__).resolve().parents[2]
FIRST, TOTAL = 3, 6  # steps of the two-rank run, and of the whole run after resuming
Weights = dict[str, torch.Tensor]


def weights(trainer: Trainer) -> Weights:
    model = {f"model.{k}": v.detach().clone() for k, v in trainer.model.state_dict().items()}
    heads = {f"loss.{k}": v.detach().clone() for k, v in trainer.criterion.state_dict().items()}
    return {**model, **heads}


def assert_close(a: Weights, b: Weights, what: str) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=f"{what}: {key}")


def torchrun(args: list[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    """`torchrun --standalone --nproc_per_node=2 ARGS` from the venv's python, one thread each."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
        "TMPDIR": str(tmp),
    }
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*cmd, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def worker(argv: list[str]) -> None:
    """One rank of launch 1: train FIRST steps, save this rank's weights after each."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dumps", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    def dump(trainer: Trainer) -> None:
        name = f"rank{trainer.ranks.rank}-step{trainer.step_count}.pt"
        torch.save(weights(trainer), args.dumps / name)

    args.dumps.mkdir(parents=True, exist_ok=True)
    train(
        tiny_config("audio", steps=FIRST),
        args.data,
        args.out,
        progress=False,
        device="cpu",
        on_step=dump,
    )


@pytest.fixture(scope="module")
def one_process(
    corpora: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> list[Weights]:
    """The weights after steps 1..TOTAL of one process with the whole batch."""
    seen: list[Weights] = []
    run = tmp_path_factory.mktemp("single")
    train(
        tiny_config("audio", steps=TOTAL),
        corpora["audio"],
        run,
        progress=False,
        device="cpu",
        on_step=lambda t: seen.append(weights(t)),
    )
    return seen


def test_two_ranks_stay_identical_match_one_process_and_resume_with_one(
    corpora: dict[str, Path], one_process: list[Weights], tmp_path: Path
) -> None:
    run, dumps = tmp_path / "run", tmp_path / "dumps"
    worker_args = ["--data", str(corpora["audio"]), "--out", str(run), "--dumps", str(dumps)]
    torchrun(["-m", "tests.training.test_distributed", *worker_args], tmp_path)
    for step in range(1, FIRST + 1):
        rank0 = torch.load(dumps / f"rank0-step{step}.pt")
        rank1 = torch.load(dumps / f"rank1-step{step}.pt")
        for key in rank0:
            assert torch.equal(rank0[key], rank1[key]), f"ranks differ at step {step}: {key}"
        assert_close(rank0, one_process[step - 1], f"2 ranks vs 1 process, step {step}")
    assert torch.load(run / "checkpoint.pt", weights_only=False)["world_size"] == 2

    resumed = train(None, corpora["audio"], run, resume=True, steps=TOTAL, progress=False)
    assert resumed.ranks.world_size == 1 and resumed.step_count == TOTAL
    assert_close(weights(resumed), one_process[-1], "resumed with 1 process vs 1 process")


def test_cli_under_torchrun_resumes_a_one_process_run_and_only_rank0_writes(
    corpora: dict[str, Path], one_process: list[Weights], tmp_path: Path
) -> None:
    run = tmp_path / "run"
    train(tiny_config("audio", steps=FIRST), corpora["audio"], run, progress=False, device="cpu")
    cli = ["-m", "service.cli", "train", "--modality", "audio", "--data", str(corpora["audio"])]
    cli += ["--out", str(run), "--resume", "--steps", str(TOTAL), "--no-progress"]
    torchrun([*cli, "--device", "cpu"], tmp_path)

    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    assert (ckpt["step"], ckpt["world_size"]) == (TOTAL, 2)
    saved = {
        **{f"model.{k}": v for k, v in ckpt["model"].items()},
        **{f"loss.{k}": v for k, v in ckpt["criterion"].items()},
    }
    assert_close(saved, one_process[-1], "1 process then 2 ranks vs 1 process")
    with open(run / "curves.csv", newline="", encoding="utf-8") as fh:
        steps = [int(row["step"]) for row in csv.DictReader(fh)]
    assert steps == [2, FIRST, 4, TOTAL]  # log_every 2, each row once
    log = (run / "train.log").read_text(encoding="utf-8")
    assert "saved by 1 process(es), now 2" in log
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []


# --- the pieces, in one process ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("negatives", "num_negatives"), [("batch", None), ("batch", 5), ("sequence", 3)]
)
def test_infonce_over_shards_equals_the_whole_batch(
    negatives: str, num_negatives: int | None
) -> None:
    gen = torch.Generator().manual_seed(0)
    pred, targ = torch.randn(4, 6, 8, generator=gen), torch.randn(4, 6, 8, generator=gen)
    loss = InfoNCE(negatives, num_negatives)
    torch.manual_seed(1)
    whole = loss(pred, targ)
    parts = []
    for first in (0, 2):  # two ranks of two sequences; each draws as the whole batch would
        torch.manual_seed(1)
        mine = slice(first, first + 2)
        cands = targ if negatives == "batch" else targ[mine]
        parts.append(loss(pred[mine], cands, first=first, total=4))
    assert parts[0].num_candidates == whole.num_candidates
    torch.testing.assert_close((parts[0].loss + parts[1].loss) / 2, whole.loss)
    torch.testing.assert_close((parts[0].accuracy + parts[1].accuracy) / 2, whole.accuracy)


def test_criterion_gathers_candidates_only_when_asked() -> None:
    gen = torch.Generator().manual_seed(0)
    z, c = torch.randn(4, 10, 8, generator=gen), torch.randn(4, 10, 8, generator=gen)
    crit = CPCCriterion(8, 8, LossConfig(prediction_steps=3))
    whole = crit(z, c)
    gathered = [crit(z[f : f + 2], c[f : f + 2], BatchShard(f, 4, lambda _: z)) for f in (0, 2)]
    torch.testing.assert_close((gathered[0].loss + gathered[1].loss) / 2, whole.loss)
    local = crit(z[:2], c[:2], BatchShard(0, 4, None))
    torch.testing.assert_close(local.loss, crit(z[:2], c[:2]).loss)  # own rank's candidates only
    with pytest.raises(ValueError, match="not in a batch of 4"):
        crit(z[:2], c[:2], BatchShard(3, 4, None))


def test_each_rank_takes_its_slice_of_the_global_batch() -> None:
    batch = torch.arange(24).reshape(8, 3).numpy()
    halves = [shard_rows(batch, RankInfo(r, 2, r)).tolist() for r in (0, 1)]
    assert halves[0] + halves[1] == batch.tolist()
    assert per_rank_batch(8, 4) == 2
    with pytest.raises(ValueError, match="multiple of the 3 processes"):
        per_rank_batch(8, 3)


def test_rank_from_torchrun_environment() -> None:
    assert rank_from_env({}) == RankInfo(0, 1, 0)
    info = rank_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (info.rank, info.world_size, info.local_rank, info.is_main) == (3, 4, 1, False)
    with pytest.raises(ValueError, match="inconsistent"):
        rank_from_env({"RANK": "4", "WORLD_SIZE": "4"})


def test_device_choice() -> None:
    assert resolve_device("auto", 0) == torch.device("cpu")
    assert resolve_device("auto", 2, local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cpu", 8) == torch.device("cpu")
    assert resolve_device("cuda", 1) == torch.device("cuda", 0)
    with pytest.raises(ValueError, match="sees no CUDA GPU"):
        resolve_device("cuda", 0)
    with pytest.raises(ValueError, match="only 2 are visible"):
        resolve_device("auto", 2, local_rank=2)
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu", 0)


def test_backend_follows_the_device() -> None:
    assert backend_for(torch.device("cuda", 0)) == "nccl"
    assert backend_for(torch.device("cpu")) == "gloo"


def test_autocast_dtype_per_device() -> None:
    bf16 = torch.bfloat16
    assert choose_autocast("auto", "cuda", native_bf16=True) == bf16
    assert choose_autocast("auto", "cuda", native_bf16=False) is None
    assert choose_autocast("auto", "cpu", native_bf16=False) is None
    assert choose_autocast("auto", "cpu", native_bf16=True) == bf16
    assert choose_autocast("fp32", "cuda", native_bf16=True) is None
    assert choose_autocast("bf16", "cpu", native_bf16=False) == bf16
    with pytest.raises(ValueError, match="needs a GPU with bf16"):
        choose_autocast("bf16", "cuda", native_bf16=False)


def test_cuda_on_a_machine_without_one_is_a_clear_error(
    corpora: dict[str, Path], tmp_path: Path
) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        train(tiny_config("audio", steps=1), corpora["audio"], tmp_path, device="cuda")


if __name__ == "__main__":
    worker(sys.argv[1:])
