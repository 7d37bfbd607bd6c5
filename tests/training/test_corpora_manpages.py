"""The man-page corpus: roff to text, the pages read and skipped, labels, page-wise splits."""

from __future__ import annotations

import gzip
import logging
import os
import re
from collections import Counter
from pathlib import Path

import pytest

from tests.training.test_corpora import assert_consistent, parse, snapshot
from training.corpora import CorpusError
from training.corpora.cli import run_data_command
from training.corpora.manpages import (
    MISSING,
    SECTIONS,
    build_manpages,
    first_words,
    installed_pages,
    roff_to_text,
)

PAGE = r""".\" Copyright (C) 2024 A. Nonymous
.\" SPDX-License-Identifier: Linux-man-pages-copyleft
.TH demo 2 2024-01-01 "Linux man-pages 6.03"
.ds dg (!)
.SH NAME
demo \- show the converter\(emall of it
.SH SYNOPSIS
.nf
.B #include <demo.h>
.PP
.BI "int demo(int " fd ", const char *" path );
.fi
.SH DESCRIPTION
The
.BR demo ()
call opens \fIpath\fP with \fBO_RDONLY\fR and \f(CWflags\fP;
it is \[lq]quoted\[rq], costs \(ti5\ ms\*(dg and says \e0 \(em a backslash.
.\" a comment line that must not show
Second line of the same paragraph \" with a trailing comment
ends here.
.PP
A new paragraph with a continued \
line and \%hyphen\-less \&.dots and a caf\['e] \[u00FC]ber glyph.
.SS Flags
.TP
.B O_DEMO
Tag body text.
.IP \[bu] 2
A bulleted item
.TS
tab(:);
l l.
Name:Meaning
_
one:T{
a block cell
T}
.TE
.SH SEE ALSO
.BR open (2),
.IR fd ,
.BR read (2)
"""

EXPECTED = """NAME
demo - show the converter—all of it
SYNOPSIS
#include <demo.h>
int demo(int fd, const char *path);
DESCRIPTION
The demo() call opens path with O_RDONLY and flags; it is “quoted”, costs ~5 ms(!) and says \\0 — a backslash. Second line of the same paragraph ends here.
A new paragraph with a continued line and hyphen-less .dots and a café über glyph.
Flags
O_DEMO
Tag body text.
• A bulleted item
Name Meaning
one a block cell
SEE ALSO
open(2), fd, read(2)
"""  # noqa: E501

FILLER = (
    "This page describes a part of the system in plain words so that it is long "
    "enough to be kept: it has a description, some details about its arguments, "
    "its return value, its errors, its history and the standards it follows, and "
    "notes on how to use it well in a program that runs for a long time."
)


def page_source(name: str, section: str, words: str = FILLER) -> str:
    return (
        f'.TH {name} {section} 2024-01-01 "Linux man-pages 6.03"\n'
        f".SH NAME\n{name} \\- the {name} page\n.SH DESCRIPTION\n"
        f".B {name}\n{words}\n.PP\nSee \\fBintro\\fP({section}).\n"
    )


