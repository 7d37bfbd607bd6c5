"""One model bundle loaded for inference: prepare inputs, run batches, warm up, describe.

`OnnxEncoder.prepare` turns one raw input (file bytes, or a string for text)
into the model's input array with the shared preprocessing, enforcing the
length and size limits; `run` hands prepared inputs to the ONNX runner
(`service.inference.runner`), which collates them with right padding and cuts
each result back to its valid steps.

`run` blocks: the batcher calls it in a worker thread, never on the event loop.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from service.bundle import (
    AudioPreprocess,
    BundleSpec,
    ImagePreprocess,
    TextPreprocess,
    load_bundle_spec,
)
from service.errors import BundleError, InvalidInput, TooLarge
from service.inference.runner import OnnxRunner, StepVectors, collate
from service.preprocess import TextTokenizer, decode_audio, decode_image, preprocess_image

if TYPE_CHECKING:  # the settings need pydantic-settings, which a train-only install lacks
    from service.config import Settings

logger = logging.getLogger(__name__)

WARMUP_TEXT = "Warming up the model. This is the second sentence."


# A bound on memory rather than a measured optimum (this machine has 2 cores): every
# concurrent call holds its own activations in the arena.
MAX_AUTO_INSTANCES = 4


def auto_instances() -> int:
    """Concurrent onnxruntime calls per served model when CPC_INFERENCE_INSTANCES is 0:
    one per core (up to MAX_AUTO_INSTANCES), each on its own share of the cores.

    On 2 cores two one-thread calls embed 1 s clips at 170-190 a second where one
    two-thread call reaches 125 (images: 240 against 187); for text, one call runs
    while the event loop answers the last batch and reads the next, and 16 connections
    got 1,870-2,110 requests/s instead of 1,290-1,880.
    """
    return max(1, min(os.cpu_count() or 1, MAX_AUTO_INSTANCES))


def auto_threads(modality: str, instances: int) -> int:
    """onnxruntime threads per call when CPC_INTRA_OP_THREADS is 0: text one (waking a
    second costs more than it saves: one input in-process, 3,600 rather than 2,800 a
    second on 2 cores); audio and images their instance's share of the cores."""
    if modality == "text":
        return 1
    return max(1, (os.cpu_count() or 1) // max(1, instances))


@dataclass
class Prepared:
    """One input ready for the model."""

    array: np.ndarray  # audio [samples] f32 | image [rows, cols, 3, P, P] f32 | text [S, L] i64
    steps: int  # valid output steps: frames, grid cells or sentences
    sentences: list[str] | None = None  # text only: the sentences the steps stand for
    tokens: int | None = None  # text only: subword tokens kept (the OpenAI API's usage)

    @property
    def usage(self) -> int:
        """What the OpenAI API counts: tokens for text, steps (frames, cells) otherwise."""
        return self.tokens if self.tokens is not None else self.steps

    @property
    def sort_key(self) -> tuple[int, ...]:
        """Inputs of similar shape batch with the least padding."""
        return tuple(int(n) for n in self.array.shape)


@dataclass
class InputLimits:
    """How large one input may be (CPC_MAX_AUDIO_SECONDS, _IMAGE_PIXELS, _TEXT_CHARS)."""

    max_audio_seconds: float = 600.0
    max_image_pixels: int = 40_000_000
    max_text_chars: int = 100_000

    @classmethod
    def from_settings(cls, settings: Settings) -> InputLimits:
        return cls(settings.max_audio_seconds, settings.max_image_pixels, settings.max_text_chars)


@dataclass
class OnnxEncoder:
    """A loaded bundle: its spec, its ONNX runner and (text) its tokenizer."""

    spec: BundleSpec
    folder: Path
    runner: OnnxRunner
    limits: InputLimits = field(default_factory=InputLimits)
    tokenizer: TextTokenizer | None = None
    model_file: str = "model.onnx"
    instances: int = 1  # concurrent calls its onnxruntime threads were sized for
    # with several instances on their share of the cores: a session on all of them, for a
    # call that runs alone (one 1 s clip: 6 ms rather than 9 on 2 cores)
    solo: OnnxRunner | None = None

    @classmethod
    def load(
        cls,
        folder: str | Path,
        limits: InputLimits | None = None,
        *,
        intra_op_threads: int = 0,
        use_quantized: bool = False,
        spinning: bool = False,
        instances: int = 1,
    ) -> OnnxEncoder:
        """Read and check a bundle folder; BundleError names the file at fault.

        `instances`: how many calls the caller runs at once (0: `auto_instances`);
        `intra_op_threads` 0 picks `auto_threads` for them."""
        folder = Path(folder)
        spec = load_bundle_spec(folder)
        model_file = spec.onnx.file
        if use_quantized and spec.onnx.quantized_file:
            model_file = spec.onnx.quantized_file
        onnx = spec.onnx
        instances = instances or auto_instances()

        def session(threads: int) -> OnnxRunner:
            names = (onnx.input, onnx.encoder_output, onnx.context_output)
            path = folder / model_file
            return OnnxRunner.open(path, *names, intra_op_threads=threads, spinning=spinning)

        threads = intra_op_threads or auto_threads(spec.modality, instances)
        runner = session(threads)
        every_core = auto_threads(spec.modality, 1)
        solo = session(every_core) if not intra_op_threads and every_core > threads else None
        tokenizer = None
        if isinstance(spec.preprocess, TextPreprocess):
            tokenizer = TextTokenizer.from_file(
                folder / spec.preprocess.tokenizer_file, spec.preprocess
            )
        limits = limits or InputLimits()
        return cls(spec, folder, runner, limits, tokenizer, model_file, instances, solo)

    @classmethod
    def from_settings(
        cls,
        folder: str | Path,
        settings: Settings,
        *,
        quantized: bool | None = None,
        instances: int = 1,
    ) -> OnnxEncoder:
        """`load` with the limits and onnxruntime options of `settings`, for `instances`
        concurrent calls (the server's batcher: 0, CPC_INFERENCE_INSTANCES' default; one
        for a serial caller).

        `quantized` overrides `settings.use_quantized` (benchmarks load both).
        """
        return cls.load(
            folder,
            InputLimits.from_settings(settings),
            intra_op_threads=settings.intra_op_threads,
            use_quantized=settings.use_quantized if quantized is None else quantized,
            spinning=settings.onnx_spinning,
            instances=instances,
        )

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def modality(self) -> str:
        return self.spec.modality

    # -- prepare ---------------------------------------------------------------

    def prepare(self, raw: bytes | str) -> Prepared:
        """Decode and preprocess one input; InvalidInput or TooLarge say what is wrong."""
        pre = self.spec.preprocess
        if isinstance(pre, AudioPreprocess):
            return self._prepare_audio(_as_bytes(raw, "audio"), pre)
        if isinstance(pre, ImagePreprocess):
            return self._prepare_image(_as_bytes(raw, "image"), pre)
        return self._prepare_text(_as_text(raw), pre)

    def _prepare_audio(self, data: bytes, pre: AudioPreprocess) -> Prepared:
        return self.prepare_wave(decode_audio(data, pre.sample_rate, self.limits.max_audio_seconds))

    def prepare_wave(self, wave: np.ndarray) -> Prepared:
        """A decoded mono float32 waveform at the bundle's sample rate, as a model input."""
        pre = self.spec.preprocess
        if not isinstance(pre, AudioPreprocess):
            raise InvalidInput(f"model {self.name} takes {self.modality}, not audio samples")
        steps = pre.num_steps(len(wave))
        if steps == 0:
            need = pre.receptive_field
            raise InvalidInput(
                f"the audio input is too short: needs at least {need} samples "
                f"({need / pre.sample_rate:.4g} s at {pre.sample_rate} Hz), "
                f"got {len(wave)}"
            )
        return Prepared(wave, steps)

    def _prepare_image(self, data: bytes, pre: ImagePreprocess) -> Prepared:
        img = decode_image(data, self.limits.max_image_pixels)
        patches = preprocess_image(img, pre)
        rows, cols = pre.grid
        return Prepared(patches, rows * cols)

    def _prepare_text(self, text: str, pre: TextPreprocess) -> Prepared:
        if len(text) > self.limits.max_text_chars:
            raise TooLarge(
                f"the text input is {len(text)} characters; "
                f"the limit is {self.limits.max_text_chars} (CPC_MAX_TEXT_CHARS)"
            )
        assert self.tokenizer is not None
        ids, sentences = self.tokenizer.encode_document(text)
        return Prepared(ids, len(sentences), sentences, int((ids != pre.pad_id).sum()))

    # -- run -------------------------------------------------------------------

    def collate(self, prepared: list[Prepared]) -> np.ndarray:
        """Stack inputs into one batch, right-padded to the longest."""
        return collate([p.array for p in prepared], self.spec.preprocess)

    def run(self, prepared: list[Prepared], alone: bool = False) -> list[StepVectors]:
        """One onnxruntime call; per input (z [steps, Z], c [steps, C]) in input order.

        `alone`: no other call runs meanwhile, so the `solo` session may take every core."""
        arrays = [p.array for p in prepared]
        runner = self.solo if alone and self.solo is not None else self.runner
        return runner.run(arrays, [p.steps for p in prepared], self.spec.preprocess)

    def release_arena(self) -> None:
        """Hand the arena memory no call is using back (between batches, when idle)."""
        batch = self.collate([self.warmup_input()])
        for runner in (self.runner, self.solo):
            if runner is not None:
                runner.release_arena(batch)

    # -- warm-up and description ------------------------------------------------

    def warmup_input(self) -> Prepared:
        """A valid input of the model's modality, made without any file."""
        pre = self.spec.preprocess
        if isinstance(pre, AudioPreprocess):
            n = max(pre.sample_rate, pre.receptive_field)
            wave = (0.01 * np.sin(np.arange(n, dtype=np.float32) / 7.0)).astype(np.float32)
            return Prepared(wave, pre.num_steps(n))
        if isinstance(pre, ImagePreprocess):
            rows, cols = pre.grid
            shape = (rows, cols, 3, pre.patch_size, pre.patch_size)
            return Prepared(np.zeros(shape, dtype=np.float32), rows * cols)
        return self._prepare_text(WARMUP_TEXT, pre)

    def warmup(self) -> None:
        """Run a batch of one and of two (and one on the `solo` session, if any);
        BundleError if the widths differ from bundle.json."""
        sample = self.warmup_input()
        calls = [([sample], False), ([sample, sample], False)]
        if self.solo is not None:
            calls.append(([sample], True))
        for batch, alone in calls:
            (z, c), *_ = self.run(batch, alone)
            if z.shape[-1] != self.spec.dims.encoder or c.shape[-1] != self.spec.dims.context:
                raise BundleError(
                    f"{self.folder / self.model_file}: returns z of width {z.shape[-1]} and c of "
                    f"width {c.shape[-1]}, bundle.json says {self.spec.dims.encoder} and "
                    f"{self.spec.dims.context}"
                )

    def describe(self) -> dict[str, Any]:
        """What /models reports about this bundle."""
        pre = self.spec.preprocess
        summary: dict[str, Any] = pre.model_dump()
        if isinstance(pre, AudioPreprocess):
            summary.update(
                hop_samples=pre.hop_samples,
                hop_seconds=pre.hop_seconds,
                min_samples=pre.receptive_field,
            )
        elif isinstance(pre, ImagePreprocess):
            summary["grid"] = list(pre.grid)
        elif self.tokenizer is not None:
            summary["vocab_size"] = self.tokenizer.vocab_size
        return {
            "name": self.spec.name,
            "modality": self.spec.modality,
            "dims": self.spec.dims.model_dump(),
            "version": self.spec.version,
            "input": self.spec.onnx.input,
            "model_file": self.model_file,
            "quantized": self.model_file == self.spec.onnx.quantized_file,
            "preprocessing": summary,
            "metrics": self.spec.metrics,
            "created_at": self.spec.created_at,
        }


def _as_bytes(raw: bytes | str, what: str) -> bytes:
    if isinstance(raw, bytes | bytearray | memoryview):
        return bytes(raw)
    raise InvalidInput(f"the {what} input must be file bytes, not a text string")


def _as_text(raw: bytes | str) -> str:
    if isinstance(raw, str):
        return raw
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"the text input is not valid UTF-8 ({exc.reason})") from exc
