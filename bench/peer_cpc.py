"""One optimiser step of the reference CPC trainer (facebookresearch/CPC_audio) against ours.

Run: `OMP_NUM_THREADS=2 .venv/bin/python -m bench.peer_cpc --reference DIR [--rounds 3]`,
DIR being a checkout of https://github.com/facebookresearch/CPC_audio (nothing of it is
copied here; it is imported from DIR in a process of its own). Both run the paper's audio
configuration: batch 8 x 20,480 samples at 16 kHz, a 5-layer strided conv encoder of 512
channels (z: 512), a GRU of 256, linear W_k for k = 1..12, 128 negatives, Adam(W) at 2e-4.

Variants, each in a worker process of its own that builds its model once and then takes
one step whenever the parent asks; the parent asks them in turn, round after round (the
order reversed every other round), so a change in the machine's load falls on all of them
alike and each round compares steps taken within seconds of each other:

- the reference as its `cpc/train.py` builds it (`--arMode GRU --rnnMode linear
  --hiddenEncoder 512 --hiddenGar 256 --normMode layerNorm`, uniform sampling), with
  the body of its `trainStep` (forward, summed per-k losses, backward, Adam step, the
  losses and accuracies copied to the host for its logs), in fp32 as it trains;
  optionally (`--reference-bf16`) the same step under bf16 autocast, which CPC_audio
  itself does not offer;
- ours: `Trainer.step()` of `training.train` (forward, loss, backward, gradient clipping,
  AdamW, scheduler) at `paper_config("audio")`, with the paper's 128 sampled negatives
  (`loss.num_negatives = 128`) and with all in-batch candidates (the default), in fp32
  and under bf16 autocast.

CPC_audio imports `torchaudio` and `progressbar` at module level without using them on
this path; the reference's process puts empty stand-ins for those two modules in
`sys.modules` (and only there). Each worker takes `--warmup` untimed steps first; every
step gets a fresh random batch. Writes bench/results/peer_cpc.json and .md with the
machine, threads and the load average of every round.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from bench.machine import machine_info, machine_line, setup_logging, write_results

logger = logging.getLogger(__name__)
RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parent.parent
BATCH, WINDOW, CHANNELS, CONTEXT, STEPS_K, NEGATIVES = 8, 20480, 512, 256, 12, 128
TARGETS = {"ours-sampled-fp32": 4.0, "ours-sampled-bf16": 10.0}  # x the reference in fp32


# --- the children: one variant each, printing one JSON line -----------------------------------


def serve_steps(step: Callable[[], float]) -> None:
    """Worker loop: 'step' on stdin -> one timed step, its seconds and loss as a JSON line."""
    print(json.dumps({"ready": True, "torch_threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        started = time.perf_counter()
        loss = step()
        elapsed = time.perf_counter() - started
        print(json.dumps({"step_s": elapsed, "loss": loss}), flush=True)


def reference_step(reference: Path, bf16: bool) -> Callable[[], float]:
    """One CPC_audio training step at the paper's configuration, built by its own code."""
    for name in ("torchaudio", "progressbar"):  # imported at module level, unused here
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.path.insert(0, str(reference))
    import cpc.criterion as cr  # type: ignore[import-not-found]
    import cpc.feature_loader as fl  # type: ignore[import-not-found]
    from cpc.cpc_default_config import get_default_cpc_config  # type: ignore[import-not-found]
    from cpc.model import CPCModel  # type: ignore[import-not-found]

    args = get_default_cpc_config()
    args.hiddenEncoder, args.hiddenGar, args.arMode, args.rnnMode = (
        CHANNELS,
        CONTEXT,
        "GRU",
        "linear",
    )
    args.normMode, args.samplingType, args.sizeWindow = "layerNorm", "uniform", WINDOW
    args.nPredicts, args.negativeSamplingExt = STEPS_K, NEGATIVES
    torch.manual_seed(0)
    model = CPCModel(fl.getEncoder(args), fl.getAR(args))
    # as cpc/train.py's getCriterion builds the unsupervised criterion
    criterion = cr.CPCUnsupersivedCriterion(
        args.nPredicts,
        args.hiddenGar,
        args.hiddenEncoder,
        args.negativeSamplingExt,
        mode=args.cpc_mode,
        rnnMode=args.rnnMode,
        dropout=args.dropout,
        nSpeakers=1,
        speakerEmbedding=args.speakerEmbedding,
        sizeInputSeq=args.sizeWindow // model.gEncoder.DOWNSAMPLING,
    )
    params = list(criterion.parameters()) + list(model.parameters())
    optimizer = torch.optim.Adam(
        params, lr=args.learningRate, betas=(args.beta1, args.beta2), eps=args.epsilon
    )
    model.train()
    criterion.train()
    label = torch.zeros(BATCH, dtype=torch.long)

    def step() -> float:
        # the body of cpc/train.py's trainStep, on the CPU
        batch = torch.randn(BATCH, 1, WINDOW) * 0.1
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            c_feature, encoded_data, lab = model(batch, label)
            all_losses, all_acc = criterion(c_feature, encoded_data, lab)
        all_losses.sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        losses = all_losses.mean(dim=0).detach().cpu().numpy()  # its per-step logs
        all_acc.mean(dim=0).cpu().numpy()
        return float(np.mean(losses))

    return step


