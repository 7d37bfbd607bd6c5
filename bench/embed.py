"""Embedding throughput and latency: in-process onnxruntime, the running service, precisions.

Run: `.venv/bin/python -m bench.embed [--models-dir models] [--duration 10] [--out bench/results]
[--runs-dir runs]`. For every bundle of `--models-dir`, in one run so the numbers compare:

1. The ceiling: the bundle loaded in this process with the service's own
   `OnnxEncoder` (same session options and settings), inputs/s at batch 1 to
   32 on typical inputs (audio: 1 s and 4 s speech-like clips, WAV at 16 kHz;
   image: a 64x64 PNG; text: a 2-3 sentence paragraph), once for the model
   call alone (`OnnxEncoder.run` on prepared inputs: collation, onnxruntime,
   slicing) and once with decoding, preprocessing and pooling counted, done
   serially in one thread.
2. The service: `cpc-embed serve` in a subprocess (see `bench.serving`) under
   a closed-loop load of C = 1, 4, 16, 64 clients for `--duration` seconds
   each, one input per `POST /embed` (JSON, base64 for files); inputs/s,
   latency percentiles, errors, the mean inference batch from
   `cpc_inference_batch_size` and the CPU time of server and load generator.
   Only the first audio length is served.
3. Precision: torch eager (only with `--runs-dir`: the bundle has no torch
   weights, so the run's checkpoint.pt is loaded) vs onnxruntime fp32 vs the
   int8 `onnx.quantized_file`, the bare forward pass on the same
   collated batches, and the cosine of mean-pooled c between fp32 and the
   others.

Every CPC_* setting in the environment applies to both the in-process encoder
and the service. The load generator shares the machine's cores with the
service; its CPU time is reported. Writes embed.json, embed.md and embed.png
to `--out` and exits 1 if any request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import machine_line, setup_logging, write_results
from bench.serving import (
    ServiceProcess,
    batch_histogram,
    closed_loop,
    cpu_seconds,
    make_client,
    report_header,
)
from bench.workloads import request_body, typical_inputs
from service.config import DEFAULT_MODELS_DIR, Settings
from service.errors import BundleError
from service.inference.model import OnnxEncoder, Prepared
from service.inference.pooling import l2_normalize, pool
from service.inference.registry import bundle_folders

logger = logging.getLogger(__name__)
RESULTS = Path(__file__).parent / "results"
DISTINCT_INPUTS = 32
TARGETS = {
    "service_vs_inprocess": 0.85,
    "overhead_ms": 5.0,
    "quantized_speedup": 1.3,
    "quantized_cosine": 0.999,
}


@dataclass
class Workload:
    """Distinct inputs of one typical size for one bundle."""

    bundle: str
    modality: str
    label: str
    raws: list[bytes | str]
    served: bool


def workloads(encoder: OnnxEncoder, audio_seconds: Sequence[float]) -> list[Workload]:
    modality = encoder.modality
    if modality == "audio":
        return [
            Workload(
                encoder.name,
                modality,
                f"{seconds:g} s clip",
                typical_inputs("audio", DISTINCT_INPUTS, seconds),
                served=i == 0,
            )
            for i, seconds in enumerate(audio_seconds)
        ]
    label = "64x64 PNG" if modality == "image" else "2-3 sentences"
    return [
        Workload(encoder.name, modality, label, typical_inputs(modality, DISTINCT_INPUTS), True)
    ]


# -- timing ------------------------------------------------------------------------


def timed_calls(
    call: Callable[[], object], seconds: float, min_calls: int = 3, max_calls: int = 100_000
) -> list[float]:
    """Durations of back-to-back calls for about `seconds` (after one untimed warm-up call)."""
    call()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < max_calls and (
        len(times) < min_calls or time.perf_counter() - started < seconds
    ):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return times


def rate(times: list[float], batch: int) -> dict[str, float]:
    """inputs/s and the median call time of `timed_calls` output."""
    return {
        "calls": len(times),
        "inputs_per_s": round(batch * len(times) / sum(times), 2),
        "p50_ms": round(float(np.median(times)) * 1000, 3),
    }


# -- 1. the in-process ceiling ---------------------------------------------------------


def ceiling(
    encoder: OnnxEncoder, work: Workload, batches: Sequence[int], seconds: float
) -> list[dict[str, Any]]:
    rows = []
    for batch in batches:
        raws = [work.raws[i % len(work.raws)] for i in range(batch)]
        prepared = [encoder.prepare(raw) for raw in raws]

        def full(raws: list[bytes | str] = raws) -> None:
            for _, c in encoder.run([encoder.prepare(raw) for raw in raws]):
                l2_normalize(pool(c, "mean"))

        model_only = rate(timed_calls(functools.partial(encoder.run, prepared), seconds), batch)
        with_pre = rate(timed_calls(full, seconds), batch)
        row = {"batch": batch, "model_only": model_only, "with_preprocess": with_pre}
        rows.append(row)
        logger.info("%s %s in-process %s", work.bundle, work.label, row)
    return rows


# -- 2. the service ------------------------------------------------------------------


async def service_levels(
    service: ServiceProcess,
    work: Workload,
    levels: Sequence[tuple[int, int]],
    duration_s: float,
    max_requests: int,
) -> list[dict[str, Any]]:
    """Closed-loop rows for each (clients, inputs per request) level."""
    n = len(work.raws)
    rows = []
    for concurrency, per_request in levels:
        bodies = [
            request_body(work.bundle, *(work.raws[(i + j) % n] for j in range(per_request)))
            for i in range(n)
        ]

        def body_for(i: int, bodies: list[bytes] = bodies) -> bytes:
            return bodies[i % len(bodies)]

        async with make_client(service.url, concurrency) as client:
            warm = max(20, 2 * concurrency)
            await closed_loop(
                client,
                "/embed",
                body_for,
                concurrency=concurrency,
                duration_s=min(duration_s, 5.0),
                max_requests=warm,
            )
            before = batch_histogram((await client.get("/metrics")).text, work.bundle)
            cpu0 = cpu_seconds(service.pid)
            load = await closed_loop(
                client,
                "/embed",
                body_for,
                concurrency=concurrency,
                duration_s=duration_s,
                max_requests=max_requests,
                first=warm,
            )
            server_cpu = cpu_seconds(service.pid) - cpu0
            after = batch_histogram((await client.get("/metrics")).text, work.bundle)
        calls = after[1] - before[1]
        row = {
            **load.summary(per_request),
            "inputs_per_request": per_request,
            "inference_calls": int(calls),
            "inference_inputs": int(after[0] - before[0]),
            "mean_batch": round((after[0] - before[0]) / calls, 2) if calls else None,
            "server_cpu_s": round(server_cpu, 3),
            "server_cores": round(server_cpu / load.elapsed_s, 2) if load.elapsed_s else None,
        }
        rows.append(row)
        logger.info("%s %s service %s", work.bundle, work.label, row)
    return rows


# -- 3. precision: torch, fp32, int8 -----------------------------------------------------


def pooled(c: np.ndarray, prepared: list[Prepared]) -> np.ndarray:
    """Mean-pooled c of each input over its own valid steps, [B, C]."""
    flat = c.reshape(c.shape[0], -1, c.shape[-1])
    return np.stack([flat[i, : p.steps].mean(axis=0) for i, p in enumerate(prepared)])


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray(
        (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    )


def load_torch_model(runs_dir: Path, encoder: OnnxEncoder) -> tuple[Any, str]:
    """The run's torch model for this bundle, or (None, why not)."""
    try:
        from training.export.onnx_export import load_run_model
    except ImportError as exc:
        return None, f"torch is not installed ({exc})"
    for name in (encoder.name, encoder.modality):
        run = runs_dir / name
        if (run / "checkpoint.pt").is_file():
            model, cfg, ckpt = load_run_model(run)
            bundle_model = encoder.spec.training.get("model")
            run_model = json.loads(json.dumps(cfg.to_dict()["model"]))  # tuples as lists
            if bundle_model is not None and run_model != bundle_model:
                return None, f"{run}: its model config differs from bundle.json's"
            step = encoder.spec.metrics.get("step")
            if step is not None and ckpt.get("step") != step:
                return None, f"{run} is at step {ckpt.get('step')}, the bundle at step {step}"
            return model, f"{run}/checkpoint.pt (step {ckpt.get('step')})"
    return None, f"no checkpoint.pt in {runs_dir}/{encoder.name} or {runs_dir}/{encoder.modality}"


