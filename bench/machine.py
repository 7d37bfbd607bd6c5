"""What a benchmark ran on, stored beside every result, and the chores all benchmarks share.

`machine_info` is the CPU, cores, versions and date; `machine_line` is its
first sentence in a result's Markdown. `setup_logging` configures the log of
a benchmark's `main`; `write_results` writes its JSON (and Markdown) files.
"""

from __future__ import annotations

import json
import logging
import os
import platform
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    versions = {}
    for pkg in ("torch", "onnxruntime", "numpy", "faiss-cpu", "fastapi", "uvicorn"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def machine_line(machine: dict[str, Any], package: str) -> str:
    """'<cpu>, <n> cores, <package> <version>, <date>' of a `machine_info` dict."""
    version = machine["versions"].get(package, "?")
    return f"{machine['cpu']}, {machine['cpu_count']} cores, {package} {version}, {machine['date']}"


def setup_logging() -> None:
    """INFO logs with times, without httpx's line per request."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)


def write_results(
    out: Path, stem: str, report: dict[str, Any], markdown: str | None = None
) -> None:
    """`out/<stem>.json` (indented) and, when given, `out/<stem>.md`; `out` is created."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if markdown is not None:
        (out / f"{stem}.md").write_text(markdown, encoding="utf-8")
