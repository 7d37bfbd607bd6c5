"""API inputs to raw model inputs: base64 and data URIs to bytes, strings to text.

An input is a `str` from a JSON body (plain text for a text model; for an
audio or image model, the file's bytes in base64 or a data URI such as
`data:audio/wav;base64,...`), a `PlainText` (known to be text, e.g. a
multipart `text` part) or `bytes` (a file, e.g. a multipart `file` part).
`to_raw` turns one into what `OnnxEncoder.prepare` takes: bytes recognised as
another modality than the model's are refused with 415 naming both,
undecodable base64 with 400. `infer_modality` guesses the modality of a
request that names no model.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass

from service.errors import InvalidInput, TooLarge, UnsupportedMedia
from service.inference.wire import b64_bytes
from service.preprocess import sniff_modality
from service.preprocess.audio import ACCEPTED_AUDIO
from service.preprocess.image import ACCEPTED_IMAGES


class PlainText(str):
    """A string that is text by construction (never base64)."""

    __slots__ = ()


ApiInput = str | bytes
ACCEPTED = {"audio": ACCEPTED_AUDIO, "image": ACCEPTED_IMAGES, "text": "UTF-8 text"}

_DATA_URI = re.compile(
    r"^data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[\w.+-]+=[^;,]*)*)(?P<b64>;base64)?,",
    re.IGNORECASE,
)
_LINE_BREAKS = re.compile(r"[\r\n]+")  # MIME base64 wraps lines
_SNIFF_CHARS = 64  # base64 characters decoded to recognise a file by its magic number


@dataclass
class DataUri:
    """A parsed `data:` URI."""

    media_type: str  # lower case; "" when the URI gives none
    payload: bytes

    @property
    def family(self) -> str:
        """The top-level type (audio, image, text, ...): the part before the slash."""
        return self.media_type.split("/", 1)[0]


def parse_data_uri(value: str, index: int) -> DataUri | None:
    """The data URI in `value`, or None when `value` is not one."""
    match = _DATA_URI.match(value)
    if match is None:
        return None
    body = value[match.end() :]
    media_type = (match.group("type") or "").lower()
    if match.group("b64"):
        try:
            payload = b64_bytes(body)
        except ValueError as exc:
            raise InvalidInput(f"input {index} is a data URI whose base64 is not valid") from exc
    else:
        payload = urllib.parse.unquote_to_bytes(body)
    return DataUri(media_type, payload)


def decode_base64(value: str, index: int) -> bytes:
    """Base64 (or a data URI) to bytes; 400 naming the input when it is neither."""
    uri = parse_data_uri(value, index)
    if uri is not None:
        return uri.payload
    try:
        return b64_bytes(value)
    except ValueError as exc:
        raise InvalidInput(
            f"input {index} is not valid base64 (audio and image inputs are the file's bytes in "
            "base64, or a data URI such as data:audio/wav;base64,...)"
        ) from exc


def looks_like_text(data: bytes) -> bool:
    """UTF-8 that is (nearly) all printable characters or whitespace."""
    head = data[:4096]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # a character cut at the end of the sample is fine
            return False
        text = head[: exc.start].decode("utf-8")
    if not text:
        return False
    printable = sum(ch.isprintable() or ch in "\t\n\r" for ch in text)
    return printable >= 0.98 * len(text)


def _kind(modality: str) -> str:
    return "text" if modality == "text" else f"{modality} data"


def check_bytes(data: bytes, index: int, modality: str, model: str) -> bytes:
    """Refuse empty bytes (400) and bytes of another modality than the model's (415)."""
    if not data:
        raise InvalidInput(f"input {index} is empty (0 bytes)")
    found = sniff_modality(data)
    if found is None and modality != "text" and looks_like_text(data):
        found = "text"
    if found is not None and found != modality:
        raise UnsupportedMedia(
            f"input {index} is {_kind(found)}, but model {model!r} takes {modality} "
            f"({ACCEPTED[modality]})"
        )
    return data


def _bytes_to_text(data: bytes, index: int, model: str) -> str:
    found = sniff_modality(data)
    if found is not None:
        raise UnsupportedMedia(f"input {index} is {found} data, but model {model!r} takes text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"input {index} is not valid UTF-8 text ({exc.reason})") from exc


def to_raw(value: ApiInput, index: int, modality: str, model: str) -> bytes | str:
    """What `OnnxEncoder.prepare` of a `modality` model takes, from one API input."""
    if modality == "text":
        if isinstance(value, bytes):
            return _bytes_to_text(value, index, model)
        if isinstance(value, PlainText):
            return str(value)
        uri = parse_data_uri(value, index)
        if uri is None:
            return value  # a text model takes the string itself, even if it could be base64
        if uri.family in ("audio", "image"):
            raise UnsupportedMedia(
                f"input {index} is {uri.media_type} data, but model {model!r} takes text"
            )
        return _bytes_to_text(uri.payload, index, model)
    if isinstance(value, bytes):
        return check_bytes(value, index, modality, model)
    if isinstance(value, PlainText):
        raise UnsupportedMedia(
            f"input {index} is text, but model {model!r} takes {modality} ({ACCEPTED[modality]})"
        )
    if not value.strip():
        raise InvalidInput(f"input {index} is empty")
    uri = parse_data_uri(value, index)
    if uri is not None:
        if uri.family in ("audio", "image", "text") and uri.family != modality:
            raise UnsupportedMedia(
                f"input {index} is {uri.media_type} data, but model {model!r} takes {modality} "
                f"({ACCEPTED[modality]})"
            )
        return check_bytes(uri.payload, index, modality, model)
    return check_bytes(decode_base64(value, index), index, modality, model)


def _guess_one(value: ApiInput, index: int) -> str | None:
    if isinstance(value, PlainText):
        return "text"
    if isinstance(value, bytes):
        return sniff_modality(value)
    uri = parse_data_uri(value, index)
    if uri is not None:
        if uri.family in ("audio", "image", "text"):
            return uri.family
        return sniff_modality(uri.payload) or "text"
    head = _LINE_BREAKS.sub("", value[: 2 * _SNIFF_CHARS])[:_SNIFF_CHARS]
    head = head[: len(head) - len(head) % 4]
    try:
        found = sniff_modality(b64_bytes(head)) if head else None
    except ValueError:
        found = None
    return found or "text"


def infer_modality(values: Sequence[ApiInput]) -> str | None:
    """The one modality of all inputs, None if unknown; 400 if they mix modalities."""
    found = {_guess_one(v, i) for i, v in enumerate(values)}
    found.discard(None)
    if len(found) > 1:
        raise InvalidInput(
            f"the inputs mix {' and '.join(sorted(str(f) for f in found))}; "
            "send one modality per request, or name the model"
        )
    return next(iter(found)) if found else None


def check_batch(count: int, max_batch: int | None) -> None:
    """400 for no input, 413 for more than `max_batch` (CPC_MAX_BATCH; None: no limit)."""
    if count == 0:
        raise InvalidInput("no inputs given: send at least one")
    if max_batch is not None and count > max_batch:
        raise TooLarge(f"the request has {count} inputs; the limit is {max_batch} (CPC_MAX_BATCH)")
