"""A speaker-identification corpus: espeak-ng reading generated sentences in many voices.

A speaker is an espeak-ng voice with a variant and its own fixed pitch and
speed drawn from the seed; every utterance reads a different sentence of a
small seeded grammar and varies as a person's recordings do (`Take`). Files
are 16 kHz mono 16-bit WAV under `out/<speaker>/<speaker>-<n>.wav`; per
speaker 25% of the utterances are `test`. The voices and variations:
docs/training.md (Built-in corpora).
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from training.corpora import CorpusError
from training.corpora.manifest import Row, assign_splits, prepare_output, write_manifest

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000  # Hz, the rate the audio models expect
TEST_FRACTION = 0.25  # of each speaker's utterances
PITCH_RANGE = (20, 80)  # espeak-ng -p, 0..99 (default 50)
SPEED_RANGE = (130, 200)  # espeak-ng -s, words per minute (default 175)
SILENCE = 0.01  # peak fraction below which leading/trailing audio is trimmed
PAD_SECONDS = 0.05  # silence kept at each end after trimming
MBROLA_DIRS = (Path("/usr/share/mbrola"),)
MISSING = "espeak-ng is not installed: apt-get install espeak-ng"


PITCH_JITTER = 8  # ± espeak-ng pitch units per utterance
SPEED_JITTER = 20  # ± words per minute per utterance
GAIN_DB = (-9.0, 0.0)  # peak level below 0 dBFS
TILT = (-0.6, 0.6)  # first-order channel filter y[n] = x[n] + tilt * x[n-1]
SNR_DB = (15.0, 40.0)  # white background noise


@dataclass(frozen=True)
class Take:
    """How one utterance departs from its speaker's voice (seeded per utterance)."""

    pitch: int
    speed: int
    gain_db: float
    tilt: float
    snr_db: float

    @classmethod
    def draw(cls, speaker: Speaker, rng: np.random.Generator) -> Take:
        return cls(
            pitch=int(
                np.clip(speaker.pitch + rng.integers(-PITCH_JITTER, PITCH_JITTER + 1), 0, 99)
            ),
            speed=int(speaker.speed + rng.integers(-SPEED_JITTER, SPEED_JITTER + 1)),
            gain_db=float(rng.uniform(*GAIN_DB)),
            tilt=float(rng.uniform(*TILT)),
            snr_db=float(rng.uniform(*SNR_DB)),
        )

    def apply(self, wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        shaped = wave.copy()
        shaped[1:] += self.tilt * wave[:-1]
        shaped *= 10 ** (self.gain_db / 20) / max(float(np.abs(shaped).max()), 1e-9)
        noise_rms = np.sqrt(np.mean(shaped**2)) * 10 ** (-self.snr_db / 20)
        return (shaped + noise_rms * rng.standard_normal(len(shaped))).astype(np.float32)


@dataclass(frozen=True)
class Speaker:
    """One synthetic speaker: an espeak-ng voice string plus its pitch and speed."""

    id: str
    voice: str  # the -v argument, e.g. "en-us+m3"
    pitch: int
    speed: int


def _words(text: str, sep: str | None = None) -> tuple[str, ...]:
    return tuple(text.split(sep))


# The sentence grammar: a few templates over word lists, enough for millions
# of distinct sentences with varied sounds and lengths.
NAMES = _words(
    "Anna Boris Clara David Elena Felix Grace Henry Irene Jonas Karen Leo Maria Nathan "
    "Olga Peter Rosa Samuel Tara Victor"
)
PEOPLE = _words(
    "farmer teacher doctor baker sailor painter student pilot driver neighbour musician "
    "captain gardener writer engineer dog cat horse bird fox"
)
THINGS = _words(
    "apple book letter box chair lamp bottle key coin basket candle map ticket shoe "
    "window clock boat bridge cake glass brush potato"
)
ADJECTIVES = _words(
    "red green old young small heavy quiet bright broken yellow wooden silver famous "
    "tired happy strange narrow warm cold careful orange empty"
)
VERBS = (  # (past, base)
    ("saw", "see"), ("found", "find"), ("carried", "carry"), ("painted", "paint"),
    ("sold", "sell"), ("bought", "buy"), ("opened", "open"), ("cleaned", "clean"),
    ("moved", "move"), ("counted", "count"), ("dropped", "drop"), ("hid", "hide"),
    ("fixed", "fix"), ("wanted", "want"), ("brought", "bring"), ("took", "take"),
)  # fmt: skip
PLACES = _words(
    "the station|the market|the river|the old church|the library|the harbour|the kitchen|"
    "the mountain|the school|the village|the bakery|the forest|the museum|the garden",
    "|",
)
TIMES = _words(
    "yesterday|this morning|last winter|on Monday|at noon|before dinner|after the rain|"
    "every Sunday|at midnight|in April|on Friday evening|three days ago",
    "|",
)
ADVERBS = _words("quickly slowly carefully quietly happily again twice suddenly")
PREPOSITIONS = _words("near|behind|inside|next to|across|under", "|")


def _plural(noun: str) -> str:
    if noun.endswith(("s", "x", "ch", "sh", "o")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _sentence(rng: np.random.Generator) -> str:
    """One sentence from a random template."""

    def pick(words: tuple[str, ...]) -> str:
        return str(words[int(rng.integers(len(words)))])

    num = int(rng.integers(2, 100))
    past, base = VERBS[int(rng.integers(len(VERBS)))]
    adj, thing, place, time = pick(ADJECTIVES), pick(THINGS), pick(PLACES), pick(TIMES)
    subject = [
        pick(NAMES),
        f"the {pick(ADJECTIVES)} {pick(PEOPLE)}",
        f"{int(rng.integers(2, 20))} {_plural(pick(PEOPLE))}",
    ][int(rng.integers(3))]
    templates = [
        f"{subject} {past} {num} {adj} {_plural(thing)} {pick(PREPOSITIONS)} {place} {time}.",
        f"Did {subject} {base} the {adj} {thing} {time}?",
        f"{pick(NAMES)} said that {subject} {past} {_a(adj)} {thing} {pick(ADVERBS)}.",
        f"Please {base} the {num} {adj} {_plural(thing)} by {int(rng.integers(1, 13))} o'clock.",
        f"There were {num} {_plural(thing)} at {place}, and {subject} {past} "
        f"{int(rng.integers(1, num))} of them.",
        f"Why would {subject} {base} {_a(adj)} {thing} in {place} {time}?",
    ]
    text = pick(tuple(templates))
    return text[0].upper() + text[1:]


def make_sentences(n: int, seed: int) -> list[str]:
    """`n` distinct sentences, the same for the same seed."""
    rng = np.random.default_rng([seed, 2])
    seen: dict[str, None] = {}
    for _ in range(100 * n + 1000):
        if len(seen) == n:
            break
        seen.setdefault(_sentence(rng))
    if len(seen) < n:
        raise CorpusError(f"the sentence grammar could not make {n} distinct sentences")
    return list(seen)


def _espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise CorpusError(MISSING)
    return exe


def _voice_lines(exe: str, arg: str) -> list[str]:
    """The lines of `espeak-ng ARG` (a voice listing) after its header."""
    out = subprocess.run([exe, arg], capture_output=True, text=True, check=True, timeout=60)
    return out.stdout.splitlines()[1:]


def _variants(exe: str) -> list[str]:
    """Variant names (the files under `!v/`), without those whose names hold spaces."""
    names = set()
    for line in _voice_lines(exe, "--voices=variant"):
        match = re.search(r"!v/(\S+)(\s{2,}|\s*$)", line)
        if match:
            names.add(match.group(1))
    return sorted(names)


def _mbrola_installed(voice_file: str) -> bool:
    """Whether the MBROLA program and the data of voice `mb/mb-xx1` are installed."""
    name = voice_file.rsplit("/", 1)[-1].removeprefix("mb-").split("-")[0]
    return shutil.which("mbrola") is not None and any(
        (d / name).exists() or (d / "voices" / name).exists() for d in MBROLA_DIRS
    )


def _base_voices(exe: str) -> tuple[list[str], list[str], list[str]]:
    """(English espeak voices, other languages' voices, installed English MBROLA voices)."""
    english: set[str] = set()
    other: set[str] = set()
    mbrola: set[str] = set()
    for parts in map(str.split, _voice_lines(exe, "--voices")):
        if len(parts) < 5:
            continue
        language, voice_file = parts[1], parts[4]
        if voice_file.startswith("mb/"):
            if language.startswith("en") and _mbrola_installed(voice_file):
                mbrola.add(voice_file.removeprefix("mb/"))
        elif language != "variant":
            (english if language.startswith("en") else other).add(language)
    return sorted(english), sorted(other), sorted(mbrola)


def choose_speakers(n: int, seed: int, exe: str | None = None) -> list[Speaker]:
    """`n` distinct speakers: distinct variants first, each on a base voice, then reuses.

    Variants are visited in a seeded order and paired with the English voices
    in turn (every pair distinct); other languages' voices are used only once
    every English pair is taken.
    """
    exe = exe or _espeak()
    rng = np.random.default_rng([seed, 1])
    english, other, mbrola = _base_voices(exe)
    variants = [str(v) for v in rng.permutation(_variants(exe))] or [""]
    voices: list[str] = list(mbrola)
    for group in (english, other):
        group = [str(v) for v in rng.permutation(group)]
        for r in range(len(group)):
            for j, variant in enumerate(variants):
                base = group[(r + j) % len(group)]
                voices.append(f"{base}+{variant}" if variant else base)
                if len(voices) >= n:
                    break
            if len(voices) >= n:
                break
    if len(voices) < n:
        raise CorpusError(f"espeak-ng offers {len(voices)} distinct voices, fewer than {n}")
    width = max(2, len(str(n - 1)))
    return [
        Speaker(
            id=f"s{i:0{width}d}",
            voice=voice,
            pitch=int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1)),
            speed=int(rng.integers(SPEED_RANGE[0], SPEED_RANGE[1] + 1)),
        )
        for i, voice in enumerate(voices[:n])
    ]


