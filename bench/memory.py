"""Memory growth of the running service under many inputs of random sizes.

Run: `.venv/bin/python -m bench.memory [--requests 5000] [--models-dir models]`. Starts
`cpc-embed serve` on the bundles of `--models-dir` (see `bench.serving`), sends
`--warmup` requests of the same random mix, takes the server's RSS (VmRSS of
/proc/<pid>/status) as the baseline, then sends `--requests` more from
`--concurrency` closed-loop clients and samples RSS every `--sample-every`
requests. Each sample is taken at rest, `--settle-s` seconds after the
requests in flight have been answered: growth is what the service keeps,
not the buffers of the batch it happens to be running. Requests cycle over
the modalities served (the default bundle of each), one input each, of
random size: audio 0.2-8 s, text 1-20 sentences, images 16-640 px a side
(PNG or JPEG), seeded so runs repeat. Reports growth
over the baseline in % (target < 10%), the slope over the second half of the
run, the peak (VmHWM) and errors (must be 0). Writes memory.json and memory.md
to `--out` and exits 1 if a request failed or the run hit `--max-seconds`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import machine_line, setup_logging, write_results
from bench.rawhttp import RawHttpClient
from bench.serving import (
    LoadResult,
    ServiceProcess,
    closed_loop,
    make_client,
    proc_status,
    report_header,
    rss_kb,
)
from bench.workloads import random_input, request_body
from service.config import DEFAULT_MODELS_DIR, Settings
from service.errors import BundleError
from service.inference.registry import bundle_folders

logger = logging.getLogger(__name__)
RESULTS = Path(__file__).parent / "results"
TARGET_GROWTH_PCT = 10.0


def body_maker(defaults: dict[str, str], seed: int) -> Callable[[int], bytes]:
    """Request `i`: the next modality in turn, an input of random size drawn from (seed, i)."""
    modalities = sorted(defaults)

    def body_for(i: int) -> bytes:
        modality = modalities[i % len(modalities)]
        rng = np.random.default_rng([seed, i])
        return request_body(defaults[modality], random_input(modality, rng))

    return body_for


def slope_kb_per_1000(samples: list[dict[str, int]]) -> float | None:
    """Least-squares RSS slope over the second half of the samples, kB per 1000 requests."""
    half = samples[len(samples) // 2 :]
    if len(half) < 2:
        return None
    x = np.array([s["requests"] for s in half], dtype=np.float64)
    y = np.array([s["rss_kb"] for s in half], dtype=np.float64)
    if np.ptp(x) == 0:
        return None
    return round(float(np.polyfit(x, y, 1)[0]) * 1000, 1)


async def drive(service: ServiceProcess, args: argparse.Namespace) -> dict[str, Any]:
    models = service.get("/models").json()
    defaults: dict[str, str] = models["defaults"]
    if not defaults:
        raise SystemExit(f"no bundles in {args.models_dir}")
    body_for = body_maker(defaults, args.seed)
    pid = service.pid
    at_start = rss_kb(pid)
    deadline = time.monotonic() + args.max_seconds
    errors: list[str] = []
    failed = 0
    timed_out = False

    async def send(client: RawHttpClient, count: int, first: int) -> LoadResult:
        nonlocal failed, timed_out
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            return LoadResult(args.concurrency)
        result = await closed_loop(
            client,
            "/embed",
            body_for,
            concurrency=args.concurrency,
            duration_s=left,
            max_requests=count,
            first=first,
        )
        failed += result.errors
        errors.extend(result.error_samples[: max(0, 5 - len(errors))])
        if result.requests < count:
            timed_out = True
        return result

    async with make_client(service.url, args.concurrency, timeout_s=120.0) as client:
        started = time.perf_counter()
        await send(client, args.warmup, 0)
        await asyncio.sleep(args.settle_s)
        baseline = rss_kb(pid)
        logger.info(
            "RSS %d kB at start, %d kB after %d warm-up requests", at_start, baseline, args.warmup
        )
        samples = [{"requests": 0, "rss_kb": baseline}]
        sent = 0
        while sent < args.requests and not timed_out:
            count = min(args.sample_every, args.requests - sent)
            result = await send(client, count, args.warmup + sent)
            sent += result.requests
            await asyncio.sleep(args.settle_s)
            rss = rss_kb(pid)
            samples.append({"requests": sent, "rss_kb": rss})
            logger.info(
                "%d requests: RSS %d kB (%+.1f%%), %d errors so far",
                sent,
                rss,
                100 * (rss - baseline) / baseline,
                failed,
            )
        elapsed = time.perf_counter() - started
    peak = proc_status(pid).get("VmHWM")
    final = samples[-1]["rss_kb"]
    most = max(s["rss_kb"] for s in samples)
    growth = 100 * (final - baseline) / baseline
    return {
        "models": defaults,
        "rss_at_start_kb": at_start,
        "rss_baseline_kb": baseline,
        "rss_final_kb": final,
        "rss_max_sampled_kb": most,
        "peak_vmhwm_kb": peak,
        "growth_pct": round(growth, 2),
        "max_growth_pct": round(100 * (most - baseline) / baseline, 2),
        "slope_second_half_kb_per_1000_requests": slope_kb_per_1000(samples),
        "target_growth_pct": TARGET_GROWTH_PCT,
        "met": growth < TARGET_GROWTH_PCT,
        "requests": sent,
        "errors": failed,
        "error_samples": errors,
        "timed_out": timed_out,
        "elapsed_s": round(elapsed, 1),
        "samples": samples,
    }


def to_markdown(report: dict[str, Any]) -> str:
    m, r, p = report["machine"], report["result"], report["params"]
    lines = [
        "# Service memory benchmark",
        "",
        f"{machine_line(m, 'onnxruntime')}. Models: "
        + ", ".join(f"{mod} = {name}" for mod, name in sorted(r["models"].items()))
        + f". {p['concurrency']} closed-loop clients, one input per request, random sizes "
        "(audio 0.2-8 s, text 1-20 sentences, images 16-640 px a side); "
        f"baseline after {p['warmup']} warm-up requests of the same mix.",
        *([report["note"]] if report["note"] else []),
        "",
        "| requests | errors | RSS start MB | RSS baseline MB | RSS final MB | growth % "
        "| target | met | slope, 2nd half, kB/1000 req | peak (VmHWM) MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {r['requests']} | {r['errors']} | {r['rss_at_start_kb'] / 1024:.1f} "
        f"| {r['rss_baseline_kb'] / 1024:.1f} | {r['rss_final_kb'] / 1024:.1f} "
        f"| {r['growth_pct']} | < {r['target_growth_pct']} | {'yes' if r['met'] else 'NO'} "
        f"| {r['slope_second_half_kb_per_1000_requests']} "
        f"| {(r['peak_vmhwm_kb'] or 0) / 1024:.1f} |",
        "",
        "RSS samples:",
        "",
        "| requests | RSS MB | vs baseline % |",
        "|---|---|---|",
    ]
    base = r["rss_baseline_kb"]
    for s in r["samples"]:
        change = 100 * (s["rss_kb"] - base) / base
        lines.append(f"| {s['requests']} | {s['rss_kb'] / 1024:.1f} | {change:+.2f} |")
    if r["timed_out"]:
        lines += ["", f"The run stopped at --max-seconds ({p['max_seconds']} s)."]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--sample-every", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--settle-s",
        type=float,
        default=2.0,
        help="idle seconds before each RSS sample (the service returns memory once idle)",
    )
    parser.add_argument("--max-seconds", type=float, default=3600.0, help="bound on the load")
    parser.add_argument("--server-log-level", default="warning")
    parser.add_argument("--note", default="", help="a sentence stored with the results")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.requests < 1 or args.warmup < 1 or args.sample_every < 1 or args.concurrency < 1:
        parser.error("--requests, --warmup, --sample-every and --concurrency must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    settings = Settings()
    try:
        bundle_folders(args.models_dir)
    except BundleError as exc:
        raise SystemExit(str(exc)) from exc
    with ServiceProcess(args.models_dir, log_level=args.server_log_level) as service:
        result = asyncio.run(drive(service, args))
    report = {
        **report_header(settings, args),
        "result": result,
    }
    write_results(args.out, "memory", report, to_markdown(report))
    logger.info(
        "RSS growth %.2f%% over %d requests (target < %.0f%%), %d errors; wrote %s",
        result["growth_pct"],
        result["requests"],
        TARGET_GROWTH_PCT,
        result["errors"],
        args.out / "memory.{json,md}",
    )
    if result["errors"] or result["timed_out"]:
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
