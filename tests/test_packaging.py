"""Packaging: the container recipe, and the two installs the extras make.

The fast tests read the Dockerfile (multi-stage, non-root, health-checked, only
the `serve` extra in the runtime image), .dockerignore and docker-compose.yml.
The install tests use fresh virtual environments: the serving one repeats the
image's install steps (no torch there; the service starts from it and embeds,
and `embed-folder` runs), the training one installs the `train` extra alone (no
web stack there; every training command runs).
`scripts/docker-check.sh` builds and runs the real image (by hand: it needs Docker).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
MODALITIES = ("audio", "image", "text")
READY_TIMEOUT_S = 120.0


# --------------------------------------------------------------- helpers


def export_tiny_bundles(dest: Path) -> list[str]:
    """Export one tiny, untrained bundle per modality into `dest/<modality>`.

    Used here and by scripts/docker-check.sh when models/ holds no bundles.
    Needs torch (the dev install); imported here so the Dockerfile tests don't.
    """
    import torch

    from tests.training.tiny import tiny_config
    from training.export.onnx_export import export_model
    from training.models.cpc import build_model
    from training.tokenizer import train_tokenizer

    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        for modality in MODALITIES:
            cfg = tiny_config(modality)
            torch.manual_seed(0)
            tokenizer = None
            if modality == "text":
                texts = ["hello world.", "a few words.", "and a few more words."]
                tokenizer = train_tokenizer(texts, 300, Path(scratch) / "tokenizer.json")
            model = build_model(cfg).eval()
            export_model(model, cfg, dest / modality, name=modality, tokenizer_path=tokenizer)
    return list(MODALITIES)


@dataclass
class Stage:
    """One build stage of a Dockerfile: its base, its name and its instructions."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, instruction: str) -> list[str]:
        return [a for i, a in self.instructions if i == instruction]


def parse_dockerfile(text: str) -> list[Stage]:
    """Split a Dockerfile into stages of (INSTRUCTION, arguments) pairs.

    Handles what this repository's Dockerfile uses: comments (also inside a
    continued instruction, as Docker does) and backslash continuations.
    """
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            logical.append(current.strip())
        current = ""
    stages: list[Stage] = []
    for line in logical:
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            m = re.fullmatch(r"(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", args.strip(), re.IGNORECASE)
            assert m, f"unparsed FROM: {args}"
            stages.append(Stage(base=m.group(1), name=m.group(2)))
        elif stages:
            stages[-1].instructions.append((instruction, " ".join(args.split())))
    return stages


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Loopback only, whatever proxy the environment names.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with _OPENER.open(req, timeout=30) as r:
            return int(r.status), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return int(e.code), json.loads(e.read() or b"{}")


# --------------------------------------------------------------- the recipe


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


def _runtime(stages: list[Stage]) -> Stage:
    """The stage a plain `docker build .` makes: the last one."""
    return stages[-1]


def _ancestry(stages: list[Stage], stage: Stage) -> list[Stage]:
    """`stage` and every stage it copies from or builds on, by name."""
    by_name = {s.name: s for s in stages if s.name}
    seen: list[Stage] = []
    todo = [stage]
    while todo:
        s = todo.pop()
        if any(s is t for t in seen):
            continue
        seen.append(s)
        refs = [s.base] + [
            m.group(1) for a in s.args("COPY") if (m := re.search(r"--from=(\S+)", a))
        ]
        todo.extend(by_name[r] for r in refs if r in by_name)
    return seen


def test_dockerfile_is_multi_stage(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    assert any(s.name == "builder" for s in stages)
    runtime = _runtime(stages)
    assert runtime.base == "${BASE_IMAGE}" and runtime.name == "runtime"
    assert any(a.startswith("--from=builder /opt/venv") for a in runtime.args("COPY"))
    # Nothing is installed in the runtime stage itself: it only copies the venv.
    assert not any("pip" in a for a in runtime.args("RUN"))
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", text, re.MULTILINE)


def test_runtime_runs_as_non_root(stages: list[Stage]) -> None:
    users = _runtime(stages).args("USER")
    assert users, "the runtime stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")


def test_runtime_has_a_healthcheck_and_the_serve_command(stages: list[Stage]) -> None:
    runtime = _runtime(stages)
    (health,) = runtime.args("HEALTHCHECK")
    assert "/health" in health and "/opt/venv/bin/python" in health and "urllib" in health
    assert runtime.args("EXPOSE") == ["8000"]
    assert runtime.args("VOLUME") == ['["/data"]']
    env = " ".join(runtime.args("ENV"))
    assert "CPC_MODELS_DIR=/models" in env and "CPC_DATA_DIR=/data" in env
    # The bundles come from models/, through a stage that makes them readable.
    (models,) = [s for s in stages if s.name == "models"]
    assert "models/ /models/" in models.args("COPY")
    assert "--from=models /models /models" in runtime.args("COPY")
    (cmd,) = runtime.args("CMD")
    assert json.loads(cmd) == ["cpc-embed", "serve", "--host", "0.0.0.0", "--port", "8000"]