class _RandomCrops:
    """Stands in for the training set: fresh random crops (the step does not depend on them)."""

    def sample(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        return (0.1 * rng.standard_normal((batch_size, WINDOW))).astype(np.float32)


def ours_step(negatives: int | None, precision: str) -> Callable[[], float]:
    """`Trainer.step()` at the paper's audio configuration."""
    from training.config import paper_config
    from training.data import Datasets
    from training.train import build_trainer

    cfg = paper_config("audio")
    cfg.loss.num_negatives = negatives
    cfg.precision = precision  # type: ignore[assignment]
    model = cfg.model
    assert (cfg.data.window, cfg.optim.batch_size, cfg.loss.prediction_steps) == (
        WINDOW,
        BATCH,
        STEPS_K,
    )
    assert (getattr(model, "channels", None), getattr(model, "context_dim", None)) == (
        CHANNELS,
        CONTEXT,
    )
    data = Datasets(train=cast(Any, _RandomCrops()), val=None, description={})
    trainer = build_trainer(cfg, data)
    assert (trainer.amp is not None) == (precision == "bf16")

    def step() -> float:
        out = trainer.step()
        return sum(out.loss_per_step.values()) / len(out.loss_per_step)

    return step


def child(args: argparse.Namespace) -> int:
    if args.child == "reference":
        step = reference_step(args.reference, bf16=args.precision == "bf16")
    else:
        step = ours_step(None if args.negatives == 0 else args.negatives, args.precision)
    serve_steps(step)
    return 0


# --- the parent: alternate the variants, summarise -------------------------------------------


def variants(reference_bf16: bool) -> list[dict[str, Any]]:
    rows = [
        {
            "name": "reference-fp32",
            "impl": "reference",
            "precision": "fp32",
            "negatives": NEGATIVES,
        },
        {"name": "ours-sampled-fp32", "impl": "ours", "precision": "fp32", "negatives": NEGATIVES},
        {"name": "ours-sampled-bf16", "impl": "ours", "precision": "bf16", "negatives": NEGATIVES},
        {"name": "ours-all-fp32", "impl": "ours", "precision": "fp32", "negatives": 0},
        {"name": "ours-all-bf16", "impl": "ours", "precision": "bf16", "negatives": 0},
    ]
    if reference_bf16:
        rows.insert(1, {**rows[0], "name": "reference-bf16", "precision": "bf16"})
    return rows


class Worker:
    """One variant's process, stepping on request."""

    def __init__(self, variant: dict[str, Any], reference: Path) -> None:
        self.name = variant["name"]
        cmd = [sys.executable, "-m", "bench.peer_cpc", "--child", variant["impl"]]
        cmd += ["--precision", variant["precision"], "--negatives", str(variant["negatives"])]
        cmd += ["--reference", str(reference)]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.torch_threads = self._read()["torch_threads"]

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} exited with {self.proc.wait()} (its stderr is above)")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def step(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def alternate(
    plan: list[dict[str, Any]], reference: Path, warmup: int, rounds: int
) -> tuple[dict[str, list[float]], dict[str, float], list[list[float]], int]:
    """Step every variant in turn for `rounds` rounds: per variant its step times and the
    loss of its first step; the load average before each round; torch's thread count."""
    workers = []
    try:
        for variant in plan:
            workers.append(Worker(variant, reference))
            logger.info("%s ready", variant["name"])
        first_loss = {w.name: w.step()["loss"] for w in workers}  # before any update
        for _ in range(warmup - 1):
            for w in workers:
                w.step()
        times: dict[str, list[float]] = {w.name: [] for w in workers}
        loads = []
        for round_ in range(rounds):
            loads.append([round(x, 2) for x in os.getloadavg()])
            for w in workers if round_ % 2 == 0 else workers[::-1]:
                times[w.name].append(w.step()["step_s"])
            logger.info("round %d: %s", round_ + 1, {k: round(v[-1], 3) for k, v in times.items()})
        return times, first_loss, loads, workers[0].torch_threads
    finally:
        for w in workers:
            w.close()


