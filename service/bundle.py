"""The model bundle: the contract between training and serving.

A bundle is a folder holding `model.onnx`, `bundle.json` (this schema) and, for
text, the tokenizer file it names. Training writes it with `write_bundle`;
the service reads it with `load_bundle_spec` and needs nothing else.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.errors import BundleError

FORMAT_VERSION = 1
BUNDLE_FILE = "bundle.json"
Modality = Literal["audio", "image", "text"]
MODALITIES: tuple[Modality, ...] = ("audio", "image", "text")


class Dims(BaseModel):
    """Widths of the two served layers."""

    context: int = Field(gt=0, description="width of c_t, the autoregressor output")
    encoder: int = Field(gt=0, description="width of z_t, the encoder output")


class OnnxSpec(BaseModel):
    """Where the graph is and what its inputs and outputs are called."""

    file: str = "model.onnx"
    quantized_file: str | None = Field(
        default=None, description="uint8-weight copy written by `export --quantize`"
    )
    input: str = Field(description="the single input: audio, patches or tokens")
    encoder_output: str = "z"
    context_output: str = "c"
    opset: int = 17


class AudioPreprocess(BaseModel):
    """Raw mono waveform at `sample_rate`; one step per `hop_samples`."""

    modality: Literal["audio"] = "audio"
    sample_rate: int = Field(16000, gt=0)
    conv_kernels: list[int] = Field(description="kernel of each strided conv, in order")
    conv_strides: list[int] = Field(description="stride of each strided conv, in order")

    @property
    def hop_samples(self) -> int:
        hop = 1
        for s in self.conv_strides:
            hop *= s
        return hop

    @property
    def hop_seconds(self) -> float:
        return self.hop_samples / self.sample_rate

    @property
    def receptive_field(self) -> int:
        """Samples that one step sees (the convs are unpadded)."""
        field, jump = 1, 1
        for k, s in zip(self.conv_kernels, self.conv_strides, strict=True):
            field += (k - 1) * jump
            jump *= s
        return field

    def num_steps(self, num_samples: int) -> int:
        """Valid steps for a waveform of `num_samples` (0 if shorter than one step)."""
        n = num_samples
        for k, s in zip(self.conv_kernels, self.conv_strides, strict=True):
            if n < k:
                return 0
            n = (n - k) // s + 1
        return n


class ImagePreprocess(BaseModel):
    """RGB image resized to `image_size`² and cut into an overlapping patch grid."""

    modality: Literal["image"] = "image"
    image_size: int = Field(64, gt=0)
    patch_size: int = Field(16, gt=0)
    patch_stride: int = Field(8, gt=0)
    mean: list[float] = Field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = Field(default_factory=lambda: [0.25, 0.25, 0.25])

    @property
    def grid(self) -> tuple[int, int]:
        n = (self.image_size - self.patch_size) // self.patch_stride + 1
        return n, n


class TextPreprocess(BaseModel):
    """A document cut into units (sentences, or chunks of tokens), each a row of subword ids.

    `sentence_splitter` "rules-v1" makes one unit per sentence; "chunks-v1" cuts the
    document's token stream into units of `chunk_tokens` tokens, so a one-sentence
    text still has several steps. Rows are right-padded with `pad_id`.
    """

    modality: Literal["text"] = "text"
    tokenizer_file: str = "tokenizer.json"
    max_tokens: int = Field(64, gt=0, description="tokens kept per unit")
    max_sentences: int = Field(256, gt=0, description="units kept per document")
    pad_id: int = 0
    sentence_splitter: str = "rules-v1"
    chunk_tokens: int | None = Field(
        None, gt=0, description='"chunks-v1": tokens per unit (the last one may be shorter)'
    )


Preprocess = Annotated[
    AudioPreprocess | ImagePreprocess | TextPreprocess, Field(discriminator="modality")
]


class BundleSpec(BaseModel):
    """Everything `bundle.json` records."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    format_version: int = FORMAT_VERSION
    name: str
    modality: Modality
    version: str = "1"
    dims: Dims
    onnx: OnnxSpec
    preprocess: Preprocess
    training: dict[str, Any] = Field(default_factory=dict, description="the full train config")
    data: dict[str, Any] = Field(default_factory=dict, description="what it was trained on")
    metrics: dict[str, Any] = Field(default_factory=dict, description="measured at export")
    created_at: str = ""


def load_bundle_spec(folder: str | Path) -> BundleSpec:
    """Read and validate `folder/bundle.json`; BundleError names the bad file."""
    path = Path(folder) / BUNDLE_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise BundleError(f"{path}: missing") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: not readable JSON ({exc})") from exc
    try:
        spec = BundleSpec.model_validate(raw)
    except ValidationError as exc:
        raise BundleError(f"{path}: does not match the bundle schema: {exc}") from exc
    if spec.format_version != FORMAT_VERSION:
        raise BundleError(
            f"{path}: format_version {spec.format_version} is not supported "
            f"(this release reads {FORMAT_VERSION})"
        )
    if spec.preprocess.modality != spec.modality:
        raise BundleError(
            f"{path}: preprocess is for {spec.preprocess.modality}, bundle is {spec.modality}"
        )
    for name in [spec.onnx.file, spec.onnx.quantized_file] + (
        [spec.preprocess.tokenizer_file] if isinstance(spec.preprocess, TextPreprocess) else []
    ):
        if name is not None and not (Path(folder) / name).is_file():
            raise BundleError(f"{path}: names {name}, which is not in the bundle")
    return spec


def write_bundle_spec(folder: str | Path, spec: BundleSpec) -> Path:
    """Write `bundle.json` atomically (temp file, fsync, rename)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / BUNDLE_FILE
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".bundle-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(spec.model_dump_json(indent=2))
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a service running as another user reads it
    os.replace(tmp, target)
    return target
