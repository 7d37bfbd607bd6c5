"""One model bundle served with onnxruntime: prepare inputs, run batches, slice results.

`OnnxEncoder.prepare` turns one raw input (file bytes, or a string for text)
into the model's input array with the shared preprocessing, enforcing the
length and size limits; `run` collates several prepared inputs with right
padding (zeros for audio, `pad_id` for text; images all have one shape),
makes one onnxruntime call and slices each result back to its valid steps.
Right padding is safe because the encoders never look right and the
autoregressors are causal (see docs/architecture.md).

`run` blocks: the batcher calls it in a worker thread, never on the event loop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.bundle import (
    AudioPreprocess,
    BundleSpec,
    ImagePreprocess,
    TextPreprocess,
    load_bundle_spec,
)
from service.config import Settings
from service.errors import BundleError, InvalidInput, TooLarge
from service.preprocess import (
    TextTokenizer,
    decode_audio,
    decode_image,
    pad_token_batch,
    preprocess_image,
)

logger = logging.getLogger(__name__)

WARMUP_TEXT = "Warming up the model. This is the second sentence."


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
class Limits:
    """Per-input limits from the settings."""

    max_audio_seconds: float = 600.0
    max_image_pixels: int = 40_000_000
    max_text_chars: int = 100_000

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(settings.max_audio_seconds, settings.max_image_pixels, settings.max_text_chars)


def _session(path: Path, intra_op_threads: int, spinning: bool) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    # Memory patterns are planned per input shape; with variable lengths they
    # only add memory with every new length, so they are off.
    opts.enable_mem_pattern = False
    opts.log_severity_level = 3
    if intra_op_threads > 0:
        opts.intra_op_num_threads = intra_op_threads
    # Spinning worker threads keep their cores busy between calls, which starves
    # the event loop and the decoders on a small machine; off unless asked for.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
        raise BundleError(f"{path}: onnxruntime cannot load it ({exc})") from exc


@dataclass
class OnnxEncoder:
    """A loaded bundle: its spec, an onnxruntime session and (text) its tokenizer."""

    spec: BundleSpec
    folder: Path
    session: ort.InferenceSession
    limits: Limits = field(default_factory=Limits)
    tokenizer: TextTokenizer | None = None
    model_file: str = "model.onnx"

    @classmethod
    def load(
        cls,
        folder: str | Path,
        limits: Limits | None = None,
        *,
        intra_op_threads: int = 0,
        use_quantized: bool = False,
        spinning: bool = False,
    ) -> OnnxEncoder:
        """Read and check a bundle folder; BundleError names the file at fault."""
        folder = Path(folder)
        spec = load_bundle_spec(folder)
        model_file = spec.onnx.file
        if use_quantized and spec.onnx.quantized_file:
            model_file = spec.onnx.quantized_file
        path = folder / model_file
        session = _session(path, intra_op_threads, spinning)
        inputs = [i.name for i in session.get_inputs()]
        outputs = [o.name for o in session.get_outputs()]
        if spec.onnx.input not in inputs:
            raise BundleError(f"{path}: has inputs {inputs}, bundle.json names {spec.onnx.input!r}")
        for name in (spec.onnx.encoder_output, spec.onnx.context_output):
            if name not in outputs:
                raise BundleError(f"{path}: has outputs {outputs}, bundle.json names {name!r}")
        tokenizer = None
        if isinstance(spec.preprocess, TextPreprocess):
            tokenizer = TextTokenizer.from_file(
                folder / spec.preprocess.tokenizer_file, spec.preprocess
            )
        return cls(spec, folder, session, limits or Limits(), tokenizer, model_file)

    @classmethod
    def from_settings(
        cls, folder: str | Path, settings: Settings, *, quantized: bool | None = None
    ) -> OnnxEncoder:
        """`load` with the limits and onnxruntime options of `settings`.

        `quantized` overrides `settings.use_quantized` (benchmarks load both).
        """
        return cls.load(
            folder,
            Limits.from_settings(settings),
            intra_op_threads=settings.intra_op_threads,
            use_quantized=settings.use_quantized if quantized is None else quantized,
            spinning=settings.onnx_spinning,
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
        pre = self.spec.preprocess
        if isinstance(pre, AudioPreprocess):
            longest = max(p.array.shape[0] for p in prepared)
            batch = np.zeros((len(prepared), longest), dtype=np.float32)
            for i, p in enumerate(prepared):
                batch[i, : p.array.shape[0]] = p.array
            return batch
        if isinstance(pre, ImagePreprocess):
            return np.stack([p.array for p in prepared]).astype(np.float32, copy=False)
        return pad_token_batch([p.array for p in prepared], pre.pad_id)

    def run(self, prepared: list[Prepared]) -> list[tuple[np.ndarray, np.ndarray]]:
        """One onnxruntime call; per input (z [steps, Z], c [steps, C]) in input order."""
        if not prepared:
            return []
        onnx = self.spec.onnx
        z, c = self.session.run(
            [onnx.encoder_output, onnx.context_output], {onnx.input: self.collate(prepared)}
        )
        out: list[tuple[np.ndarray, np.ndarray]] = []
        for i, p in enumerate(prepared):
            zi = z[i].reshape(-1, z.shape[-1])
            ci = c[i].reshape(-1, c.shape[-1])
            if zi.shape[0] < p.steps or ci.shape[0] < p.steps:
                raise RuntimeError(
                    f"model {self.name} returned {ci.shape[0]} steps for an input of {p.steps}"
                )
            out.append(
                (
                    np.array(zi[: p.steps], dtype=np.float32),
                    np.array(ci[: p.steps], dtype=np.float32),
                )
            )
        return out

    def release_arena(self) -> None:
        """Hand the arena memory no call is using back (between batches, when idle).

        onnxruntime's arena keeps what the largest call needed. It can shrink
        only at the end of a call, and a batch's own outputs still hold their
        chunk then; so a small call with shrinking on, once the last batch's
        outputs are gone, frees every chunk but the first.
        """
        options = ort.RunOptions()
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        onnx = self.spec.onnx
        batch = self.collate([self.warmup_input()])
        self.session.run([onnx.context_output], {onnx.input: batch}, options)

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
        """Run a batch of one and of two; BundleError if the widths differ from bundle.json."""
        sample = self.warmup_input()
        for batch in ([sample], [sample, sample]):
            (z, c), *_ = self.run(batch)
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
