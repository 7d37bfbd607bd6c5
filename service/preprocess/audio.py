"""Audio decoding shared by training and the service.

Every input, a file on disk or uploaded bytes, becomes a float32 mono waveform
at the bundle's sample rate the same way: libsndfile (through soundfile)
decodes it, channels are averaged, and soxr resamples when the rates differ.
The length limit is enforced against the header's claim before any sample is
read, and again while decoding in blocks, so a header that lies cannot make
the decoder allocate more than the limit allows (docs/architecture.md,
Decoding inputs).
"""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr

from service.errors import CPCError, InvalidInput, TooLarge

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
ACCEPTED_AUDIO = "WAV (8/16/24/32-bit PCM or float), FLAC, OGG/Vorbis or MP3"
_BLOCK_SAMPLES = 1 << 20  # frames x channels read per block


def _reason(exc: Exception) -> str:
    """libsndfile's own words, without the repr of the file object."""
    text = getattr(exc, "error_string", None) or str(exc)
    return str(text).strip().rstrip(".")


def _frame_limit(max_seconds: float, rate: int) -> int | None:
    """Most frames at `rate` that fit in `max_seconds` (None: no limit)."""
    if math.isinf(max_seconds):
        return None
    return math.floor(max_seconds * rate)


def _read_mono(snd: sf.SoundFile, label: str, max_seconds: float) -> tuple[np.ndarray, int]:
    """Check the claimed length, then read at most limit+1 frames mixed to mono."""
    rate, channels = int(snd.samplerate), int(snd.channels)
    if rate <= 0 or channels <= 0:
        raise InvalidInput(
            f"{label} declares {rate} Hz and {channels} channels; expected {ACCEPTED_AUDIO}"
        )
    limit = _frame_limit(max_seconds, rate)
    claimed = int(snd.frames) if snd.frames is not None else 0
    if limit is not None and claimed > limit:
        raise TooLarge(f"{label} is {claimed / rate:.1f} s long; the limit is {max_seconds:g} s")
    block = max(1, _BLOCK_SAMPLES // channels)
    parts: list[np.ndarray] = []
    total = 0
    while True:
        want = block if limit is None else min(block, limit + 1 - total)
        if want <= 0:
            break
        chunk = snd.read(frames=want, dtype="float32", always_2d=True)
        if chunk.shape[0] == 0:
            break
        parts.append(chunk.mean(axis=1, dtype=np.float32) if channels > 1 else chunk[:, 0].copy())
        total += chunk.shape[0]
    if limit is not None and total > limit:
        raise TooLarge(f"{label} is longer than the limit of {max_seconds:g} s")
    wave = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
    return wave.astype(np.float32, copy=False), rate


def _decode(source: BinaryIO | str, label: str, sample_rate: int, max_seconds: float) -> np.ndarray:
    """Shared body of `decode_audio` and `load_audio`."""
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if not max_seconds > 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds}")
    try:
        with sf.SoundFile(source) as snd:
            wave, rate = _read_mono(snd, label, max_seconds)
    except CPCError:
        raise
    except Exception as exc:  # libsndfile reports every failure its own way
        logger.debug("audio decode failed for %s: %r", label, exc)
        raise InvalidInput(
            f"{label} could not be decoded ({_reason(exc)}); expected {ACCEPTED_AUDIO}"
        ) from exc
    if wave.size == 0:
        raise InvalidInput(f"{label} contains no samples")
    if not np.isfinite(wave).all():
        raise InvalidInput(f"{label} contains NaN or infinite samples")
    if rate != sample_rate:
        wave = soxr.resample(wave, rate, sample_rate, quality="HQ").astype(np.float32, copy=False)
        if wave.size == 0:
            raise InvalidInput(f"{label} is too short to resample to {sample_rate} Hz")
    return np.ascontiguousarray(wave, dtype=np.float32)


def decode_audio(data: bytes, sample_rate: int, max_seconds: float) -> np.ndarray:
    """Decode audio file bytes to float32 mono at `sample_rate`.

    Raises InvalidInput (undecodable, truncated, empty, non-finite) or
    TooLarge (longer than `max_seconds`, by header or by decoded length).
    """
    if not data:
        raise InvalidInput("the audio input is empty (0 bytes)")
    return _decode(io.BytesIO(data), "the audio input", sample_rate, max_seconds)


def load_audio(path: str | Path, sample_rate: int, max_seconds: float = math.inf) -> np.ndarray:
    """Read an audio file exactly as `decode_audio` reads uploaded bytes.

    FileNotFoundError for a missing file; otherwise the same errors as
    `decode_audio`, with the path in the detail.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no audio file at {path}")
    return _decode(str(path), f"audio file {path}", sample_rate, max_seconds)
