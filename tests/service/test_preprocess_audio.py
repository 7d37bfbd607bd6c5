"""Tests of service.preprocess.audio: formats, mixing, resampling, limits, bad input."""

from __future__ import annotations

import io
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from service.errors import InvalidInput, TooLarge
from service.preprocess import AUDIO_EXTENSIONS, decode_audio, load_audio, sniff_modality

SR = 16000


def sine(seconds: float, rate: int, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    wave = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return wave if channels == 1 else np.stack([wave] * channels, axis=1)


def encode(wave: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def mp3_supported() -> bool:
    try:
        encode(sine(0.1, SR), SR, "MP3", "MPEG_LAYER_III")
    except Exception:
        return False
    return True


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT"])
def test_wav_subtypes(subtype: str) -> None:
    data = encode(sine(1.0, SR), SR, "WAV", subtype)
    out = decode_audio(data, SR, 10.0)
    assert out.dtype == np.float32 and out.ndim == 1 and out.shape == (SR,)
    tol = 0.02 if subtype == "PCM_U8" else 1e-3
    np.testing.assert_allclose(out, sine(1.0, SR), atol=tol)
    assert sniff_modality(data) == "audio"


@pytest.mark.parametrize(("fmt", "subtype"), [("FLAC", "PCM_16"), ("OGG", "VORBIS")])
def test_flac_and_ogg(fmt: str, subtype: str) -> None:
    data = encode(sine(1.0, SR), SR, fmt, subtype)
    out = decode_audio(data, SR, 10.0)
    assert out.shape == (SR,) and out.dtype == np.float32
    assert sniff_modality(data) == "audio"


@pytest.mark.skipif(not mp3_supported(), reason="this libsndfile cannot write MP3")
def test_mp3() -> None:
    data = encode(sine(1.0, SR), SR, "MP3", "MPEG_LAYER_III")
    out = decode_audio(data, SR, 10.0)
    # The encoder may pad up to one frame; libsndfile usually trims it exactly.
    assert abs(out.shape[0] - SR) <= 1152
    assert sniff_modality(data) == "audio"
    assert sniff_modality(b"ID3\x04\x00\x00\x00\x00\x00\x00" + data) == "audio"


def test_stereo_is_mixed_by_mean() -> None:
    left, right = sine(0.5, SR, 440.0), sine(0.5, SR, 660.0)
    data = encode(np.stack([left, right], axis=1), SR, "WAV", "FLOAT")
    out = decode_audio(data, SR, 10.0)
    np.testing.assert_allclose(out, (left + right) / 2, atol=1e-6)


def test_resampled_sine_keeps_its_frequency() -> None:
    data = encode(sine(2.0, 44100, 440.0), 44100, "WAV", "PCM_16")
    out = decode_audio(data, SR, 10.0)
    assert abs(out.shape[0] - 2 * SR) <= 1
    spectrum = np.abs(np.fft.rfft(out * np.hanning(out.size)))
    peak_hz = np.argmax(spectrum) * SR / out.size
    assert abs(peak_hz - 440.0) < 2.0


def test_too_long_is_rejected() -> None:
    data = encode(sine(3.0, SR), SR, "WAV", "PCM_16")
    with pytest.raises(TooLarge) as err:
        decode_audio(data, SR, 2.0)
    assert err.value.status_code == 413 and "limit" in err.value.detail
    assert decode_audio(data, SR, 3.0).shape == (3 * SR,)


def test_limit_applies_before_resampling() -> None:
    data = encode(sine(3.0, 8000), 8000, "WAV", "PCM_16")
    with pytest.raises(TooLarge):
        decode_audio(data, SR, 2.5)


def test_lying_header_decodes_true_length_without_big_allocation() -> None:
    """A data chunk claiming ~4 GiB: libsndfile clamps to the bytes present.

    Documented behaviour: such a WAV (as streaming writers produce) decodes to
    its true length; nothing near the claimed size is ever allocated.
    """
    data = bytearray(encode(sine(1.0, SR), SR, "WAV", "PCM_16"))
    assert data[36:40] == b"data"
    struct.pack_into("<I", data, 4, 0xFFFFFFF0)
    struct.pack_into("<I", data, 40, 0xFFFFFF00)
    tracemalloc.start()
    try:
        out = decode_audio(bytes(data), SR, 600.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.shape == (SR,)
    assert peak < 64 * 2**20


def test_zero_length_is_invalid() -> None:
    data = encode(np.zeros(0, dtype=np.float32), SR, "WAV", "PCM_16")
    with pytest.raises(InvalidInput, match="contains no samples"):
        decode_audio(data, SR, 10.0)
    with pytest.raises(InvalidInput):
        decode_audio(b"", SR, 10.0)


@pytest.mark.parametrize(
    ("fmt", "subtype", "keep"),
    [("WAV", "PCM_16", 20), ("FLAC", "PCM_16", 0.5), ("OGG", "VORBIS", 0.5)],
)
def test_truncated_is_invalid(fmt: str, subtype: str, keep: float) -> None:
    data = encode(sine(1.0, SR), SR, fmt, subtype)
    cut = int(keep) if keep >= 1 else int(len(data) * keep)
    with pytest.raises(InvalidInput) as err:
        decode_audio(data[:cut], SR, 10.0)
    assert "FLAC" in err.value.detail and "MP3" in err.value.detail


def test_truncated_wav_data_decodes_what_is_there() -> None:
    """Documented: a WAV cut inside its sample data yields the samples present."""
    data = encode(sine(1.0, SR), SR, "WAV", "PCM_16")
    out = decode_audio(data[: 44 + SR], SR, 10.0)
    assert out.shape == (SR // 2,)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_bytes_are_invalid(seed: int) -> None:
    data = np.random.default_rng(seed).bytes(4096)
    with pytest.raises(InvalidInput):
        decode_audio(data, SR, 10.0)
    with pytest.raises(InvalidInput):
        decode_audio(b"RIFF\x00\x00\x00\x00WAVEjunk" + data, SR, 10.0)


def test_non_finite_samples_are_invalid() -> None:
    wave = sine(0.1, SR)
    wave[10] = np.nan
    with pytest.raises(InvalidInput, match="NaN"):
        decode_audio(encode(wave, SR, "WAV", "FLOAT"), SR, 10.0)


def test_load_audio_matches_decode(tmp_path: Path) -> None:
    data = encode(sine(0.5, 22050, channels=2), 22050, "FLAC", "PCM_16")
    path = tmp_path / "a.flac"
    path.write_bytes(data)
    np.testing.assert_array_equal(load_audio(path, SR), decode_audio(data, SR, 600.0))
    with pytest.raises(TooLarge):
        load_audio(path, SR, max_seconds=0.25)
    with pytest.raises(FileNotFoundError):
        load_audio(tmp_path / "missing.wav", SR)
    assert ".flac" in AUDIO_EXTENSIONS and ".mp3" in AUDIO_EXTENSIONS