def test_runtime_image_installs_only_the_serve_extra(stages: list[Stage]) -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    extras = pyproject["project"]["optional-dependencies"]
    runs = [a for s in _ancestry(stages, _runtime(stages)) for a in s.args("RUN")]
    installs = [a for a in runs if "pip install" in a]
    assert installs
    named = {e for a in runs for e in re.findall(r"\.\[([a-z,]+)\]", a)}
    assert named == {"serve"}, f"extras installed for the runtime image: {named}"
    # The requirements step reads the base dependencies and the `serve` extra only.
    reqs = " ".join(a for a in runs if "tomllib" in a)
    assert re.findall(r"\['optional-dependencies'\]\['(\w+)'\]", reqs) == ["serve"]
    assert not any("torch" in a.split("pip install", 1)[1].split("&&")[0] for a in installs)
    for extra in set(extras) - {"serve"}:
        assert f"[{extra}" not in " ".join(runs) and f",{extra}" not in " ".join(runs)


def test_train_stage_is_separate_and_pins_torch(stages: list[Stage]) -> None:
    (train,) = [s for s in stages if s.name == "train"]
    assert not any(train is s for s in _ancestry(stages, _runtime(stages)))
    assert any(".[serve,train]" in a for a in train.args("RUN"))
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert any(
        re.fullmatch(r"torch==[\d.]+", r)
        for r in pyproject["project"]["optional-dependencies"]["train"]
    )


def test_dockerignore_keeps_local_state_out() -> None:
    lines = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", "data", "runs", ".git", "tests", "bench", ".pytest_cache"} <= lines
    # What the image needs must not be ignored.
    assert not lines & {"models", "service", "training", "pyproject.toml", "README.md"}


def test_compose_file() -> None:
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    api = compose["services"]["api"]
    assert api["build"]["context"] == "." and api["build"]["target"] == "runtime"
    assert api["ports"] == ["127.0.0.1:${PORT:-8000}:8000"]
    assert "cpc-data:/data" in api["volumes"] and "./models:/models:ro" in api["volumes"]
    assert "/health" in " ".join(api["healthcheck"]["test"])
    assert api["restart"] == "unless-stopped"
    # Every setting passes through, but the two folders the image fixes (/models, /data).
    from service.config import Settings

    settings = {f"CPC_{name.upper()}" for name in Settings.model_fields}
    assert set(api["environment"]) == settings - {"CPC_MODELS_DIR", "CPC_DATA_DIR"}
    assert "cpc-data" in compose["volumes"]
    train = compose["services"]["train"]
    assert train["profiles"] == ["train"] and train["build"]["target"] == "train"


# --------------------------------------------------------------- the install


def _serve_requirements() -> list[str]:
    """What the Dockerfile's requirements step writes: base deps + `serve`."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return list(project["dependencies"]) + list(project["optional-dependencies"]["serve"])


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything that would put the repository on sys.path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(extra)
    return env


def _copy_source(dest: Path) -> Path:
    """The files an install reads, copied (as the image copies them) without caches."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for pkg in ("service", "training"):
        shutil.copytree(ROOT / pkg, dest / pkg, ignore=ignore)
    return dest