def precision(
    folder: Path,
    work: Workload,
    batches: Sequence[int],
    seconds: float,
    settings: Settings,
    torch_model: Any = None,
) -> dict[str, Any]:
    """Forward-pass inputs/s of torch / fp32 / int8 and their agreement with fp32."""
    fp32 = OnnxEncoder.from_settings(folder, settings, quantized=False)
    quant = None
    if fp32.spec.onnx.quantized_file:
        quant = OnnxEncoder.from_settings(folder, settings, quantized=True)
    prepared = [fp32.prepare(raw) for raw in work.raws]
    onnx = fp32.spec.onnx
    torch_mod: Any = importlib.import_module("torch") if torch_model is not None else None

    def onnx_call(encoder: OnnxEncoder, x: np.ndarray) -> np.ndarray:
        return np.asarray(encoder.runner.session.run([onnx.context_output], {onnx.input: x})[0])

    def torch_call(x: np.ndarray) -> np.ndarray:
        with torch_mod.inference_mode():
            _, c = torch_model(torch_mod.from_numpy(x))
        return np.asarray(c.float().numpy())

    runners: dict[str, Callable[[np.ndarray], np.ndarray]] = {"fp32": lambda x: onnx_call(fp32, x)}
    if quant is not None:
        runners["quantized"] = lambda x: onnx_call(quant, x)
    if torch_model is not None:
        runners["torch"] = torch_call

    vectors: dict[str, list[np.ndarray]] = {name: [] for name in runners}
    for start in range(0, len(prepared), 8):
        group = prepared[start : start + 8]
        x = fp32.collate(group)
        for name, run in runners.items():
            vectors[name].append(pooled(run(x), group))
    reference = np.concatenate(vectors["fp32"])
    agreement = {}
    for name in runners:
        if name != "fp32":
            cos = cosines(reference, np.concatenate(vectors[name]))
            agreement[name] = {
                "min_cosine": round(float(cos.min()), 6),
                "mean_cosine": round(float(cos.mean()), 6),
            }
    rows = []
    for batch in batches:
        group = [prepared[i % len(prepared)] for i in range(batch)]
        x = fp32.collate(group)
        row: dict[str, Any] = {"batch": batch}
        for name, run in runners.items():
            row[name] = rate(timed_calls(functools.partial(run, x), seconds), batch)
        if quant is not None:
            row["quantized_speedup"] = round(
                row["quantized"]["inputs_per_s"] / row["fp32"]["inputs_per_s"], 3
            )
        rows.append(row)
        logger.info("%s %s precision %s", work.bundle, work.label, row)
    return {
        "quantized_file": fp32.spec.onnx.quantized_file,
        "torch_threads": torch_mod.get_num_threads() if torch_mod is not None else None,
        "agreement_with_fp32": agreement,
        "rows": rows,
    }


