"""Smoke tests of the serving benchmarks: each main path runs end to end on tiny bundles.

Tiny runs are trained for two steps and exported with a quantized copy, so
`bench.embed` exercises the in-process ceiling, the service under load, and
torch / fp32 / uint8; `bench.memory` starts the service and samples its RSS.
Nothing here asserts a timing: only that the scripts run, fail no request
and write their files. The load generator is also checked against an
in-memory transport (bounded by count, errors counted).
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import httpx
import numpy as np
import pytest

from bench import embed, memory, search, wrk
from bench.rawhttp import RawHttpClient, RawHttpError
from bench.serving import ServiceProcess, batch_histogram, closed_loop, latency_ms, scrape
from bench.workloads import random_input, request_body, typical_inputs
from tests.training.tiny import LENIENT, tiny_config
from training.export.onnx_export import export_run
from training.train import train

MODALITIES = ("audio", "image", "text")


@pytest.fixture(scope="module")
def tiny_setup(corpora: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root/runs/<modality>/checkpoint.pt and root/models/<modality> (with model.quant.onnx)."""
    root = tmp_path_factory.mktemp("bench")
    for modality in MODALITIES:
        run = root / "runs" / modality
        train(tiny_config(modality, steps=2), corpora[modality], run, progress=False)
        export_run(run, root / "models" / modality, quantize_weights=True, calibration=LENIENT)
    return root