def _git_revision(path: Path) -> str | None:
    proc = subprocess.run(
        ["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    return (proc.stdout.strip() or None) if proc.returncode == 0 else None


def summarise(times: dict[str, list[float]], first_loss: dict[str, float]) -> list[dict[str, Any]]:
    """Per variant: median and min s/step, and its speed against the reference in fp32, both
    as a ratio of medians and as the median of the ratios within each round."""
    base = times["reference-fp32"]
    rows = []
    for name, ts in times.items():
        paired = [b / t for b, t in zip(base, ts, strict=True)]
        rows.append(
            {
                "variant": name,
                "step_s_median": round(statistics.median(ts), 3),
                "step_s_min": round(min(ts), 3),
                "step_s": [round(t, 3) for t in ts],
                "vs_reference_fp32": round(statistics.median(base) / statistics.median(ts), 2),
                "vs_reference_fp32_per_round_median": round(statistics.median(paired), 2),
                "loss_at_start": round(first_loss[name], 4),
            }
        )
    return rows


LABELS = {
    "reference-fp32": "facebookresearch/CPC_audio, fp32",
    "reference-bf16": "facebookresearch/CPC_audio under bf16 autocast (not offered by it)",
    "ours-sampled-fp32": "ours, 128 sampled negatives, fp32",
    "ours-sampled-bf16": "ours, 128 sampled negatives, bf16 autocast",
    "ours-all-fp32": "ours, all in-batch candidates, fp32",
    "ours-all-bf16": "ours, all in-batch candidates, bf16 autocast",
}


def to_markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    cfg = report["config"]
    loads = [lo[0] for lo in report["load_average_per_round"]]
    lines = [
        "# Training step against the reference CPC trainer (facebookresearch/CPC_audio)",
        "",
        f"{machine_line(m, 'torch')}; {report['torch_threads']} torch threads. "
        f"The paper's audio configuration: batch {cfg['batch']} x {cfg['window']:,} samples, "
        f"{cfg['channels']} channels, GRU {cfg['context']}, k = 1..{cfg['steps_k']}, "
        f"{cfg['negatives']} negatives where sampled. Reference at "
        f"{report['reference']['revision'] or 'an unrecorded revision'}. Each variant in a "
        f"worker process of its own, {report['warmup']} untimed step(s) each, then "
        f"{report['rounds']} rounds of one step per variant in turn; 1-minute load average "
        f"{min(loads):.2f} to {max(loads):.2f} before the rounds "
        f"({report['load_average_after'][0]:.2f} after).",
        "",
        "| implementation | s/step, median | min | vs reference fp32 (medians) "
        "| vs reference fp32, median of rounds | loss at start |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {LABELS[r['variant']]} | {r['step_s_median']:.3f} | {r['step_s_min']:.3f} "
            f"| {r['vs_reference_fp32']:.2f}x | {r['vs_reference_fp32_per_round_median']:.2f}x "
            f"| {r['loss_at_start']} |"
        )
    lines += ["", "Targets (issue 16), against the reference in fp32:", ""]
    for name, target in report["targets"].items():
        row = next(r for r in report["results"] if r["variant"] == name)
        got = min(row["vs_reference_fp32"], row["vs_reference_fp32_per_round_median"])
        verdict = "met" if got >= target else "NOT met"
        lines.append(
            f"- {LABELS[name]}: {got:.2f}x (the lower figure), target {target:g}x: {verdict}"
        )
    lines += ["", report["note"], ""]
    return "\n".join(lines)


NOTE = (
    "Loss at start: the mean over k of the per-step InfoNCE before the first update, about "
    f"log {NEGATIVES + 1} = {math.log(NEGATIVES + 1):.3f} with {NEGATIVES} negatives, about "
    "log of the pool with all candidates. The reference predicts T-12 positions for every k "
    "and shares its 128 negatives across the 12 steps; ours predicts T-k positions for step k "
    "and draws each step's negatives from that step's own targets, as the paper's loss reads."
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, required=True, help="a CPC_audio checkout")
    parser.add_argument("--reference-revision", help="recorded with the results (default: git)")
    parser.add_argument("--reference-bf16", action="store_true", help="also time it in bf16")
    parser.add_argument("--rounds", type=int, default=8, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per variant")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--note", default=NOTE)
    parser.add_argument("--child", choices=["reference", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--precision", choices=["fp32", "bf16"], help=argparse.SUPPRESS)
    parser.add_argument("--negatives", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.rounds < 1:
        parser.error("--warmup and --rounds must be >= 1")
    if args.child:
        return child(args)
    if not (args.reference / "cpc" / "criterion" / "criterion.py").is_file():
        parser.error(f"{args.reference} is not a CPC_audio checkout (no cpc/criterion/)")
    setup_logging()
    started = time.perf_counter()
    plan = variants(args.reference_bf16)
    times, first_loss, loads, threads = alternate(plan, args.reference, args.warmup, args.rounds)
    report = {
        "machine": machine_info(),
        "torch_threads": threads,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "reference": {
            "repository": "https://github.com/facebookresearch/CPC_audio",
            "revision": args.reference_revision or _git_revision(args.reference),
        },
        "config": {
            "batch": BATCH,
            "window": WINDOW,
            "channels": CHANNELS,
            "encoder_dim": CHANNELS,
            "context": CONTEXT,
            "steps_k": STEPS_K,
            "negatives": NEGATIVES,
        },
        "rounds": args.rounds,
        "warmup": args.warmup,
        "wall_s": round(time.perf_counter() - started, 1),
        "results": summarise(times, first_loss),
        "targets": TARGETS,
        "load_average_per_round": loads,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "note": args.note,
    }
    write_results(args.out, "peer_cpc", report, to_markdown(report))
    for row in report["results"]:
        logger.info("%s", row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
