"""Training throughput with 1 and 2 processes: `cpc-embed train` alone and under torchrun.

Run: `.venv/bin/python -m bench.train_scaling [--modalities audio image text] [--steps 6]`.
For each default config, on tiny synthetic folders (throughput does not
depend on the content), it runs the real command twice with the same global
batch: as one process with every core, as one process with one thread, and
as `torchrun --nproc_per_node=2` (gloo, DistributedDataParallel) with half
the cores per process (OMP_NUM_THREADS). The load average before each run is
recorded: on a shared machine it says how much the figures can be trusted.
Each run trains 2 x `--steps` steps and logs a curve row every `--steps`:
the first window holds the warm-up, the second is the measurement
(`examples_per_s` of curves.csv: global examples over the time rank 0 spent
in training steps, waiting for the other rank included).
Writes bench/results/train_scaling.json and .md.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.machine import machine_info, machine_line, setup_logging, write_results
from tests.conftest import make_audio_folder, make_image_folder, make_text_folder

logger = logging.getLogger(__name__)
RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parent.parent
STEP_SCALE = {"audio": 1, "image": 1, "text": 4}  # text steps are short: measure more of them


def make_folder(modality: str, root: Path) -> Path:
    if modality == "audio":
        return make_audio_folder(root / "audio", files=8, seconds=3.0)
    if modality == "image":
        return make_image_folder(root / "image", files=64, size=72)
    return make_text_folder(root / "text", files=40, sentences=30)


def command(processes: int, modality: str, data: Path, run: Path, cfg: Path) -> list[str]:
    train = ["-m", "service.cli", "train", "--modality", modality, "--data", str(data)]
    train += ["--out", str(run), "--config", str(cfg), "--no-progress", "--device", "cpu"]
    if processes == 1:
        return [sys.executable, *train]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return [*launcher, f"--nproc_per_node={processes}", *train]


def layouts() -> list[tuple[int, int]]:
    """(processes, threads per process) to compare."""
    cores = os.cpu_count() or 1
    return [(1, cores), (1, 1), (2, max(1, cores // 2))]


def measure(
    modality: str, processes: int, threads: int, data: Path, root: Path, steps: int
) -> dict[str, Any]:
    run = root / f"run-{modality}-{processes}x{threads}"
    cfg = root / f"{modality}.json"
    overrides = {"log_every": steps, "checkpoint_every": 2 * steps, "optim": {"steps": 2 * steps}}
    cfg.write_text(json.dumps(overrides), encoding="utf-8")
    load = os.getloadavg()[0]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    proc = subprocess.run(
        command(processes, modality, data, run, cfg),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{modality} x{processes} failed:\n{proc.stderr[-4000:]}")
    with open(run / "curves.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    return {
        "modality": modality,
        "processes": processes,
        "threads_per_process": threads,
        "global_batch": config["optim"]["batch_size"],
        "precision": config["precision"],
        "steps_measured": steps,
        "examples_per_s": float(rows[-1]["examples_per_s"]),
        "warmup_examples_per_s": float(rows[0]["examples_per_s"]),
        "command_wall_s": round(wall, 1),
        "load_average_before": round(load, 2),
    }


def to_markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Training throughput: 1 process vs torchrun with 2 (gloo, CPU)",
        "",
        f"{machine_line(m, 'torch')}. Default configs, the same global batch in both runs; "
        "one process uses every core, each of the two uses half (OMP_NUM_THREADS).",
        "",
        "| config | global batch | processes x threads | examples/s | vs 1 x all cores "
        "| vs 1 x 1 thread | load average before |",
        "|---|---|---|---|---|---|---|",
    ]

    def baseline(modality: str, threads: int) -> dict[str, Any] | None:
        return next(
            (
                r
                for r in report["results"]
                if (r["modality"], r["processes"], r["threads_per_process"])
                == (modality, 1, threads)
            ),
            None,
        )

    for r in report["results"]:
        ratios = []
        for base in (baseline(r["modality"], m["cpu_count"]), baseline(r["modality"], 1)):
            ratios.append(f"{r['examples_per_s'] / base['examples_per_s']:.2f}x" if base else "")
        lines.append(
            f"| {r['modality']} default | {r['global_batch']} | {r['processes']} x "
            f"{r['threads_per_process']} | {r['examples_per_s']} | {ratios[0]} | {ratios[1]} | "
            f"{r['load_average_before']} |"
        )
    lines += ["", report["note"], ""]
    return "\n".join(lines)


NOTE = (
    "Short runs (a few steps per window); the load average column says how busy the machine "
    "was. On 2 cores, two processes have no more compute than one process with two threads; "
    "what the comparison shows is the cost of DistributedDataParallel (gradient all-reduce, "
    "negatives gathered across ranks, every rank drawing the global batch) against intra-op "
    "threading, which is what a multi-GPU or multi-machine run pays on top of its speed-up."
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--modalities", nargs="+", default=["audio", "image", "text"])
    parser.add_argument("--steps", type=int, default=6, help="steps per window (x4 for text)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--note", default=NOTE)
    args = parser.parse_args(argv)
    setup_logging()
    results = []
    with tempfile.TemporaryDirectory(prefix="cpc-scaling-") as tmp:
        root = Path(tmp)
        for modality in args.modalities:
            data = make_folder(modality, root)
            for processes, threads in layouts():
                steps = args.steps * STEP_SCALE[modality]
                row = measure(modality, processes, threads, data, root, steps)
                logger.info("%s", row)
                results.append(row)
    report = {"machine": machine_info(), "results": results, "note": args.note}
    write_results(args.out, "train_scaling", report, to_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