# -- headline numbers, Markdown, plot ----------------------------------------------------


def _check(value: float | None, target: float, higher_is_better: bool) -> str:
    if value is None:
        return "n/a"
    ok = value >= target if higher_is_better else value <= target
    return "yes" if ok else "NO"


def headlines(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ratios the performance issue asks for, each with its target."""
    out: list[dict[str, Any]] = []

    def add(work: dict[str, Any], metric: str, value: float | None, target: str, ok: str) -> None:
        value = None if value is None else round(value, 6)
        out.append(
            {
                "bundle": work["bundle"],
                "workload": work["label"],
                "metric": metric,
                "value": value,
                "target": target,
                "met": ok,
            }
        )

    for work in results:
        service = {
            (row["concurrency"], row.get("inputs_per_request", 1)): row
            for row in work.get("service") or []
        }
        rows = work["ceiling"]
        if service and rows:
            best_full = max(r["with_preprocess"]["inputs_per_s"] for r in rows)
            best_model = max(r["model_only"]["inputs_per_s"] for r in rows)
            target = TARGETS["service_vs_inprocess"]
            for (clients, per_request), row in sorted(service.items()):
                if clients != 16:
                    continue
                inputs = "1 input" if per_request == 1 else f"{per_request} inputs"
                for what, best in (("with preprocessing", best_full), ("model only", best_model)):
                    metric = (
                        f"service inputs/s at 16 clients, {inputs} per request "
                        f"/ best in-process ({what})"
                    )
                    ratio = row["inputs_per_s"] / best
                    add(work, metric, ratio, f">= {target}", _check(ratio, target, True))
            p50 = service.get((1, 1), {}).get("p50_ms")
            first = next((r for r in rows if r["batch"] == 1), None)
            if first is not None and p50 is not None:
                target = TARGETS["overhead_ms"]
                for metric, inproc in (
                    (
                        "service p50 at 1 client - in-process batch-1 p50 (with preprocessing), ms",
                        first["with_preprocess"]["p50_ms"],
                    ),
                    (
                        "service p50 at 1 client - in-process batch-1 p50 (model only), ms",
                        first["model_only"]["p50_ms"],
                    ),
                ):
                    gap = p50 - inproc
                    add(work, metric, gap, f"<= {target}", _check(gap, target, False))
        prec = work.get("precision")
        if prec and prec.get("quantized_file"):
            target = TARGETS["quantized_speedup"]
            for row in prec["rows"]:
                speed = row.get("quantized_speedup")
                add(
                    work,
                    f"quantized speed-up at batch {row['batch']}",
                    speed,
                    f">= {target}x",
                    _check(speed, target, True),
                )
            cos = prec["agreement_with_fp32"].get("quantized", {}).get("min_cosine")
            target = TARGETS["quantized_cosine"]
            add(
                work,
                "quantized min cosine vs fp32 (mean-pooled c)",
                cos,
                f">= {target}",
                _check(cos, target, True),
            )
    return out


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def to_markdown(report: dict[str, Any]) -> str:
    m, s, p = report["machine"], report["settings"], report["params"]
    lines = [
        "# Embedding benchmark",
        "",
        f"{machine_line(m, 'onnxruntime')}. Settings (both in-process and service): batch_wait_ms "
        f"{s['batch_wait_ms']}, max_inference_batch {s['max_inference_batch']}, "
        f"intra_op_threads {s['intra_op_threads']}, use_quantized {s['use_quantized']}. "
        f"Service: {p['duration']} s per concurrency level; in-process: {p['cell_seconds']} s "
        "per cell. The load generator runs on the same cores as the service.",
        *([report["note"]] if report["note"] else []),
        "",
        "## Headline",
        "",
        "| bundle | workload | metric | value | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for h in report["headlines"]:
        lines.append(
            f"| {h['bundle']} | {h['workload']} | {h['metric']} "
            f"| {_fmt(h['value'], 6 if 'cosine' in h['metric'] else 4)} "
            f"| {h['target']} | {h['met']} |"
        )
    lines += [
        "",
        "Service vs in-process: service inputs/s at 16 clients over the best in-process inputs/s"
        " at any batch size, with preprocessing (the same work per input as the service) and for"
        " the model call alone; with one input per request, and with several (as clients that"
        " embed many inputs send them). Overhead: service p50 at 1 client minus the in-process"
        " median batch-1 call; it includes the batcher's wait (batch_wait_ms) and the load"
        " generator's own HTTP client time.",
    ]
    lines += ["", "## In-process ceiling (the service's OnnxEncoder, one thread of calls)", ""]
    lines += [
        "model only: `OnnxEncoder.run` on prepared inputs. With preprocessing: decode, preprocess,"
        " run, mean-pool and normalise, serially. ms are per call (one batch).",
        "",
    ]
    for work in report["results"]:
        lines += [
            f"### {work['bundle']}: {work['label']}",
            "",
            "| batch | inputs/s model only | ms/call | inputs/s with preprocessing | ms/call "
            "| preprocessing ms/input |",
            "|---|---|---|---|---|---|",
        ]
        for r in work["ceiling"]:
            mo, wp = r["model_only"], r["with_preprocess"]
            pre = (wp["p50_ms"] - mo["p50_ms"]) / r["batch"]
            lines.append(
                f"| {r['batch']} | {_fmt(mo['inputs_per_s'])} | {_fmt(mo['p50_ms'])} "
                f"| {_fmt(wp['inputs_per_s'])} | {_fmt(wp['p50_ms'])} | {_fmt(pre)} |"
            )
        lines.append("")
    lines += ["## Service (closed loop)", ""]
    for work in report["results"]:
        if not work.get("service"):
            continue
        lines += [
            f"### {work['bundle']}: {work['label']}",
            "",
            "| clients | inputs/request | inputs/s | p50 ms | p95 ms | p99 ms | errors "
            "| mean batch | server cores | client CPU s |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in work["service"]:
            lines.append(
                f"| {r['concurrency']} | {r.get('inputs_per_request', 1)} "
                f"| {_fmt(r['inputs_per_s'])} | {_fmt(r['p50_ms'])} "
                f"| {_fmt(r['p95_ms'])} | {_fmt(r['p99_ms'])} | {r['errors']} "
                f"| {_fmt(r['mean_batch'])} | {_fmt(r['server_cores'])} "
                f"| {_fmt(r['client_cpu_s'])} |"
            )
        lines.append("")
    lines += [
        "## Precision: torch eager, onnxruntime fp32, int8 (static, QDQ)",
        "",
        "Forward pass only, on the same collated batches; inputs/s.",
        f"Torch: {report['torch']}.",
        "",
    ]
    for work in report["results"]:
        prec = work.get("precision")
        if not prec:
            continue
        lines += [
            f"### {work['bundle']}: {work['label']}",
            "",
            "| batch | torch | fp32 | int8 | int8 speed-up |",
            "|---|---|---|---|---|",
        ]
        for r in prec["rows"]:
            lines.append(
                f"| {r['batch']} | {_fmt(r.get('torch', {}).get('inputs_per_s'))} "
                f"| {_fmt(r['fp32']['inputs_per_s'])} "
                f"| {_fmt(r.get('quantized', {}).get('inputs_per_s'))} "
                f"| {_fmt(r.get('quantized_speedup'))} |"
            )
        for name, agree in prec["agreement_with_fp32"].items():
            lines.append(
                f"\n{name} vs fp32, cosine of mean-pooled c over {DISTINCT_INPUTS} inputs: "
                f"min {agree['min_cosine']}, mean {agree['mean_cosine']}."
            )
        if not prec["quantized_file"]:
            lines.append("\nThis bundle has no quantized copy (export with --quantize).")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def plot(report: dict[str, Any], path: Path) -> bool:
    """Service inputs/s against clients per served workload, the ceilings as lines."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no %s", path)
        return False
    served = [w for w in report["results"] if w.get("service")]
    if not served:
        return False
    fig, axes = plt.subplots(1, len(served), figsize=(4.5 * len(served), 3.8), squeeze=False)
    for ax, work in zip(axes[0], served, strict=True):
        single = [r for r in work["service"] if r.get("inputs_per_request", 1) == 1]
        levels = [r["concurrency"] for r in single]
        ax.plot(levels, [r["inputs_per_s"] for r in single], "o-", label="service, 1 per request")
        for r in work["service"]:
            if r.get("inputs_per_request", 1) > 1:
                ax.plot(
                    [r["concurrency"]],
                    [r["inputs_per_s"]],
                    "s",
                    color="C3",
                    label=f"service, {r['inputs_per_request']} per request",
                )
        best_full = max(r["with_preprocess"]["inputs_per_s"] for r in work["ceiling"])
        best_model = max(r["model_only"]["inputs_per_s"] for r in work["ceiling"])
        ax.axhline(best_full, color="C1", label="in-process, with preprocessing")
        ax.axhline(best_model, color="C2", linestyle="--", label="in-process, model only")
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.set_ylim(bottom=0)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel("inputs/s")
        ax.set_title(f"{work['bundle']}: {work['label']}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# -- main ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    parser.add_argument("--runs-dir", type=Path, default=None, help="for the torch column")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per service level")
    parser.add_argument(
        "--cell-seconds", type=float, default=2.0, help="seconds per in-process measurement"
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument(
        "--audio-seconds", type=float, nargs="+", default=[1.0, 4.0], help="the first is served"
    )
    parser.add_argument(
        "--inputs-per-request",
        type=int,
        nargs="+",
        default=[16],
        help="also serve 16 clients sending this many inputs per request",
    )
    parser.add_argument("--precision-batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument(
        "--max-requests", type=int, default=100_000, help="per service level, a bound"
    )
    parser.add_argument("--bundles", nargs="+", default=None, help="only these bundle names")
    parser.add_argument("--server-log-level", default="warning")
    parser.add_argument("--note", default="", help="a sentence stored with the results")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    settings = Settings()
    try:
        folders = bundle_folders(args.models_dir)
    except BundleError as exc:
        raise SystemExit(str(exc)) from exc
    encoders = [OnnxEncoder.from_settings(folder, settings) for folder in folders]
    chosen = [
        (folder, enc)
        for folder, enc in zip(folders, encoders, strict=True)
        if args.bundles is None or enc.name in args.bundles
    ]
    if not chosen:
        raise SystemExit(f"no bundles to measure in {args.models_dir}")
    work_of: list[tuple[Path, OnnxEncoder, Workload, dict[str, Any]]] = []
    for folder, encoder in chosen:
        for work in workloads(encoder, args.audio_seconds):
            entry: dict[str, Any] = {
                "bundle": work.bundle,
                "modality": work.modality,
                "label": work.label,
                "model_file": encoder.model_file,
                "ceiling": ceiling(encoder, work, args.batches, args.cell_seconds),
                "service": None,
                "precision": None,
            }
            work_of.append((folder, encoder, work, entry))
    results = [entry for *_, entry in work_of]

    levels = [(c, 1) for c in args.concurrency]
    levels += [(16, n) for n in args.inputs_per_request if n > 1]
    with ServiceProcess(args.models_dir, log_level=args.server_log_level) as service:
        for _, _, work, entry in work_of:
            if work.served:
                entry["service"] = asyncio.run(
                    service_levels(service, work, levels, args.duration, args.max_requests)
                )

    torch_note = "not measured: pass --runs-dir with the runs' checkpoint.pt files"
    torch_models: dict[str, tuple[Any, str]] = {}
    for folder, encoder, work, entry in work_of:
        if args.runs_dir is not None and encoder.name not in torch_models:
            torch_models[encoder.name] = load_torch_model(args.runs_dir, encoder)
        model = torch_models.get(encoder.name, (None, ""))[0]
        entry["precision"] = precision(
            folder, work, args.precision_batches, args.cell_seconds, settings, model
        )
    if torch_models:
        torch_note = "; ".join(f"{name}: {why}" for name, (_, why) in torch_models.items())

    report: dict[str, Any] = {
        **report_header(settings, args),
        "torch": torch_note,
        "results": results,
    }
    report["headlines"] = headlines(results)
    errors = sum(r["errors"] for w in results for r in w["service"] or [])
    report["errors"] = errors
    write_results(args.out, "embed", report, to_markdown(report))
    plot(report, args.out / "embed.png")
    for h in report["headlines"]:
        logger.info(
            "%s %s: %s = %s (target %s)",
            h["bundle"],
            h["workload"],
            h["metric"],
            h["value"],
            h["target"],
        )
    logger.info("wrote %s/embed.{json,md,png}", args.out)
    if errors:
        logger.error("%d requests failed; see error_samples in embed.json", errors)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
