"""Structured logs: JSON (or text) lines with request ids, one access line per request,
errors logged once with their cause, and `cpc-embed serve` wiring uvicorn's loggers in
without duplicate lines."""

from __future__ import annotations

import json
import logging
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service import cli
from service.api.app import create_app
from service.config import Settings
from service.logging_setup import (
    REQUEST_ID,
    JsonFormatter,
    RequestIdFilter,
    TextFormatter,
    configure_logging,
)

pytestmark = pytest.mark.embed_paths("lean", "full")

GOOD = {"model": "text", "inputs": ["Still serving."]}


def record(message: str, **extra: Any) -> logging.LogRecord:
    rec = logging.LogRecord("service.test", logging.INFO, __file__, 1, message, (), None)
    for key, value in extra.items():
        setattr(rec, key, value)
    RequestIdFilter().filter(rec)
    return rec


def test_json_lines_carry_the_request_id_and_fields() -> None:
    token = REQUEST_ID.set("rid-1")
    try:
        rec = record('forged\n{"level": "critical"}', fields={"route": "/embed", "status": 200})
    finally:
        REQUEST_ID.reset(token)
    line = JsonFormatter().format(rec)
    assert "\n" not in line
    out = json.loads(line)
    assert out["message"] == 'forged\n{"level": "critical"}' and out["level"] == "info"
    assert out["request_id"] == "rid-1" and out["route"] == "/embed" and out["status"] == 200
    assert set(out) >= {"ts", "logger"}


def test_json_lines_hold_the_stack_trace_of_an_error() -> None:
    try:
        raise ValueError("the cause")
    except ValueError:
        rec = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    out = json.loads(JsonFormatter().format(rec))
    assert "ValueError: the cause" in out["error"] and "Traceback" in out["error"]


def test_text_lines() -> None:
    rec = record("hello", request_id="rid-2", fields={"status": 201})
    line = TextFormatter().format(rec)
    assert line.endswith("INFO service.test: hello request_id=rid-2 status=201")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put the root and uvicorn loggers (and the signal handlers) back after the test."""
    names = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi", "faiss.loader")
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    loggers = {
        n: (
            list(logging.getLogger(n).handlers),
            logging.getLogger(n).propagate,
            logging.getLogger(n).level,
        )
        for n in names
    }
    disabled = logging.getLogger("uvicorn.access").disabled
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        for name, (hs, propagate, level) in loggers.items():
            logging.getLogger(name).handlers[:] = hs
            logging.getLogger(name).propagate = propagate
            logging.getLogger(name).setLevel(level)
        logging.getLogger("uvicorn.access").disabled = disabled
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


@pytest.mark.usefixtures("restore_logging")
def test_configure_logging_writes_each_line_once(capsys: pytest.CaptureFixture[str]) -> None:
    logging.getLogger("uvicorn.error").setLevel(logging.ERROR)  # as an earlier server left it
    configure_logging("json", "INFO")
    configure_logging("json", "INFO")  # twice: still one handler
    logging.getLogger("uvicorn").addHandler(logging.StreamHandler(sys.stderr))
    configure_logging("json", "INFO")  # and uvicorn's own handlers are removed
    logging.getLogger("uvicorn.error").info("Started server process")
    logging.getLogger("uvicorn.access").info("GET / 200")  # replaced by our access lines
    logging.getLogger("service.api.app").info("ready")
    lines = capsys.readouterr().err.splitlines()
    assert [json.loads(line)["message"] for line in lines] == ["Started server process", "ready"]


@pytest.mark.usefixtures("restore_logging")
def test_serve_configures_logging_and_uvicorn(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_run(app: str, **kwargs: Any) -> None:
        seen.update(kwargs, app=app)

    monkeypatch.setattr("uvicorn.run", fake_run)
    monkeypatch.setenv("CPC_LOG_FORMAT", "text")
    monkeypatch.setenv("CPC_REQUEST_TIMEOUT_S", "10")
    assert cli.main(["serve", "--port", "8123"]) == 0
    assert seen["app"] == "service.api.app:create_app" and seen["factory"] is True
    assert seen["log_config"] is None and seen["access_log"] is False
    assert seen["timeout_graceful_shutdown"] == 10 + cli.SHUTDOWN_GRACE_S
    (handler,) = logging.getLogger().handlers
    assert isinstance(handler.formatter, TextFormatter)


@pytest.fixture
def app_client(models_dir: Path, tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(Settings(models_dir=models_dir, data_dir=tmp_path / "data"))

    async def boom() -> None:
        raise RuntimeError("secret internals")

    app.add_api_route("/boom", boom)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def access_records(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [r.fields for r in caplog.records if r.name == "service.access"]  # type: ignore[attr-defined]


def test_one_access_line_per_request(
    app_client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.clear()
    with caplog.at_level(logging.INFO):
        r1 = app_client.post("/embed", json=GOOD, headers={"X-Request-ID": "abc"})
        r2 = app_client.get("/collections/text/items/a%2Fb")
        r3 = app_client.post("/embed", content=b"{", headers={"content-type": "application/json"})
    lines = access_records(caplog)
    assert [(x["method"], x["route"], x["status"]) for x in lines] == [
        ("POST", "/embed", 200),
        ("GET", "/collections/{name}/items/{item_id:anypath}", 404),
        ("POST", "/embed", 422),
    ]
    assert [x["request_id"] for x in lines] == [r.headers["x-request-id"] for r in (r1, r2, r3)]
    assert lines[0]["request_id"] == "abc"
    assert all(x["duration_ms"] >= 0 and x["client"] for x in lines)
    assert "a/b" not in caplog.text  # the route template, never the ids in the path


def test_an_error_is_logged_once_with_its_cause(
    app_client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.clear()
    with caplog.at_level(logging.INFO):
        r = app_client.get("/boom", headers={"X-Request-ID": "boom-1"})
    assert r.status_code == 500 and r.json() == {"detail": "internal error"}
    assert "secret" not in r.text and r.headers["x-request-id"] == "boom-1"
    errors = [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert len(errors) == 1, [e.getMessage() for e in errors]
    assert "secret internals" in errors[0].getMessage() and errors[0].exc_info
    assert [(x["route"], x["status"]) for x in access_records(caplog)] == [("/boom", 500)]
