"""The Linux man pages as plain text, labelled by manual section: a topic task on real prose.

Only the pages `dpkg-query -L` lists for the Debian packages `manpages` and
`manpages-dev` are read (`--src` reads a folder of `manN/NAME.N[.gz]` files
instead); each is converted from roff to plain text in Python (`roff_to_text`),
one paragraph per line, and cut to `max_words`. Layout of `out`:

    out/manifest.csv              columns path,label,split,page
    out/<section>/<name>.txt      e.g. out/2/open.txt, page "open.2"

label = the section number; splits are 80/20 per section by page name. The
sections, licences and what is skipped: docs/training.md (Built-in corpora).
"""

from __future__ import annotations

import gzip
import logging
import re
import shutil
import subprocess
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from training.corpora import CorpusError
from training.corpora.manifest import Row, assign_splits, prepare_output, write_manifest

logger = logging.getLogger(__name__)

PACKAGES = ("manpages", "manpages-dev")
SECTIONS = ("2", "3", "4", "5", "7")  # not 1, 6, 8: the packages hold only ~20 such pages
TEST_FRACTION = 0.2
MIN_WORDS = 50  # shorter pages (stubs) are dropped
MAX_WORDS = 400  # default words kept after the NAME line
MISSING = "the Linux man pages are not installed: apt-get install manpages manpages-dev"
PAGE_FILE = re.compile(r"(?P<name>.+)\.(?P<ext>(?P<section>[0-9])[a-z]*)(?:\.gz)?")
REDIRECT = re.compile(r"^\.so\s", re.MULTILINE)

# -- roff to text ---------------------------------------------------------------------------

# named glyphs (\(xx, \[xx]) as plain characters; unknown names are dropped
# fmt: off
GLYPHS = {
    "em": "—", "en": "–", "hy": "-", "mi": "-", "bu": "•", "aq": "'", "dq": '"', "lq": "“",
    "rq": "”", "oq": "‘", "cq": "’", "ha": "^", "ti": "~", "rs": "\\", "sl": "/", "ga": "`",
    "ul": "_", "ba": "|", "bv": "|", "br": "|", "pl": "+", "eq": "=", "la": "<", "ra": ">",
    "at": "@", "sh": "#", "Do": "$", "<=": "≤", ">=": "≥", "!=": "≠", "==": "≡", "+-": "±",
    "mu": "×", "di": "÷", "->": "→", "<-": "←", "ua": "↑", "da": "↓", "dg": "†", "dd": "‡",
    "de": "°", "fm": "′", "sd": "″", "sc": "§", "ps": "¶", "co": "©", "rg": "®", "tm": "™",
    "12": "½", "14": "¼", "34": "¾", "mc": "µ", "if": "∞", "Fo": "«", "Fc": "»", "ss": "ß",
    "ct": "¢", "Po": "£", "Eu": "€", "eu": "€", "r!": "¡", "r?": "¿", "**": "∗",
}
# accents of composite glyphs (\['a] = á) as combining marks
ACCENTS = {"'": "\u0301", "`": "\u0300", "^": "\u0302", ":": "\u0308", "~": "\u0303",
           ",": "\u0327", "o": "\u030a", "v": "\u030c"}
# one-character escapes that print something; every other one (\& \| \^ \% \: \c...) prints nothing
SIMPLE = {"-": "-", "e": "\\", "E": "\\", "\\": "\\", "~": " ", " ": " ", "0": " ", "t": " ",
          "'": "'", "`": "`", ".": "."}
# fmt: on
GREEK = dict(zip("abgdezyhiklmncoprstufxqw", "αβγδεζηθικλμνξοπρστυφχψω", strict=True))
GLYPHS.update({f"*{k}": v for k, v in GREEK.items()})  # \(*a = α
GLYPHS.update({f"*{k.upper()}": v.upper() for k, v in GREEK.items()})
STRINGS = {"lq": "“", "rq": "”", "R": "®", "Tm": "™"}  # the man macros' predefined strings

