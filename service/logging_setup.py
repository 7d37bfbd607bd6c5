"""Logging of `cpc-embed serve`: one JSON object per line (or plain text), with request ids.

`configure_logging` gives the root logger one stderr handler and routes
uvicorn's own loggers through it; CPC_LOG_FORMAT picks `json` (the default) or
`text`. The request id of the request being served lives in the `REQUEST_ID`
context variable, so every line logged while serving it carries it, worker
threads included. The line formats: docs/architecture.md (Logging).
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

REQUEST_ID: ContextVar[str | None] = ContextVar("cpc_request_id", default=None)
LOG_FORMATS = ("json", "text")
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.asgi")
QUIET_LOGGERS = ("faiss.loader",)  # which CPU build it loads, five lines on every start
_CORE_KEYS = frozenset({"ts", "level", "logger", "message", "request_id", "error"})


class RequestIdFilter(logging.Filter):
    """Stamps each record with the request id of the request being served (or None)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get()
        return True


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    if not isinstance(fields, dict):
        return {}
    return {str(k): v for k, v in fields.items() if str(k) not in _CORE_KEYS}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            out["request_id"] = request_id
        out.update(_fields(record))
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["error"] = record.exc_text
        return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """`ts LEVEL logger: message [request_id=...] key=value ...`, for people at a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        head, sep, trace = line.partition("\n")  # a stack trace stays below the line
        request_id = getattr(record, "request_id", None)
        extras = [f"request_id={request_id}"] if request_id else []
        extras += [f"{k}={json.dumps(v, default=str)}" for k, v in _fields(record).items()]
        if extras:
            head += " " + " ".join(extras)
        return head + sep + trace


def make_formatter(fmt: str) -> logging.Formatter:
    if fmt not in LOG_FORMATS:
        raise ValueError(f"unknown log format {fmt!r}: use one of {', '.join(LOG_FORMATS)}")
    return JsonFormatter() if fmt == "json" else TextFormatter()


def configure_logging(fmt: str = "json", level: str | int = "INFO") -> logging.Handler:
    """Send every log line (uvicorn's too) to stderr once, in `fmt`; returns the handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(make_formatter(fmt))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name in UVICORN_LOGGERS:
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
        uvicorn_logger.setLevel(logging.NOTSET)  # the root's level, until uvicorn sets its own
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    access = logging.getLogger("uvicorn.access")  # replaced by service.api.middleware.request_log
    access.handlers.clear()
    access.propagate = False
    access.disabled = True
    return handler