def _trim(wave: np.ndarray, rate: int) -> np.ndarray:
    """Drop leading and trailing silence, keeping `PAD_SECONDS` at each end."""
    loud = np.flatnonzero(np.abs(wave) > SILENCE * max(float(np.abs(wave).max()), 1e-9))
    if loud.size == 0:
        return wave
    pad = int(PAD_SECONDS * rate)
    return wave[max(0, loud[0] - pad) : loud[-1] + pad + 1]


def synthesize(
    exe: str, speaker: Speaker, sentence: str, target: Path, tmp: Path, seed: int | None = None
) -> float:
    """Speak `sentence` into `target` (16 kHz mono PCM_16 WAV); returns its duration in seconds.

    With a `seed`, the utterance varies by a seeded `Take`; without, it is the plain voice.
    """
    raw = tmp / f"{target.stem}.raw.wav"
    rng = np.random.default_rng([seed, 2]) if seed is not None else None
    take = Take.draw(speaker, rng) if rng is not None else None
    pitch, speed = (take.pitch, take.speed) if take else (speaker.pitch, speaker.speed)
    cmd = [exe, "-v", speaker.voice, "-p", str(pitch), "-s", str(speed)]
    result = subprocess.run(
        [*cmd, "-w", str(raw), "--", sentence], capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0 or not raw.is_file():
        reason = (result.stderr.strip().splitlines() or ["no output"])[0]
        raise CorpusError(f"espeak-ng failed for voice {speaker.voice}: {reason}")
    wave, rate = sf.read(raw, dtype="float32", always_2d=True)
    raw.unlink()
    wave = _trim(wave.mean(axis=1), rate)
    if rate != SAMPLE_RATE:
        wave = soxr.resample(wave, rate, SAMPLE_RATE, quality="HQ")
    if take is not None and rng is not None:
        wave = take.apply(wave, rng)
    sf.write(target, np.clip(wave, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16", format="WAV")
    return len(wave) / SAMPLE_RATE


def build_speech(
    out: Path,
    *,
    speakers: int = 24,
    utterances_per_speaker: int = 40,
    seed: int = 0,
    workers: int = 2,
    vary: bool = True,
) -> Path:
    """Build the speech corpus in `out` (see the module docstring); returns `out`."""
    if speakers < 2 or utterances_per_speaker < 2:
        raise CorpusError("the speech corpus needs at least 2 speakers and 2 utterances each")
    exe = _espeak()
    cast = choose_speakers(speakers, seed, exe)
    sentences = make_sentences(speakers * utterances_per_speaker, seed)
    out = Path(out)
    prepare_output(out)
    jobs: list[tuple[Speaker, str, Path, str]] = []
    for k, speaker in enumerate(cast):
        (out / speaker.id).mkdir()
        mine = sentences[k * utterances_per_speaker : (k + 1) * utterances_per_speaker]
        splits = assign_splits(mine, seed=seed, test_fraction=TEST_FRACTION)
        for i, (sentence, split) in enumerate(zip(mine, splits, strict=True)):
            jobs.append((speaker, sentence, out / speaker.id / f"{speaker.id}-{i:04d}.wav", split))
    logger.info("synthesising %d utterances by %d speakers", len(jobs), speakers)
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(max(1, workers)) as pool:
        durations = list(
            pool.map(
                lambda n: synthesize(
                    exe,
                    jobs[n][0],
                    jobs[n][1],
                    jobs[n][2],
                    Path(tmp),
                    seed * 1_000_003 + n if vary else None,
                ),
                range(len(jobs)),
            )
        )
    rows = [
        Row(
            path=target.relative_to(out).as_posix(),
            label=speaker.id,
            split=split,
            extra={
                "speaker": speaker.id,
                "voice": speaker.voice,
                "pitch": str(speaker.pitch),
                "speed": str(speaker.speed),
                "seconds": f"{seconds:.3f}",
                "sentence": sentence,
            },
        )
        for (speaker, sentence, target, split), seconds in zip(jobs, durations, strict=True)
    ]
    write_manifest(out, rows)
    return out