def make_man_folder(root: Path) -> Path:
    """Pages in sections 2, 3 (some gzipped), 5 and 7, plus pages the builder must skip."""
    counts = {"2": 6, "3": 11, "5": 2, "7": 3}
    for section, n in counts.items():
        folder = root / f"man{section}"
        folder.mkdir(parents=True)
        for i in range(n):
            name = f"s{section}p{i}"
            data = page_source(name, section).encode()
            if i % 2:
                (folder / f"{name}.{section}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / f"{name}.{section}").write_bytes(data)
    (root / "man2" / "demo.2").write_text(PAGE, encoding="utf-8")
    (root / "man3" / "FILE.3type").write_text(page_source("FILE", "3"), encoding="utf-8")
    # skipped: a .so redirection, a symlink, a stub, another section, a non-page file
    (root / "man3" / "alias.3").write_text(".so man2/demo.2\n", encoding="utf-8")
    os.symlink("s3p1.3.gz", root / "man3" / "link.3.gz")
    (root / "man7" / "stub.7").write_text(page_source("stub", "7", "Too short."))
    (root / "man1").mkdir()
    (root / "man1" / "tool.1").write_text(page_source("tool", "1"), encoding="utf-8")
    (root / "man5" / "README").write_text("not a page")
    return root


def test_roff_to_text() -> None:
    assert roff_to_text(PAGE) == EXPECTED


def test_first_words_keeps_the_name_line_whole() -> None:
    text = "NAME\nx - one two three\nDESCRIPTION\nfour five six\nseven\n"
    assert first_words(text, 3) == "NAME\nx - one two three\nDESCRIPTION\nfour five\n"
    assert first_words(text, 5) == "NAME\nx - one two three\nDESCRIPTION\nfour five six\nseven\n"
    assert first_words(text, None) == text
    assert first_words("no name here\n", 2) == "no name\n"


def test_pages_labels_and_page_wise_splits(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = make_man_folder(tmp_path / "src")
    with caplog.at_level(logging.INFO, logger="training.corpora.manpages"):
        out = build_manpages(tmp_path / "out", src=src, seed=0)
    assert "1 links skipped" in caplog.text
    assert "'redirections': 1" in caplog.text and "'under 50 words': 1" in caplog.text
    rows = assert_consistent(out)
    pages = {r.extra["page"]: r for r in rows}
    assert set(pages) == {
        *(f"s{s}p{i}.{s}" for s, n in {"2": 6, "3": 11, "5": 2, "7": 3}.items() for i in range(n)),
        "demo.2",
        "FILE.3type",
    }
    assert pages["FILE.3type"].path == "3/FILE.txt" and pages["FILE.3type"].label == "3"
    assert pages["s3p1.3"].path == "3/s3p1.txt"  # read from the .gz
    assert all(r.label == r.path.split("/")[0] == r.extra["page"].split(".")[1][0] for r in rows)
    assert (out / "2" / "demo.txt").read_text(encoding="utf-8") == EXPECTED
    counts = Counter((r.label, r.split) for r in rows)
    for section, n in {"2": 7, "3": 12, "5": 2, "7": 3}.items():
        n_test = max(1, round(0.2 * n))
        assert (counts[section, "train"], counts[section, "test"]) == (n - n_test, n_test)
    train = {r.extra["page"] for r in rows if r.split == "train"}
    assert not train & {r.extra["page"] for r in rows if r.split == "test"}
    assert len(pages) == len(rows)  # a page is in one split only
    assert snapshot(out) == snapshot(build_manpages(tmp_path / "again", src=src, seed=0))
    other = read_splits(build_manpages(tmp_path / "seed1", src=src, seed=1))
    assert other != {r.extra["page"]: r.split for r in rows}


def read_splits(out: Path) -> dict[str, str]:
    return {r.extra["page"]: r.split for r in assert_consistent(out)}


def test_max_words(tmp_path: Path) -> None:
    src = make_man_folder(tmp_path / "src")
    out = build_manpages(tmp_path / "out", src=src, max_words=10)
    text = (out / "2" / "s2p0.txt").read_text(encoding="utf-8")
    assert text.startswith("NAME\ns2p0 - the s2p0 page\nDESCRIPTION\ns2p0 This page")
    assert len(text.split()) == 1 + 5 + 10  # NAME, its line, then 10 words
    whole = build_manpages(tmp_path / "whole", src=src, max_words=None)
    assert (whole / "2" / "s2p0.txt").read_text(encoding="utf-8").endswith("See intro(2).\n")
    assert read_splits(out) == read_splits(whole)  # the cap does not move pages


def test_missing_pages_and_packages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(CorpusError, match="holds no man pages of sections 2, 3, 4, 5, 7"):
        build_manpages(tmp_path / "out", src=tmp_path / "nowhere")
    with pytest.raises(CorpusError, match="apt-get install manpages manpages-dev"):
        installed_pages(("no-such-package-cpc-embed",))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    code = run_data_command(parse(["data", "manpages", "--out", str(tmp_path / "cli")]))
    assert code == 1
    assert capsys.readouterr().err == (
        f"cpc-embed data: error: dpkg-query is not available: {MISSING}\n"
    )


def test_cli_builds_manpages(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = make_man_folder(tmp_path / "src")
    argv = ["data", "manpages", "--out", str(tmp_path / "out"), "--src", str(src)]
    with caplog.at_level(logging.INFO, logger="training.corpora.cli"):
        assert run_data_command(parse([*argv, "--max-words", "5", "--seed", "2"])) == 0
    assert "24 files, 4 labels, 19 train / 5 test" in caplog.text
    text = (tmp_path / "out" / "3" / "FILE.txt").read_text(encoding="utf-8")
    assert len(text.split()) == 1 + 5 + 5


def test_the_installed_packages(tmp_path: Path) -> None:
    try:
        installed_pages()
    except CorpusError as exc:
        pytest.skip(str(exc))
    out = build_manpages(tmp_path / "out", max_words=60)
    rows = assert_consistent(out)
    assert {r.label for r in rows} == set(SECTIONS)
    by_split = {s: {r.label for r in rows if r.split == s} for s in ("train", "test")}
    assert by_split["train"] == by_split["test"] == set(SECTIONS)
    text = (out / "2" / "open.txt").read_text(encoding="utf-8")
    assert text.startswith("NAME\nopen, openat, creat - open and possibly create a file\n")
    leftovers = re.compile(r"\\f|\\\(|\\\[|\\\*|^\.[A-Za-z]{1,2}( |$)|T\{", re.MULTILINE)
    for row in rows:
        assert not leftovers.search((out / row.path).read_text(encoding="utf-8")), row.path
