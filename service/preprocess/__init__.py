"""Decoding and preprocessing shared by training and the service (numpy, PIL, soundfile).

Nothing here imports torch or a web framework, so a served input is prepared
exactly as the training data was. `sniff_modality` tells audio from image
bytes by their magic numbers.
"""

from __future__ import annotations

from service.preprocess.audio import AUDIO_EXTENSIONS, decode_audio, load_audio
from service.preprocess.image import (
    IMAGE_EXTENSIONS,
    array_to_patches,
    decode_image,
    image_to_array,
    load_image,
    preprocess_image,
)
from service.preprocess.text import TextTokenizer, pad_token_batch, split_sentences

__all__ = [
    "AUDIO_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "TextTokenizer",
    "array_to_patches",
    "decode_audio",
    "decode_image",
    "image_to_array",
    "load_audio",
    "load_image",
    "pad_token_batch",
    "preprocess_image",
    "sniff_modality",
    "split_sentences",
]

_BMP_HEADER_SIZES = (12, 16, 40, 52, 56, 64, 108, 124)


def _is_mpeg_frame(data: bytes) -> bool:
    """An MPEG-1/2/2.5 audio frame header (layer I-III, valid bitrate and rate)."""
    if len(data) < 4 or data[0] != 0xFF or data[1] & 0xE0 != 0xE0:
        return False
    version, layer = (data[1] >> 3) & 0b11, (data[1] >> 1) & 0b11
    bitrate, rate = data[2] >> 4, (data[2] >> 2) & 0b11
    return version != 0b01 and layer != 0 and bitrate != 0b1111 and rate != 0b11


def sniff_modality(data: bytes) -> str | None:
    """ "audio" or "image" from the leading bytes, or None when neither is recognised."""
    head = bytes(data[:32])
    if head[:4] == b"RIFF" and len(head) >= 12:
        if head[8:12] == b"WAVE":
            return "audio"
        if head[8:12] == b"WEBP":
            return "image"
        return None
    if head[:4] in (b"fLaC", b"OggS", b"RF64") or head[:3] == b"ID3" or _is_mpeg_frame(head):
        return "audio"
    if (
        head[:3] == b"\xff\xd8\xff"
        or head[:8] == b"\x89PNG\r\n\x1a\n"
        or head[:6] in (b"GIF87a", b"GIF89a")
        or head[:4] in (b"II*\x00", b"MM\x00*")
    ):
        return "image"
    if (
        head[:2] == b"BM"
        and len(head) >= 18
        and int.from_bytes(head[14:18], "little") in (_BMP_HEADER_SIZES)
    ):
        return "image"
    return None