ESCAPE = re.compile(
    r"""\\(?:
      f(?:\[[^\]]*\]|\(..|.)                           # font: \fB \fI \fR \fP \f(CW \f[BI]
    | s[-+]?(?:\(\d\d|\[[^\]]*\]|'[^']*'|\d)           # size
    | \((?P<glyph2>..) | \[(?P<glyphn>[^\]]*)\] | C'(?P<glyphq>[^']*)'
    | \*(?:\((?P<str2>..)|\[(?P<strn>[^\]]*)\]|(?P<str1>.))   # defined strings
    | [AbBDhHlLNoRSvwxXZ]'[^']*'                       # width, motion, drawing...: dropped
    | [nkgmMVYF$][-+]?(?:\(..|\[[^\]]*\]|.)            # registers, marks, macro arguments
    | (?P<one>.)
    )""",
    re.VERBOSE | re.DOTALL,
)
BREAKS = {"PP", "LP", "P", "sp", "br", "bp", "HP", "RS", "RE", "in", "ti", "nf", "fi", "EX", "EE"}
SAME_FONT = {"B", "I", "SM", "SB"}  # arguments joined by spaces
ALTERNATING = {"BR", "BI", "IB", "IR", "RB", "RI"}  # arguments joined without spaces
SKIP_TO_DOTS = {"de", "de1", "am", "ig"}  # definitions and ignored blocks end at `..`
DEFINE_IN_CONDITION = re.compile(r"(?:^|\s)\.?ds\s+(\S+)\s?(.*)$")
LINE_GLUE = re.compile(r"(?:^|[^\\])(?:\\\\)*\\c\s*$")  # text ends with \c: no space after
LINE_CONTINUES = re.compile(r"(?:^|[^\\])(?:\\\\)*\\$")  # escaped newline


def _glyph(name: str) -> str:
    if name in GLYPHS:
        return GLYPHS[name]
    if re.fullmatch(r"u[0-9A-Fa-f]{4,6}(?:_[0-9A-Fa-f]{4,6})*", name):
        return unicodedata.normalize("NFC", "".join(chr(int(h, 16)) for h in name[1:].split("_")))
    if len(name) == 2 and name[0] in ACCENTS and name[1].isalpha():
        return unicodedata.normalize("NFC", name[1] + ACCENTS[name[0]])
    return ""


def _strip_comment(line: str) -> str:
    """The line up to a `\\"` or `\\#` comment (an escaped backslash does not start one)."""
    for m in re.finditer(r"\\.", line):
        if m.group() in ('\\"', "\\#"):
            return line[: m.start()]
    return line


def _split_args(text: str) -> list[str]:
    """A macro's arguments: blank-separated, `"..."` quoted (`""` inside is one `"`)."""
    args, i, n = [], 0, len(text)
    while i < n:
        while i < n and text[i] in " \t":
            i += 1
        if i == n:
            break
        quoted = text[i] == '"'
        i += quoted
        buf = []
        while i < n:
            c = text[i]
            if c == "\\" and i + 1 < n:
                buf.append(text[i : i + 2])
                i += 2
                continue
            if quoted and c == '"':
                if text[i + 1 : i + 2] == '"':
                    buf.append('"')
                    i += 2
                    continue
                i += 1
                break
            if not quoted and c in " \t":
                break
            buf.append(c)
            i += 1
        args.append("".join(buf))
    return args


