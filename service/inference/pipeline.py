"""The encode pipeline every route shares: resolve model → inputs → prepare → batch → pool.

`embed_inputs` is the one way the service turns API inputs into vectors, so
/embed, /v1/embeddings, collection upserts and /search all batch together
through each model's `DynamicBatcher`. Decoding and preprocessing run in a
worker thread; inference runs in the batcher's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from service.bundle import AudioPreprocess, ImagePreprocess
from service.errors import CPCError
from service.inference.inputs import ApiInput, check_batch, infer_modality, to_raw
from service.inference.model import OnnxEncoder, Prepared
from service.inference.pooling import Pooling, l2_normalize, pool, pooled_dim
from service.inference.registry import ModelRegistry, ServedModel

logger = logging.getLogger(__name__)
# Text this short is tokenised on the event loop (well under a millisecond):
# the hop to a worker thread and back would cost more than the work.
Layer = Literal["context", "encoder"]  # which vectors: c (g_ar) or z (g_enc)
INLINE_TEXT_CHARS = 2048


@dataclass
class Embeddings:
    """The vectors of one request, in input order, and what they are."""

    model: ServedModel
    layer: Layer
    pooling: Pooling
    normalized: bool
    vectors: list[np.ndarray]  # float32 [dim] per input; [steps, D] under pooling "none"
    steps: list[int]  # valid steps per input
    usage: list[int]  # tokens (text) or steps per input, as the OpenAI API counts
    sentences: list[list[str]] | None = None  # text: the sentences the steps stand for

    @property
    def dim(self) -> int:
        """Values per vector (per step under "none"): the layer's width D, 2·D for "stats"."""
        dims = self.model.encoder.spec.dims
        return pooled_dim(dims.context if self.layer == "context" else dims.encoder, self.pooling)

    def step_info(self) -> dict[str, Any]:
        """What a step is: hop_seconds (audio), grid (image) or sentences (text)."""
        pre = self.model.encoder.spec.preprocess
        if isinstance(pre, AudioPreprocess):
            return {"hop_seconds": pre.hop_seconds}
        if isinstance(pre, ImagePreprocess):
            return {"grid": list(pre.grid)}
        return {"sentences": self.sentences or []}


def _prepare_all(encoder: OnnxEncoder, raws: list[bytes | str]) -> list[Prepared]:
    """Prepare every input; a failure names the input's index."""
    prepared: list[Prepared] = []
    for index, raw in enumerate(raws):
        try:
            prepared.append(encoder.prepare(raw))
        except CPCError as exc:
            raise type(exc)(f"input {index}: {exc.detail}") from exc
    return prepared


async def embed_inputs(
    registry: ModelRegistry,
    inputs: Sequence[ApiInput],
    *,
    model: str | None = None,
    modality: str | None = None,
    pooling: Pooling = "mean",
    layer: Layer = "context",
    normalize: bool = True,
    max_batch: int | None = None,
) -> Embeddings:
    """Embed API inputs with one model through its batcher.

    `inputs` are JSON strings (text, or base64 / data URIs for audio and
    images), `PlainText` or file `bytes` (see `service.inference.inputs`). The model is
    `model`, else the default of `modality`, else the modality recognised from
    the inputs. Raises the domain errors of docs/api.md (400, 404, 413, 415, 429).
    """
    check_batch(len(inputs), max_batch)
    if model is None and modality is None:
        modality = infer_modality(inputs)
    served = registry.resolve(model, modality)
    raws = [to_raw(value, i, served.modality, served.name) for i, value in enumerate(inputs)]
    if served.modality == "text" and sum(len(r) for r in raws) <= INLINE_TEXT_CHARS:
        prepared = _prepare_all(served.encoder, raws)
    else:
        prepared = await asyncio.to_thread(_prepare_all, served.encoder, raws)
    outputs = await served.batcher.submit(prepared)
    vectors: list[np.ndarray] = []
    for z, c in outputs:
        pooled = pool(c if layer == "context" else z, pooling)
        vectors.append(l2_normalize(pooled) if normalize else pooled)
    sentences = [p.sentences or [] for p in prepared] if served.modality == "text" else None
    return Embeddings(
        model=served,
        layer=layer,
        pooling=pooling,
        normalized=normalize,
        vectors=vectors,
        steps=[p.steps for p in prepared],
        usage=[p.usage for p in prepared],
        sentences=sentences,
    )
