"""`cpc-embed serve`: several processes only where they can share the collections, and a data
folder that is missing or read-only refused with one line and exit code 2 (serve and index)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from service import cli
from tests.service.small_disk import mounted_tmpfs


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "the embedded collection backend keeps the collections inside one process"),
        (
            {"CPC_COLLECTION_BACKEND": "milvus", "CPC_MILVUS_CONSISTENCY": "Session"},
            "only shows each process its own writes",
        ),
    ],
)
def test_several_workers_are_refused_where_they_cannot_share(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    message: str,
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert cli.main(["serve", "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_workers_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "--workers", "0"]) == 2
    assert "--workers must be 1 or more" in capsys.readouterr().err


def _run(command: list[str], data_dir: Path, models_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CPC_")}
    env.update(CPC_DATA_DIR=str(data_dir), CPC_MODELS_DIR=str(models_dir))
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *command],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def _assert_one_line_exit_2(done: subprocess.CompletedProcess[str], words: str) -> None:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], done.stderr
    assert "Traceback" not in done.stderr


COMMANDS = [["serve", "--port", "0"], ["index", "things", "--data", "."]]


@pytest.mark.parametrize("command", COMMANDS, ids=["serve", "index"])
def test_a_missing_data_folder_is_one_line_and_exit_2(
    command: list[str], tmp_path: Path, models_dir: Path
) -> None:
    done = _run(command, tmp_path / "not-mounted" / "data", models_dir)
    _assert_one_line_exit_2(done, "does not exist")


@pytest.mark.parametrize("command", COMMANDS, ids=["serve", "index"])
def test_a_read_only_data_folder_is_one_line_and_exit_2(
    command: list[str], tmp_path: Path, models_dir: Path
) -> None:
    with mounted_tmpfs(tmp_path / "ro", "1m", read_only=True) as folder:
        _assert_one_line_exit_2(_run(command, folder, models_dir), "is read-only")