@dataclass
class _Converter:
    """roff → lines of text; feed it the source's lines in order, read `lines` at the end."""

    lines: list[str]
    strings: dict[str, str]
    para: str = ""  # the paragraph being filled
    fill: bool = True  # False inside .nf/.EX: one output line per input line
    glue: bool = False  # the last text ended with \c: join the next without a space
    line_pending: bool = False  # the next text is a heading or a .TP tag: a line of its own
    skip_to_dots: bool = False  # inside .de/.ig
    table: str = ""  # "" | "format" | "data" (inside .TS/.TE)
    table_tab: str = "\t"
    row: list[str] | None = None  # cells of the table row being read
    in_block: bool = False  # inside a table cell's T{ ... T}

    def unescape(self, text: str, depth: int = 0) -> str:
        def one(m: re.Match[str]) -> str:
            if m["glyph2"] is not None or m["glyphn"] is not None or m["glyphq"] is not None:
                return _glyph(m["glyph2"] or m["glyphn"] or m["glyphq"] or "")
            name = m["str2"] or m["strn"] or m["str1"]
            if name is not None:
                value = self.strings.get(name, "")
                return self.unescape(value, depth + 1) if depth < 5 else ""
            return SIMPLE.get(m["one"] or "", "")

        return ESCAPE.sub(one, text)

    def flush(self) -> None:
        if self.para.strip():
            self.lines.append(" ".join(self.para.split()) if self.fill else self.para.rstrip())
        self.para, self.glue = "", False

    def add(self, text: str, *, glue_after: bool = False) -> None:
        """Add text (already unescaped) to the paragraph; a no-fill line, heading or tag ends it."""
        if self.para and self.fill and not self.glue:
            self.para += " "
        self.para += text
        self.glue = glue_after
        if glue_after:
            return
        if not self.fill:
            self.flush()
        elif self.line_pending and text.strip():
            self.line_pending = False
            self.flush()

    def feed(self, line: str) -> None:
        if self.skip_to_dots:
            self.skip_to_dots = line.rstrip() != ".."
            return
        if self.table:
            self.table_line(line)
        elif line[:1] in (".", "'"):
            self.request(line[1:])
        elif not line.strip():
            self.flush()  # a blank line breaks the paragraph
        else:
            if self.fill and line[0] in " \t":
                self.flush()  # so does a leading blank
            text = self.unescape(line)
            glue = bool(LINE_GLUE.search(line))
            self.add(text if self.fill else text.expandtabs(), glue_after=glue)

    def request(self, body: str) -> None:
        name, rest = [*body.strip().split(maxsplit=1), "", ""][:2]
        args = [self.unescape(a) for a in _split_args(rest)]
        glue = bool(LINE_GLUE.search(rest))
        if name in SKIP_TO_DOTS:
            self.skip_to_dots = True
        elif name in ("SH", "SS"):
            self.flush()
            self.fill = True
            if args:
                self.lines.append(" ".join(" ".join(args).split()))
            else:
                self.line_pending = True
        elif name in ("TP", "TQ"):
            self.flush()
            self.line_pending = True
        elif name == "IP":
            self.flush()
            self.para = args[0] if args else ""
        elif name in SAME_FONT or name in ALTERNATING:
            if args:
                self.add((" " if name in SAME_FONT else "").join(args), glue_after=glue)
        elif name in ("UE", "ME"):  # the end of a link: what follows it (punctuation)
            self.para += "".join(args)
        elif name == "q":  # tzfile(5)'s quoting macro: .q text [after [before]]
            if args:
                quoted = f"{args[2] if len(args) > 2 else ''}“{args[0]}”{''.join(args[1:2])}"
                self.add(quoted, glue_after=glue)
        elif name == "ds":
            self.define(rest)
        elif name in ("if", "ie", "el"):
            found = DEFINE_IN_CONDITION.search(rest)
            if found:  # only string definitions are taken from conditionals (the last wins)
                self.define(f"{found[1]} {found[2]}")
        elif name == "TS":
            self.flush()
            self.table, self.table_tab, self.row = "format", "\t", []
        elif name in BREAKS:
            self.flush()
            if name in ("nf", "EX", "fi", "EE"):
                self.fill = name in ("fi", "EE")
        # every other request (.TH, .ad, .nh, .PD, .ft, .UR, .so...) is dropped with its arguments

    def define(self, rest: str) -> None:
        key, _, value = rest.partition(" ")
        self.strings[key] = value[1:] if value.startswith('"') else value

    def table_line(self, line: str) -> None:
        """One line between .TS and .TE: options and format lines are dropped, one row a line."""
        stripped = line.strip()
        if line[:1] in (".", "'") and not self.in_block:
            request = line[1:].strip()
            if request.startswith("TE"):
                self.table = ""
            elif request.startswith("T&"):
                self.table = "format"
            return
        if self.table == "format":
            if stripped.endswith(";"):  # options, e.g. "allbox tab(:);"
                tab = re.search(r"tab\s*\((.)\)", stripped)
                self.table_tab = tab[1] if tab else self.table_tab
            elif stripped.endswith("."):
                self.table = "data"
            return
        row = self.row if self.row is not None else []
        if self.in_block:
            if not stripped.startswith("T}"):
                if line[:1] not in (".", "'"):
                    row.append(self.unescape(line))
                return
            self.in_block, line = False, stripped[2:].lstrip(self.table_tab)
            if not line:
                self.end_row(row)
                return
        if stripped in ("_", "=", "\\_"):
            return
        cells = line.split(self.table_tab)
        if cells[-1].strip() == "T{":
            self.in_block = True
            cells.pop()
        row.extend(self.unescape(c) for c in cells if c.strip() not in ("", "_", "="))
        if self.in_block:
            self.row = row
        else:
            self.end_row(row)

    def end_row(self, row: list[str]) -> None:
        text = " ".join(" ".join(row).split())
        if text:
            self.lines.append(text)
        self.row = []


def roff_to_text(source: str) -> str:
    """A man page's roff source as plain text: one paragraph, heading or table row a line.

    Kept: the text, the headings (.SH/.SS), the arguments of the font macros
    (.B/.I/.BR/.IR/.RB/.BI... without their quotes), .TP tags and .IP labels,
    table rows, no-fill blocks (.nf/.EX) line by line. Dropped: comments, the
    .TH title and every other request with its arguments, table formats, font
    and size changes and every escape that prints nothing. \\- becomes -, named
    glyphs (\\(em, \\[bu], \\(aq...) their characters, strings (\\*(lq, or
    defined by .ds) their values.
    """
    source = source.replace("\r\n", "\n")
    joined: list[str] = []
    for line in map(_strip_comment, source.split("\n")):
        if joined and LINE_CONTINUES.search(joined[-1]):
            joined[-1] = joined[-1][:-1] + line
        else:
            joined.append(line)
    converter = _Converter(lines=[], strings=dict(STRINGS))
    for line in joined:
        converter.feed(line)
    converter.flush()
    return "\n".join(converter.lines) + "\n" if converter.lines else ""


