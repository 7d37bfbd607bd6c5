"""`cpc-embed serve --workers`: several processes only where they can share the collections."""

from __future__ import annotations

import pytest

from service import cli


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
