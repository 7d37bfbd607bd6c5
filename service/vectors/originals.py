"""Originals: a small rendition of what an item was made from, kept so it can be shown.

An image keeps a JPEG thumbnail, audio its first seconds as a 16 kHz WAV, text
the text itself, each at most CPC_MAX_ORIGINAL_BYTES. They are made from the
decoded samples and pixels, never the client's bytes, and an input that cannot
be rendered keeps none (with a warning) rather than being refused. Sizes and
limits: docs/api.md (Maps and originals), docs/architecture.md (Collections).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr
from PIL import Image

from service.config import Settings
from service.errors import CPCError
from service.preprocess.image import decode_image
from service.vectors.store import Original

logger = logging.getLogger(__name__)

CLIP_RATE = 16_000  # Hz: speech-quality playback, 32 kB per second as 16-bit mono
WAV_HEADER_BYTES = 44
JPEG_QUALITIES = (85, 70, 50, 30)
_MIN_THUMBNAIL_PX = 8


@dataclass(frozen=True)
class OriginalLimits:
    """How large an original may be."""

    max_bytes: int  # 0: keep none
    clip_seconds: float
    thumbnail_px: int
    max_image_pixels: int  # the decoder's own bound, as for embedding

    @classmethod
    def from_settings(cls, settings: Settings) -> OriginalLimits:
        return cls(
            max_bytes=settings.max_original_bytes,
            clip_seconds=settings.original_clip_seconds,
            thumbnail_px=settings.thumbnail_px,
            max_image_pixels=settings.max_image_pixels,
        )


def audio_clip(data: bytes, limits: OriginalLimits) -> Original | None:
    """The start of an audio file as 16 kHz mono 16-bit WAV, within the byte limit."""
    budget = (limits.max_bytes - WAV_HEADER_BYTES) // 2  # samples the limit allows
    if budget < 1:
        return None
    with sf.SoundFile(io.BytesIO(data)) as snd:
        rate = int(snd.samplerate)
        frames = max(1, int(np.ceil(limits.clip_seconds * rate)))
        wave = snd.read(frames=frames, dtype="float32", always_2d=True)
    mono = wave.mean(axis=1, dtype=np.float32)
    if rate != CLIP_RATE and mono.size:
        mono = soxr.resample(mono, rate, CLIP_RATE).astype(np.float32, copy=False)
    keep = min(budget, round(limits.clip_seconds * CLIP_RATE))
    mono = np.clip(np.nan_to_num(mono[:keep]), -1.0, 1.0)
    if mono.size == 0:
        return None
    out = io.BytesIO()
    sf.write(out, mono, CLIP_RATE, format="WAV", subtype="PCM_16")
    return Original("audio/wav", out.getvalue())


def thumbnail(data: bytes, limits: OriginalLimits) -> Original | None:
    """A JPEG no larger than thumbnail_px on its longest side, within the byte limit."""
    img = decode_image(data, limits.max_image_pixels)  # upright RGB, as the model saw it
    side = limits.thumbnail_px
    while side >= _MIN_THUMBNAIL_PX:
        small = img.copy()
        small.thumbnail((side, side), Image.Resampling.LANCZOS)
        for quality in JPEG_QUALITIES:
            out = io.BytesIO()
            small.save(out, format="JPEG", quality=quality, optimize=True)
            if out.tell() <= limits.max_bytes:
                return Original("image/jpeg", out.getvalue())
        side //= 2
    return None


def text_original(text: str, limits: OriginalLimits) -> Original | None:
    """The text as UTF-8, cut at a character boundary to fit the byte limit."""
    data = text.encode("utf-8")[: limits.max_bytes].decode("utf-8", errors="ignore").encode()
    return Original("text/plain; charset=utf-8", data) if data else None


def make_original(raw: bytes | str, modality: str, limits: OriginalLimits) -> Original | None:
    """The original to keep for one decoded-and-checked input, or None (see the module)."""
    if limits.max_bytes <= 0:
        return None
    try:
        if modality == "text":
            return text_original(raw if isinstance(raw, str) else raw.decode("utf-8"), limits)
        if not isinstance(raw, bytes):
            return None
        if modality == "audio":
            return audio_clip(raw, limits)
        if modality == "image":
            return thumbnail(raw, limits)
    except (CPCError, OSError, ValueError, RuntimeError) as exc:  # LibsndfileError included
        logger.warning("keeping no original of a %s input: %s", modality, exc)
    return None
