"""Text preprocessing shared by training and the service.

A document is cut into units, each a row of subword ids from the bundle's
`tokenizers` file, truncated to `max_tokens` and right-padded with `pad_id`.
Two splitters exist: "rules-v1" makes one unit per sentence (fixed rules, see
`split_sentences`); "chunks-v1" joins the sentences with single spaces,
tokenises the whole text and cuts the ids into consecutive units of
`chunk_tokens`, so short texts still give the autoregressor several steps.
The rules are part of the bundle contract: changing them changes what a
trained model sees, so a new rule set needs a new splitter name.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from service.bundle import TextPreprocess
from service.errors import BundleError, InvalidInput

logger = logging.getLogger(__name__)

SPLITTER = "rules-v1"  # one unit per sentence
CHUNK_SPLITTER = "chunks-v1"  # units of `chunk_tokens` consecutive tokens
SPLITTERS = (SPLITTER, CHUNK_SPLITTER)
UNK_TOKENS = ("[UNK]", "<unk>", "<UNK>")

# Words that end in a period without ending the sentence (compared lower-case,
# with the period, after stripping opening brackets and quotes).
ABBREVIATIONS = frozenset(
    [
        "mr.",
        "mrs.",
        "ms.",
        "dr.",
        "prof.",
        "sr.",
        "jr.",
        "st.",
        "mt.",
        "vs.",
        "etc.",
        "e.g.",
        "i.e.",
        "cf.",
        "al.",
        "approx.",
        "no.",
        "nos.",
        "fig.",
        "figs.",
        "vol.",
        "pp.",
        "p.",
        "ed.",
        "eds.",
        "inc.",
        "ltd.",
        "co.",
        "corp.",
        "dept.",
        "est.",
        "u.s.",
        "u.k.",
        "u.n.",
        "e.u.",
        "a.m.",
        "p.m.",
        "jan.",
        "feb.",
        "mar.",
        "apr.",
        "jun.",
        "jul.",
        "aug.",
        "sep.",
        "sept.",
        "oct.",
        "nov.",
        "dec.",
        "mon.",
        "tue.",
        "wed.",
        "thu.",
        "fri.",
        "sat.",
        "sun.",
    ]
)
_PARAGRAPHS = re.compile(r"\n[^\S\n]*\n\s*")
_SPACES = re.compile(r"\s+")
# A run of terminators, closing quotes/brackets, then whitespace or the end.
# CJK full-width terminators end a sentence even with no space after them.
# The look-behind and possessive runs keep matching linear on long runs.
_BOUNDARY = re.compile(
    r"(?:(?<![.!?…])[.!?…]++[\"'”’»)\]]*+(?=\s|$))|(?:[。！？]++[\"'”’」』）\])]*+)"
)
_OPENERS = "\"'“‘«([{"


def _is_abbreviation(paragraph: str, start: int, end: int) -> bool:
    """True when the terminator run at [start, end) is the period of an abbreviation."""
    if paragraph[start:end] != ".":
        return False
    word_start = paragraph.rfind(" ", 0, start) + 1
    word = paragraph[word_start:end].lstrip(_OPENERS).lower()
    if word in ABBREVIATIONS:
        return True
    # A single-letter initial ("J. Smith"), but not the lone pronoun "I."
    return len(word) == 2 and word[0].isalpha() and word != "i."


def _split_paragraph(paragraph: str) -> list[str]:
    sentences: list[str] = []
    begin = 0
    for match in _BOUNDARY.finditer(paragraph):
        if _is_abbreviation(paragraph, match.start(), match.end()):
            continue
        sentences.append(paragraph[begin : match.end()])
        begin = match.end()
    sentences.append(paragraph[begin:])
    return sentences


def split_sentences(text: str) -> list[str]:
    """Split text into sentences by the "rules-v1" rules.

    NFC-normalise; break at blank lines; collapse every whitespace run to one
    space; end a sentence after `.`, `!`, `?` or `…` (a run of them, plus any
    closing quotes or brackets) followed by whitespace or the end of the
    text, and after `。`, `！`, `？` wherever they occur. A single `.` ending
    a known abbreviation (Mr., Dr., e.g., i.e., etc., U.S., ...) or a
    one-letter initial does not end a sentence; decimals such as 3.14 are
    never split because no whitespace follows their period. Sentences are
    stripped and empty ones dropped.
    """
    text = unicodedata.normalize("NFC", text)
    out: list[str] = []
    for block in _PARAGRAPHS.split(text):
        paragraph = _SPACES.sub(" ", block).strip()
        if paragraph:
            out.extend(s.strip() for s in _split_paragraph(paragraph) if s.strip())
    return out


class TextTokenizer:
    """A `tokenizers` file plus the bundle's padding and length rules."""

    def __init__(self, tokenizer: Tokenizer, spec: TextPreprocess) -> None:
        if spec.sentence_splitter not in SPLITTERS:
            raise BundleError(
                f"sentence splitter {spec.sentence_splitter!r} is not "
                f"supported (this release has {', '.join(map(repr, SPLITTERS))})"
            )
        if spec.sentence_splitter == CHUNK_SPLITTER and not spec.chunk_tokens:
            raise BundleError(f"the {CHUNK_SPLITTER!r} splitter needs chunk_tokens")
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._tok = tokenizer
        self.spec = spec
        unk = next((i for t in UNK_TOKENS if (i := tokenizer.token_to_id(t)) is not None), None)
        self.unk_id: int = unk if unk is not None else (1 if spec.pad_id != 1 else 0)

    @classmethod
    def from_file(cls, path: str | Path, spec: TextPreprocess) -> TextTokenizer:
        """Load a `tokenizer.json`; BundleError if it is missing or unreadable."""
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a plain Exception
            raise BundleError(f"{path}: not a readable tokenizers file ({exc})") from exc
        return cls(tokenizer, spec)

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    def encode_sentences(self, sentences: list[str]) -> np.ndarray:
        """int64 [S, L]: L = min(longest, max_tokens), right-padded with pad_id.

        A sentence that yields no token gets the single token `unk_id`.
        """
        max_tokens = self.spec.max_tokens
        rows = (
            [enc.ids[:max_tokens] or [self.unk_id] for enc in self._tok.encode_batch(sentences)]
            if sentences
            else []
        )
        width = max((len(r) for r in rows), default=1)
        out = np.full((len(rows), width), self.spec.pad_id, dtype=np.int64)
        for i, row in enumerate(rows):
            out[i, : len(row)] = row
        return out

    def encode_chunks(self, sentences: list[str]) -> tuple[np.ndarray, list[str]]:
        """The "chunks-v1" units: int64 [U, L] runs of `chunk_tokens` ids of the joined
        sentences, at most `max_sentences` of them, and the text of each unit (decoded)."""
        size = self.spec.chunk_tokens
        assert size, "the constructor refuses chunks-v1 without chunk_tokens"
        ids = self._tok.encode(" ".join(sentences)).ids if sentences else []
        rows = [ids[i : i + size] for i in range(0, len(ids), size)] or [[self.unk_id]]
        rows = rows[: self.spec.max_sentences]
        out = np.full((len(rows), max(len(r) for r in rows)), self.spec.pad_id, dtype=np.int64)
        for i, row in enumerate(rows):
            out[i, : len(row)] = row
        return out, [self._tok.decode(r).strip() for r in rows]

    def encode_units(self, sentences: list[str]) -> tuple[np.ndarray, list[str]]:
        """The units of a split document, by the bundle's splitter: (ids [U, L], unit texts)."""
        if self.spec.sentence_splitter == CHUNK_SPLITTER:
            return self.encode_chunks(sentences)
        if len(sentences) > self.spec.max_sentences:
            logger.debug("keeping %d of %d sentences", self.spec.max_sentences, len(sentences))
            sentences = sentences[: self.spec.max_sentences]
        return self.encode_sentences(sentences), sentences

    def encode_document(self, text: str) -> tuple[np.ndarray, list[str]]:
        """Split, cut into units (at most `max_sentences`), encode.

        Returns (ids [U, L], the text of each unit kept). InvalidInput if the
        text holds no sentence (empty or only whitespace).
        """
        sentences = split_sentences(text)
        if not sentences:
            raise InvalidInput("the text input is empty or only whitespace")
        return self.encode_units(sentences)


def pad_token_batch(arrays: list[np.ndarray], pad_id: int) -> np.ndarray:
    """Stack [S_i, L_i] id arrays into int64 [B, S_max, L_max], right-padded with pad_id."""
    if not arrays:
        return np.full((0, 0, 0), pad_id, dtype=np.int64)
    for a in arrays:
        if a.ndim != 2:
            raise ValueError(f"expected 2-D [sentences, tokens] arrays, got shape {a.shape}")
    s_max = max(a.shape[0] for a in arrays)
    l_max = max(a.shape[1] for a in arrays)
    out = np.full((len(arrays), s_max, l_max), pad_id, dtype=np.int64)
    for i, a in enumerate(arrays):
        out[i, : a.shape[0], : a.shape[1]] = a
    return out