def first_words(text: str, max_words: int | None) -> str:
    """The NAME heading and line whole, then the first `max_words` words (None: all)."""
    lines = text.splitlines()
    head = 2 if len(lines) > 1 and lines[0] == "NAME" else 0
    kept, budget = lines[:head], max_words
    for line in lines[head:]:
        if budget is not None:
            if budget <= 0:
                break
            words = line.split()
            if len(words) > budget:
                line = " ".join(words[:budget])
            budget -= len(words)
        kept.append(line)
    return "\n".join(kept) + "\n"


# -- the pages and the corpus ---------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    """One man page file: `open.2.gz` → section "2", name "open", ext "2"."""

    path: Path
    section: str
    name: str
    ext: str

    @property
    def page(self) -> str:
        """name.section as `man` spells it: "open.2", "FILE.3type"."""
        return f"{self.name}.{self.ext}"


def _pages(paths: list[Path]) -> list[Page]:
    """The pages among `paths` (files in manN/ folders) of `SECTIONS`, without symlinks."""
    pages, links = [], 0
    for path in sorted(paths):
        m = PAGE_FILE.fullmatch(path.name)
        if m is None or path.parent.name != f"man{m['section']}" or m["section"] not in SECTIONS:
            continue
        if path.is_symlink():
            links += 1  # another name for a page read under its own name
            continue
        if path.is_file():
            pages.append(Page(path, m["section"], m["name"], m["ext"]))
    logger.info("%d man pages in sections %s, %d links skipped", len(pages), SECTIONS, links)
    return pages


def installed_pages(packages: tuple[str, ...] = PACKAGES) -> list[Page]:
    """The pages of `SECTIONS` that `dpkg-query -L` lists for `packages`."""
    if shutil.which("dpkg-query") is None:
        raise CorpusError(f"dpkg-query is not available: {MISSING}")
    proc = subprocess.run(
        ["dpkg-query", "-L", *packages], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise CorpusError(MISSING)
    listed = [
        Path(line)
        for line in proc.stdout.splitlines()
        if re.fullmatch(r"/usr/share/man/man[0-9]/[^/]+", line)
    ]
    pages = _pages(listed)
    if not pages:
        raise CorpusError(
            f"dpkg lists {len(listed)} man page files for {', '.join(packages)} but none is on "
            "disk (is /usr/share/man excluded in /etc/dpkg/dpkg.cfg.d/?)"
        )
    return pages


def folder_pages(src: Path) -> list[Page]:
    """The pages of `SECTIONS` in a folder of manN/NAME.N[.gz] files."""
    pages = _pages(list(Path(src).glob("man[0-9]/*"))) if Path(src).is_dir() else []
    if not pages:
        raise CorpusError(f"{src} holds no man pages of sections {', '.join(SECTIONS)} (manN/*.N)")
    return pages


def read_page(path: Path) -> str:
    """A page's roff source (gunzipped when its name ends in .gz), decoded as UTF-8."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return raw.decode("utf-8", errors="replace")


def build_manpages(
    out: Path, *, seed: int = 0, max_words: int | None = MAX_WORDS, src: Path | None = None
) -> Path:
    """Build the man-page corpus in `out` (see the module docstring); returns `out`.

    `src`: a folder of manN/ pages instead of the installed packages;
    `max_words`: words kept after the NAME line (None: the whole page)."""
    pages = folder_pages(src) if src is not None else installed_pages()
    skipped: Counter[str] = Counter()
    texts: dict[str, dict[str, tuple[Page, str]]] = {}  # section -> file name -> page, text
    for page in pages:
        source = read_page(page.path)
        if REDIRECT.search(source):
            skipped["redirections"] += 1
            continue
        text = roff_to_text(source)
        if len(text.split()) < MIN_WORDS:
            skipped[f"under {MIN_WORDS} words"] += 1
            continue
        same_section = texts.setdefault(page.section, {})
        if page.name in same_section:
            skipped["duplicate names"] += 1
            continue
        same_section[page.name] = (page, first_words(text, max_words))
    logger.info("skipped pages: %s", dict(skipped) or "none")
    if not texts:
        raise CorpusError(f"no man page of {MIN_WORDS} words or more found")
    out = Path(out)
    prepare_output(out)
    rows = []
    for section, by_name in sorted(texts.items()):
        (out / section).mkdir()
        kept = list(by_name.values())
        splits = assign_splits([p.page for p, _ in kept], seed=seed, test_fraction=TEST_FRACTION)
        for (page, text), split in zip(kept, splits, strict=True):
            rel = f"{section}/{page.name}.txt"
            (out / rel).write_text(text, encoding="utf-8")
            rows.append(Row(path=rel, label=section, split=split, extra={"page": page.page}))
    write_manifest(out, rows)
    return out
