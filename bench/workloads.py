"""Realistic inputs for the serving benchmarks, made in memory (nothing is downloaded).

Audio is a voiced, speech-like signal (a harmonic series on a gliding pitch,
shaped by two moving formant-like resonances and a syllable-rate envelope, plus
a little noise) written as 16-bit WAV at 16 kHz; images are PNG (or JPEG)
pictures of gradients, discs and noise; text is English prose drawn from a
fixed pool of sentences. Every maker takes a seed, so a run is reproducible.
`request_body` turns inputs into the JSON body of `POST /embed`.
"""

from __future__ import annotations

import base64
import functools
import io
import json
from collections.abc import Sequence

import numpy as np
import soundfile as sf
from PIL import Image

SAMPLE_RATE = 16000
MAX_RANDOM_SECONDS = 8.0
MAX_RANDOM_SIDE = 640
RANDOM_BASES = 4

SENTENCES = (
    "The morning train was late again, so most of us waited on the cold platform.",
    "She opened the window and the smell of rain filled the small kitchen.",
    "Nobody expected the old bridge to survive another winter of floods.",
    "He wrote the numbers on the back of an envelope and handed it to the clerk.",
    "A good map tells you where you are, but not where you should go.",
    "The children built a fort out of cardboard boxes and refused to leave it.",
    "Prices at the market rose twice this month, and the farmers blamed the weather.",
    "Every evening the lighthouse keeper climbed the stairs and lit the lamp.",
    "The committee met for three hours without reaching a single decision.",
    "If you listen closely, you can hear the river from the top of the hill.",
    "Her first novel sold only a few hundred copies, yet it changed her life.",
    "The engine coughed twice, then settled into a steady, comforting hum.",
    "Most of the letters were never answered, and a few were never opened.",
    "They planted apple trees along the fence where the old barn used to stand.",
    "A cat slept on the warm hood of the car while the snow kept falling.",
    "The museum closes early on Sundays, so plan your visit for the morning.",
    "Two friends argued about the rules of a game neither of them had played.",
    "The recipe calls for butter, but olive oil works just as well.",
    "By noon the fog had lifted and the whole valley lay open below us.",
    "He kept every ticket from every concert he had ever been to.",
    "The storm knocked out the power, and the town went quiet for a night.",
    "Learning a language is slow at first and then suddenly much faster.",
    "The doctor told him to walk more and to worry a little less.",
    "On the last page of the diary someone had drawn a small, careful map.",
)


def speech_like(seconds: float, seed: int = 0, rate: int = SAMPLE_RATE) -> np.ndarray:
    """A float32 mono waveform in [-1, 1] that has a voice's structure, not its words."""
    rng = np.random.default_rng(seed)
    n = max(1, round(seconds * rate))
    t = np.arange(n) / rate
    pitch = rng.uniform(90, 220) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t))
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    formants = (
        rng.uniform(400, 900) * (1 + 0.3 * np.sin(2 * np.pi * rng.uniform(1, 4) * t)),
        rng.uniform(1000, 2500) * (1 + 0.2 * np.sin(2 * np.pi * rng.uniform(1, 4) * t + 1)),
    )
    wave = np.zeros(n)
    for h in range(1, 25):
        freq = h * pitch
        gain = sum(np.exp(-(((freq - f) / 150.0) ** 2)) for f in formants) + 0.05
        wave += gain * np.sin(h * phase) / h
    syllables = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3, 6) * t + rng.uniform(0, 6)) ** 2
    wave = wave * syllables + 0.02 * rng.standard_normal(n)
    return (0.6 * wave / (np.abs(wave).max() + 1e-9)).astype(np.float32)


def wav_bytes(wave: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def audio_clip(seconds: float, seed: int = 0) -> bytes:
    """A `seconds`-long speech-like clip as 16-bit WAV at 16 kHz."""
    return wav_bytes(speech_like(seconds, seed))


def picture(width: int, height: int, seed: int = 0) -> Image.Image:
    """An RGB picture: a colour gradient, a few soft discs and some noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    img = (rng.uniform(0.2, 0.8, 3) + rng.uniform(-0.3, 0.3, 3) * xx[..., None]) + rng.uniform(
        -0.3, 0.3, 3
    ) * yy[..., None]
    for _ in range(int(rng.integers(2, 6))):
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.4)
        mask = np.clip(1 - np.hypot(xx - cx, yy - cy) / r, 0, 1)[..., None]
        img = img * (1 - mask) + mask * rng.uniform(0, 1, 3)
    img = img + 0.04 * rng.standard_normal(img.shape)
    return Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8), mode="RGB")


def image_file(width: int = 64, height: int = 64, seed: int = 0, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    picture(width, height, seed).save(buf, format=fmt)
    return buf.getvalue()


def paragraph(sentences: int = 3, seed: int = 0) -> str:
    """`sentences` sentences of the pool (with repeats when more are asked than it holds)."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(SENTENCES), size=sentences, replace=sentences > len(SENTENCES))
    return " ".join(SENTENCES[int(i)] for i in picks)


def typical_inputs(modality: str, count: int, audio_seconds: float = 1.0) -> list[bytes | str]:
    """`count` distinct inputs of one typical size: a clip, a 64x64 PNG or a 2-3 sentence text."""
    if modality == "audio":
        return [audio_clip(audio_seconds, seed) for seed in range(count)]
    if modality == "image":
        return [image_file(64, 64, seed) for seed in range(count)]
    return [paragraph(2 + seed % 2, seed) for seed in range(count)]


@functools.cache
def _audio_base(index: int) -> np.ndarray:
    return speech_like(MAX_RANDOM_SECONDS, seed=1000 + index)


@functools.cache
def _picture_base(index: int) -> np.ndarray:
    side = MAX_RANDOM_SIDE
    return np.asarray(picture(side, side, seed=1000 + index))


def random_input(modality: str, rng: np.random.Generator) -> bytes | str:
    """One input of random size: audio 0.2-8 s, text 1-20 sentences, images 16-640 px a side.

    Audio and images are random crops of a few pre-rendered bases (rendering
    each one afresh would cost the load generator more than the service).
    """
    base = int(rng.integers(0, RANDOM_BASES))
    if modality == "audio":
        wave = _audio_base(base)
        length = int(rng.uniform(0.2, MAX_RANDOM_SECONDS) * SAMPLE_RATE)
        start = int(rng.integers(0, len(wave) - length + 1))
        return wav_bytes(wave[start : start + length])
    if modality == "image":
        pixels = _picture_base(base)
        height, width = (int(v) for v in rng.integers(16, MAX_RANDOM_SIDE + 1, size=2))
        top = int(rng.integers(0, MAX_RANDOM_SIDE - height + 1))
        left = int(rng.integers(0, MAX_RANDOM_SIDE - width + 1))
        img = Image.fromarray(np.ascontiguousarray(pixels[top : top + height, left : left + width]))
        buf = io.BytesIO()
        if rng.random() < 0.5:
            img.save(buf, format="PNG", compress_level=1)
        else:
            img.save(buf, format="JPEG", quality=90)
        return buf.getvalue()
    return paragraph(int(rng.integers(1, 21)), int(rng.integers(0, 2**31)))


def json_inputs(raws: Sequence[bytes | str]) -> list[str]:
    """Inputs as JSON strings: texts as they are, files as base64."""
    return [r if isinstance(r, str) else base64.b64encode(r).decode("ascii") for r in raws]


def request_body(model: str, *raws: bytes | str) -> bytes:
    """The JSON body of `POST /embed` for these inputs (files as base64)."""
    return json.dumps({"model": model, "inputs": json_inputs(raws)}).encode("utf-8")
