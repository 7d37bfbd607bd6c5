"""The service under `wrk` beside its own model in-process: what the HTTP path costs.

Run: `.venv/bin/python -m bench.wrk [--models-dir models] [--duration 10] [--out bench/results]
[--profile]`. Needs `wrk` (Debian package `wrk`), a C load generator whose client costs
the cores almost nothing, so the service keeps the machine.

For every bundle (audio: a 1 s WAV; image: a 64x64 PNG; text: two or three sentences):

1. In-process: the service's own `OnnxEncoder` in this process, decode, preprocess,
   run and mean pooling at batch 1 to 32, serially (`bench.embed.ceiling`), with one
   onnxruntime thread, one per core and the settings' own count; the best inputs/s is
   the ceiling a request path is compared with, whatever the server's thread settings.
   That fastest setting and batch is measured again just before and just after each
   service run, and the row's ratio is to the mean of the two: on a shared machine the
   speed drifts by 10-20% between minutes, and the ratio compares the same minute.
2. The service: `cpc-embed serve` in a subprocess (`bench.serving.ServiceProcess`)
   under `wrk -t1 -cC` for `--duration` seconds at C = 1 and 16 connections, with 1
   and 16 inputs per `POST /embed` (JSON, files as base64; each request one of 32
   distinct bodies, in turn), and for text also `POST /v1/embeddings` with one input.
   Requests/s, inputs/s, wrk's latency percentiles, non-2xx answers and socket errors.
   The ratio is service inputs/s over the in-process ceiling.

With `--profile`, `py-spy` (pip package `py-spy`) samples the server during one more
text run at 16 connections and one input (not one of the measured rows, as sampling
slows the server), and the report lists the functions where its
samples were (self and total share). Writes wrk.json and wrk.md to `--out`; exits 1 if
any request failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.embed import Workload, ceiling, workloads
from bench.machine import machine_line, setup_logging, write_results
from bench.serving import ServiceProcess, auth_headers, report_header
from bench.workloads import json_inputs
from service.config import Settings
from service.errors import BundleError
from service.inference.model import OnnxEncoder
from service.inference.registry import bundle_folders

logger = logging.getLogger(__name__)
RESULTS = Path(__file__).parent / "results"
DISTINCT_BODIES = 32
TARGETS = {"audio": 0.90, "text": 0.50}  # service / in-process at 16 connections, 1 input
TEXT_P50_MS = 0.8  # one connection, one text input

LUA = """
local bodies = {}
for line in io.lines("%(bodies)s") do bodies[#bodies + 1] = line end
local n = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
%(headers)s
request = function()
  n = n %% #bodies + 1
  return wrk.format(nil, "%(path)s", nil, bodies[n])
end
"""
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}


def bodies(path: str, model: str, raws: list[bytes | str], per_request: int) -> list[str]:
    """`DISTINCT_BODIES` JSON bodies of `per_request` inputs each, cycling through `raws`."""
    values = json_inputs(raws)
    out = []
    for i in range(DISTINCT_BODIES):
        picked = [values[(i * per_request + j) % len(values)] for j in range(per_request)]
        if path == "/v1/embeddings":
            body: dict[str, Any] = {"model": model, "input": picked}
        else:
            body = {"model": model, "inputs": picked}
        out.append(json.dumps(body))
    return out


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()  # type: ignore[union-attr]
    return round(float(number) * UNITS[unit], 4)


def parse_wrk(text: str) -> dict[str, Any]:
    """Requests/s, latency percentiles (ms), non-2xx answers and socket errors of wrk's output."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if rps is None:
        raise RuntimeError(f"wrk printed no Requests/sec:\n{text}")
    latency = {
        f"p{p}_ms": _ms(v) for p, v in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)\s*$", text, re.M)
    }
    total = re.search(r"(\d+) requests in", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    return {
        "requests": int(total.group(1)) if total else None,
        "requests_per_s": float(rps.group(1)),
        **latency,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(int(g) for g in sockets.groups()) if sockets else 0,
    }


def run_wrk(
    url: str, path: str, lines: list[str], connections: int, seconds: float, folder: Path
) -> dict[str, Any]:
    body_file = folder / "bodies.txt"
    body_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    headers = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in auth_headers().items())
    script = folder / "post.lua"
    script.write_text(LUA % {"bodies": body_file, "headers": headers, "path": path})
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
    cmd += ["--timeout", "60s"]  # a 16-clip request takes over wrk's default 2 s
    done = subprocess.run([*cmd, "-s", str(script), url], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout)