def test_embed_benchmark_runs(tiny_setup: Path, tmp_path: Path) -> None:
    code = embed.main(
        [
            "--models-dir",
            str(tiny_setup / "models"),
            "--runs-dir",
            str(tiny_setup / "runs"),
            "--duration",
            "0.3",
            "--cell-seconds",
            "0.01",
            "--batches",
            "1",
            "2",
            "--concurrency",
            "1",
            "2",
            "--audio-seconds",
            "1",
            "--precision-batches",
            "2",
            "--inputs-per-request",
            "3",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    report = json.loads((tmp_path / "embed.json").read_text(encoding="utf-8"))
    assert report["machine"]["cpu_count"] and report["errors"] == 0
    assert sorted(w["bundle"] for w in report["results"]) == list(MODALITIES)
    for work in report["results"]:
        assert [r["batch"] for r in work["ceiling"]] == [1, 2]
        levels = [(r["concurrency"], r["inputs_per_request"]) for r in work["service"]]
        assert levels == [(1, 1), (2, 1), (16, 3)]
        batched = work["service"][-1]
        assert batched["inputs_per_s"] == pytest.approx(3 * batched["requests_per_s"], rel=0.01)
        for row in work["service"]:
            assert row["errors"] == 0 and row["requests"] > 0
            assert row["inference_calls"] > 0 and row["mean_batch"] >= 1
        prec = work["precision"]
        assert prec["quantized_file"] == "model.quant.onnx"
        assert {"fp32", "quantized", "torch", "quantized_speedup"} <= prec["rows"][0].keys()
        assert prec["agreement_with_fp32"]["torch"]["min_cosine"] > 0.999
    metrics = {h["metric"] for h in report["headlines"]}
    assert any(m.startswith("service p50 at 1 client") for m in metrics)
    assert any("16 clients, 3 inputs per request" in m for m in metrics)
    assert any(m.startswith("quantized speed-up") for m in metrics)
    assert (tmp_path / "embed.md").read_text(encoding="utf-8").startswith("# Embedding benchmark")
    assert (tmp_path / "embed.png").stat().st_size > 0


WRK_OUTPUT = """Running 2s test @ http://127.0.0.1:1/embed
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     8.19ms    1.20ms  30.00ms   90.00%
  Latency Distribution
     50%  812.00us
     75%    9.11ms
     90%   10.05ms
     99%    1.27s{TRAILING}
  3061 requests in 2.00s, 1.20MB read
  Socket errors: connect 0, read 1, write 0, timeout 2
  Non-2xx or 3xx responses: 4
Requests/sec:   1530.50
Transfer/sec:      0.60MB
""".format(TRAILING=" ")  # wrk pads its seconds


def test_wrk_output_is_read() -> None:
    row = wrk.parse_wrk(WRK_OUTPUT)
    assert row == {
        "requests": 3061,
        "requests_per_s": 1530.5,
        "p50_ms": 0.812,
        "p75_ms": 9.11,
        "p90_ms": 10.05,
        "p99_ms": 1270.0,
        "non_2xx": 4,
        "socket_errors": 3,
    }
    with pytest.raises(RuntimeError, match="Requests/sec"):
        wrk.parse_wrk("unable to connect")


def test_wrk_profile_summary(tmp_path: Path) -> None:
    raw = tmp_path / "profile.txt"
    raw.write_text("main (a/cli.py:1);run (b/x.py:2) 3\nmain (a/cli.py:1) 1\n", encoding="utf-8")
    summary = wrk.summarise_profile(raw)
    assert summary["samples"] == 4
    assert summary["self"] == [["run (x.py)", 0.75], ["main (cli.py)", 0.25]]
    assert dict(summary["total"])["main (cli.py)"] == 1.0


@pytest.mark.skipif(wrk.shutil.which("wrk") is None, reason="wrk is not installed (.ci/run has it)")
def test_wrk_benchmark_runs(tiny_setup: Path, tmp_path: Path) -> None:
    args = ["--models-dir", str(tiny_setup / "models"), "--duration", "1"]
    args += ["--cell-seconds", "0.01", "--batches", "1", "2", "--connections", "1", "2"]
    code = wrk.main([*args, "--inputs", "1", "3", "--profile", "--out", str(tmp_path)])
    assert code == 0
    report = json.loads((tmp_path / "wrk.json").read_text(encoding="utf-8"))
    rows = report["results"]
    assert sorted({r["bundle"] for r in rows}) == list(MODALITIES)
    levels = [(r["path"], r["connections"], r["inputs_per_request"]) for r in rows]
    assert levels[:4] == [("/embed", 1, 1), ("/embed", 1, 3), ("/embed", 2, 1), ("/embed", 2, 3)]
    assert ("/v1/embeddings", 16, 1) in levels
    for r in rows:
        assert r["requests"] > 0 and r["non_2xx"] == 0 and r["socket_errors"] == 0
        assert r["inputs_per_s"] == pytest.approx(
            r["requests_per_s"] * r["inputs_per_request"], 0.01
        )
    if report["profile"] is not None:  # py-spy may be refused ptrace in a container
        assert report["profile"]["samples"] > 0
    assert (tmp_path / "wrk.md").read_text(encoding="utf-8").startswith("# The service under wrk")


def test_memory_benchmark_runs(tiny_setup: Path, tmp_path: Path) -> None:
    code = memory.main(
        [
            "--models-dir",
            str(tiny_setup / "models"),
            "--requests",
            "12",
            "--warmup",
            "6",
            "--sample-every",
            "6",
            "--settle-s",
            "0.1",
            "--concurrency",
            "3",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    report = json.loads((tmp_path / "memory.json").read_text(encoding="utf-8"))
    result = report["result"]
    assert result["errors"] == 0 and result["requests"] == 12
    assert [s["requests"] for s in result["samples"]] == [0, 6, 12]
    assert result["rss_baseline_kb"] > 0 and isinstance(result["growth_pct"], float)
    assert sorted(result["models"]) == list(MODALITIES)
    assert (tmp_path / "memory.md").is_file()


def test_closed_loop_is_bounded_and_counts_errors() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        index = json.loads(request.content)["i"]
        return httpx.Response(500 if index % 5 == 0 else 200, json={})

    async def go() -> tuple[int, int, int]:
        transport = httpx.MockTransport(handler)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            result = await closed_loop(
                client,
                "/x",
                lambda i: json.dumps({"i": i}).encode(),
                concurrency=4,
                duration_s=30.0,
                max_requests=23,
            )
        return result.requests, result.errors, len(result.latencies_s)

    assert asyncio.run(go()) == (23, 5, 18)


def test_metrics_parsing_and_percentiles() -> None:
    text = (
        "# HELP cpc_inference_batch_size Inputs in one onnxruntime call, by model\n"
        'cpc_inference_batch_size_bucket{le="1.0",model="audio"} 3.0\n'
        'cpc_inference_batch_size_count{model="audio"} 5.0\n'
        'cpc_inference_batch_size_sum{model="audio"} 12.0\n'
        'cpc_inference_batch_size_sum{model="text"} 2.0\n'
    )
    assert batch_histogram(text, "audio") == (12.0, 5.0)
    assert batch_histogram(text, "image") == (0.0, 0.0)
    assert scrape(text, "cpc_inference_batch_size_sum")[(("model", "text"),)] == 2.0
    stats = latency_ms([0.001 * i for i in range(1, 101)])
    assert stats["p50_ms"] == pytest.approx(50.5) and stats["p99_ms"] == pytest.approx(99.01)
    assert latency_ms([])["p50_ms"] is None


def test_workload_inputs() -> None:
    assert len(typical_inputs("audio", 2)) == 2 and typical_inputs("audio", 1)[0][:4] == b"RIFF"
    assert typical_inputs("image", 1)[0][:4] == b"\x89PNG"
    text = typical_inputs("text", 1)[0]
    assert isinstance(text, str) and text.count(".") >= 2
    rng = np.random.default_rng(0)
    assert all(random_input(m, rng) for m in MODALITIES for _ in range(3))
    body = json.loads(request_body("audio", b"abc"))
    assert body == {"model": "audio", "inputs": ["YWJj"]}
    assert json.loads(request_body("text", "a", "b"))["inputs"] == ["a", "b"]


def test_service_process_reports_a_failed_start(tmp_path: Path) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "bundle.json").write_text("{not json", encoding="utf-8")
    service = ServiceProcess(tmp_path, start_timeout_s=60.0)
    with pytest.raises(RuntimeError, match="did not become ready"):
        service.start()
    assert service.stop() is None  # already stopped and cleaned up


def test_search_benchmark_runs_and_judges_the_largest_size(tmp_path: Path) -> None:
    args = ["--sizes", "2000", "--dim", "16", "--centres", "20", "--queries", "50"]
    search.main([*args, "--nlist", "16", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "search.json").read_text(encoding="utf-8"))
    rows = {r["index"]: r for r in report["results"]}
    assert rows["flat"]["recall_at_10"] == 1.0 and rows["ivf"]["trained"]
    assert 0.5 < rows["ivf"]["recall_at_10"] <= 1.0 and rows["ivf"]["qps_single"] > 0
    assert [n for n, _, _ in search.speedups(report["results"])] == [2000]
    md = (tmp_path / "search.md").read_text(encoding="utf-8")
    assert "- 2,000 vectors:" in md and "target" not in md.split("- 2,000 vectors:")[1]
    big = [{**r, "n": 1_000_000} for r in report["results"]]
    verdict = search.to_markdown({**report, "results": big}).splitlines()[-1]
    flat, ivf = rows["flat"]["qps_single"], rows["ivf"]["qps_single"]
    good = ivf / flat >= 5 and rows["ivf"]["recall_at_10"] >= 0.95
    assert verdict.endswith("(target met)" if good else "(target NOT met)")


def test_raw_http_client_reuses_connections_and_frames_replies() -> None:
    accepted: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
            body = await reader.readexactly(length)
            if head.startswith(b"GET /no-length"):
                writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbody")
            else:
                reply = body.upper() if head.startswith(b"POST") else b"got"
                writer.write(
                    b"HTTP/1.1 201 Created\r\nContent-Length: %d\r\n\r\n%s" % (len(reply), reply)
                )
            await writer.drain()
        writer.close()

    async def go() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with RawHttpClient(f"http://127.0.0.1:{port}", 2) as client:
            replies = await asyncio.gather(
                *(client.post("/x", content=b"abc%d" % i, headers={}) for i in range(10))
            )
            assert [r.content for r in replies] == [b"ABC%d" % i for i in range(10)]
            assert {r.status_code for r in replies} == {201}
            assert (await client.get("/y")).text == "got"
            assert len(accepted) == 2  # ten requests over two kept-alive connections
            with pytest.raises(RawHttpError, match="no Content-Length"):
                await client.get("/no-length")
        server.close()
        await server.wait_closed()

    asyncio.run(go())