def _new_venv(path: Path) -> tuple[Path, list[str]]:
    """A fresh virtual environment: its bin folder and its `pip install -q` command."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    bin_ = path / "bin"
    return bin_, [str(bin_ / "python"), "-m", "pip", "install", "-q"]


def _importable(bin_: Path, module: str, cwd: Path) -> bool:
    found = subprocess.run(
        [str(bin_ / "python"), "-c", f"import {module}"],
        capture_output=True,
        env=_clean_env(),
        cwd=cwd,
    )
    return found.returncode == 0


def test_serving_install_has_no_torch_and_serves(tmp_path: Path) -> None:
    # The same steps as the Dockerfile's builder: a venv, the requirements from
    # pyproject.toml, then the project (copied, as the image does) with --no-deps.
    src = _copy_source(tmp_path / "src")
    (tmp_path / "serve-requirements.txt").write_text("\n".join(_serve_requirements()) + "\n")

    bin_, pip = _new_venv(tmp_path / "venv")
    env = _clean_env(PIP_DISABLE_PIP_VERSION_CHECK="1")
    subprocess.run(
        [*pip, "-r", str(tmp_path / "serve-requirements.txt")], check=True, env=env, cwd=tmp_path
    )
    subprocess.run([*pip, "--no-deps", f"{src}[serve]"], check=True, env=env, cwd=tmp_path)
    subprocess.run([str(bin_ / "python"), "-m", "pip", "check"], check=True, env=env, cwd=tmp_path)

    assert not _importable(bin_, "torch", tmp_path), "torch is importable in the serving install"

    # Training commands say, in one line, that they need the `train` extra.
    train = subprocess.run(
        [str(bin_ / "cpc-embed"), "train", "--modality", "audio", "--data", "x", "--out", "y"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert train.returncode == 2, train
    assert len(train.stderr.strip().splitlines()) == 1 and "`train` extra" in train.stderr

    models = export_tiny_bundles(tmp_path / "models")
    texts = tmp_path / "texts"
    texts.mkdir()
    for i in range(3):
        (texts / f"{i}.txt").write_text(f"Note number {i}. It has two sentences.")
    offline = subprocess.run(
        [
            str(bin_ / "cpc-embed"),
            "embed-folder",
            str(tmp_path / "models" / "text"),
            str(texts),
            "--out",
            str(tmp_path / "texts.npz"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert offline.returncode == 0, offline.stderr
    import numpy as np

    with np.load(tmp_path / "texts.npz") as vectors:
        assert sorted(vectors["ids"]) == ["0.txt", "1.txt", "2.txt"]
        assert vectors["vectors"].shape == (3, 16)

    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [str(bin_ / "cpc-embed"), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=_clean_env(
            CPC_MODELS_DIR=str(tmp_path / "models"), CPC_DATA_DIR=str(tmp_path / "data")
        ),
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        status = 0
        while time.monotonic() < deadline:
            assert proc.poll() is None, (
                "the server exited:\n" + (tmp_path / "serve.log").read_text()
            )
            try:
                status, _ = http(base + "/ready")
            except (OSError, ValueError):
                status = 0
            if status == 200:
                break
            time.sleep(0.5)
        assert status == 200, "not ready in time:\n" + (tmp_path / "serve.log").read_text()

        status, listed = http(base + "/models")
        assert status == 200
        assert sorted(m["modality"] for m in listed["models"]) == sorted(models)
        status, out = http(base + "/embed", {"modality": "text", "inputs": ["hello world."]})
        assert status == 200, out
        assert out["modality"] == "text" and out["dim"] == 16
        (vector,) = out["embeddings"]
        assert len(vector) == 16
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


WORDS = [
    "river",
    "stone",
    "cloud",
    "lamp",
    "garden",
    "window",
    "paper",
    "engine",
    "violin",
    "harbor",
    "forest",
    "candle",
]


def _labelled_texts(root: Path, per_class: int = 8) -> Path:
    """Two classes of short documents with a manifest.csv giving each a label and a split."""
    rows = ["path,label,split"]
    for label, offset in (("even", 0), ("odd", 1)):
        folder = root / label
        folder.mkdir(parents=True)
        for i in range(per_class):
            words = WORDS[offset::2]
            text = " ".join(
                f"The {words[(i + k) % len(words)]} is near the {words[k % len(words)]}."
                for k in range(4)
            )
            (folder / f"{i}.txt").write_text(text)
            rows.append(f"{label}/{i}.txt,{label},{'test' if i % 4 == 0 else 'train'}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


def test_training_install_runs_every_training_command(tmp_path: Path) -> None:
    from tests.training.tiny import tiny_config

    src = _copy_source(tmp_path / "src")
    bin_, pip = _new_venv(tmp_path / "venv")
    env = _clean_env(PIP_DISABLE_PIP_VERSION_CHECK="1", OMP_NUM_THREADS="1")
    subprocess.run([*pip, f"{src}[train]"], check=True, env=env, cwd=tmp_path)
    subprocess.run([str(bin_ / "python"), "-m", "pip", "check"], check=True, env=env, cwd=tmp_path)
    for web in ("fastapi", "pydantic_settings", "faiss"):
        assert not _importable(bin_, web, tmp_path), f"{web} is in the train-only install"

    def cpc(*args: str | Path) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(bin_ / "cpc-embed"), *map(str, args)],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        assert done.returncode == 0, f"cpc-embed {args[0]}: {done.stderr[-3000:]}"
        return done

    for command in ("train", "export", "quantize", "eval", "data"):
        assert "usage: cpc-embed " + command in cpc(command, "--help").stdout
    data = _labelled_texts(tmp_path / "texts")
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny_config("text", steps=2).to_dict()))
    run, bundle = tmp_path / "run", tmp_path / "bundle"
    cpc(
        "train",
        "--modality",
        "text",
        "--data",
        data,
        "--out",
        run,
        "--config",
        config,
        "--steps",
        "2",
        "--no-progress",
    )
    cpc("export", run, "--out", bundle)
    spec = json.loads((bundle / "bundle.json").read_text())
    assert spec["modality"] == "text" and (bundle / spec["onnx"]["file"]).is_file()
    cpc("eval", bundle, "--data", data, "--out", tmp_path / "report")
    report = json.loads((tmp_path / "report" / "eval.json").read_text())
    assert set(report["results"]) >= {"cpc_context", "random_init", "baseline_tfidf"}