def profile(pid: int, seconds: float, folder: Path) -> subprocess.Popen[bytes] | None:
    """Start py-spy sampling `pid` for `seconds` (collapsed stacks), or None without py-spy."""
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if spy is None:
        logger.warning("py-spy is not installed: no profile")
        return None
    out = folder / "profile.txt"
    cmd = [spy, "record", "-p", str(pid), "-d", f"{seconds:g}", "-r", "200"]
    return subprocess.Popen(
        [*cmd, "-f", "raw", "-o", str(out), "--nonblocking"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def summarise_profile(path: Path, top: int = 25) -> dict[str, Any]:
    """The functions with most samples in a py-spy collapsed-stack file (self and total)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        samples += n
        # by function: "name (file.py)", without the folder or the line
        frames = [re.sub(r":\d+\)$", ")", re.sub(r" \((.*/)?", " (", f)) for f in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n

    def share(counter: Counter[str]) -> list[list[Any]]:
        return [[f, round(n / samples, 4)] for f, n in counter.most_common(top)]

    return {"samples": samples, "self": share(own), "total": share(total)}


Fastest = tuple[float, OnnxEncoder, int, Workload]  # inputs/s, its encoder, batch, workload


def in_process_rate(encoder: OnnxEncoder, work: Workload, batch: int, seconds: float) -> float:
    """Inputs/s of `work` through `encoder` in this process at `batch` (decode to pooling)."""
    rows = ceiling(encoder, work, [batch], seconds)
    return float(rows[0]["with_preprocess"]["inputs_per_s"])


def fastest_in_process(
    folder: Path, settings: Settings, args: argparse.Namespace
) -> Fastest | None:
    """The best in-process inputs/s of a bundle over batches and thread counts (one
    onnxruntime thread, one per core, the settings' own), so that no thread setting of
    the server can lower the ceiling; None for a bundle not in `args.bundles`."""
    variants = [settings] + [
        settings.model_copy(update={"intra_op_threads": n}) for n in {1, os.cpu_count() or 1}
    ]
    fastest: Fastest | None = None
    for variant in variants:
        encoder = OnnxEncoder.from_settings(folder, variant)
        if args.bundles is not None and encoder.name not in args.bundles:
            return None
        work = workloads(encoder, [1.0])[0]
        for row in ceiling(encoder, work, args.batches, args.cell_seconds):
            rate = row["with_preprocess"]["inputs_per_s"]
            if fastest is None or rate > fastest[0]:
                fastest = (rate, encoder, row["batch"], work)
    return fastest


def measure(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings()
    try:
        folders = bundle_folders(args.models_dir)
    except BundleError as exc:
        raise SystemExit(str(exc)) from exc
    chosen = [fastest_in_process(folder, settings, args) for folder in folders]
    bundles = [f for f in chosen if f is not None]
    results: list[dict[str, Any]] = []
    profiled: dict[str, Any] | None = None
    with (
        tempfile.TemporaryDirectory(prefix="cpc-wrk-") as tmp,
        ServiceProcess(args.models_dir, log_level="warning") as service,
    ):
        folder = Path(tmp)
        for _, encoder, batch, work in bundles:
            levels = [("/embed", c, n) for c in args.connections for n in args.inputs]
            if work.modality == "text":
                levels.append(("/v1/embeddings", 16, 1))
            for path, connections, per_request in levels:
                lines = bodies(path, work.bundle, work.raws, per_request)
                before = in_process_rate(encoder, work, batch, 2 * args.cell_seconds)
                row = run_wrk(service.url, path, lines, connections, args.duration, folder)
                after = in_process_rate(encoder, work, batch, 2 * args.cell_seconds)
                beside = round((before + after) / 2, 1)  # the ceiling of the same minute
                inputs_per_s = row["requests_per_s"] * per_request
                row = {
                    "bundle": work.bundle,
                    "modality": work.modality,
                    "input": work.label,
                    "path": path,
                    "connections": connections,
                    "inputs_per_request": per_request,
                    **row,
                    "inputs_per_s": round(inputs_per_s, 1),
                    "in_process_inputs_per_s": beside,
                    "ratio": round(inputs_per_s / beside, 3),
                }
                logger.info("%s", row)
                results.append(row)
            if args.profile and work.modality == "text":  # a run of its own: py-spy slows it
                lines = bodies("/embed", work.bundle, work.raws, 1)
                spy = profile(service.pid, args.duration, folder)
                run_wrk(service.url, "/embed", lines, 16, args.duration, folder)
                if spy is not None:
                    spy.wait(60)
                    profiled = summarise_profile(folder / "profile.txt")
    return {
        **report_header(settings, args),
        "in_process_best": {work.bundle: rate for rate, _, _, work in bundles},
        "results": results,
        "profile": profiled,
        "targets": {
            "ratio_16_connections_1_input": TARGETS,
            "text_p50_ms_1_connection": TEXT_P50_MS,
        },
    }


def to_markdown(report: dict[str, Any]) -> str:
    lines = [
        "# The service under wrk beside the model in-process",
        "",
        f"Machine: {machine_line(report['machine'], 'onnxruntime')}.",
        "",
        "| bundle | input | path | connections | inputs/request | requests/s | inputs/s "
        "| in-process inputs/s | ratio | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['bundle']} | {r['input']} | {r['path']} | {r['connections']} "
            f"| {r['inputs_per_request']} | {r['requests_per_s']:.0f} | {r['inputs_per_s']:.0f} "
            f"| {r['in_process_inputs_per_s']:.0f} | {r['ratio']:.2f} | {r.get('p50_ms')} "
            f"| {r.get('p99_ms')} | {r['non_2xx'] + r['socket_errors']} |"
        )
    prof = report.get("profile")
    if prof:
        lines += ["", f"## Server profile, text, 16 connections ({prof['samples']} samples)", ""]
        lines += ["| function | self | total |", "|---|---|---|"]
        totals = dict((f, s) for f, s in prof["total"])
        for func, share in prof["self"]:
            lines.append(f"| `{func}` | {share:.1%} | {totals.get(func, share):.1%} |")
    if report.get("note"):
        lines += ["", report["note"]]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--cell-seconds", type=float, default=2.0, help="per in-process batch")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--inputs", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--bundles", nargs="+", default=None, help="only these bundle names")
    parser.add_argument("--profile", action="store_true", help="py-spy the text run")
    parser.add_argument("--note", default="", help="a sentence stored with the results")
    parser.add_argument("--stem", default="wrk", help="results file name")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")
    report = measure(args)
    write_results(args.out, args.stem, report, to_markdown(report))
    failed = sum(r["non_2xx"] + r["socket_errors"] for r in report["results"])
    logger.info("wrote %s/%s.{json,md}", args.out, args.stem)
    if failed:
        logger.error("%d requests failed", failed)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
