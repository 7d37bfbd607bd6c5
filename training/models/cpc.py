"""The CPC model: an encoder g_enc and an autoregressor g_ar, built from a TrainConfig.

The model returns (z, c) and owns no prediction heads: the W_k maps live in the
loss (`training.infonce.CPCCriterion`), so an exported model is g_enc + g_ar only.
"""

from __future__ import annotations

from torch import Tensor, nn

from training.config import (
    AudioModelConfig,
    ImageModelConfig,
    TextModelConfig,
    TrainConfig,
)
from training.models.audio import AudioEncoder
from training.models.autoregressive import GRUContext, RowCausalContext
from training.models.image import PatchEncoder
from training.models.text import SentenceEncoder

TEXT_PAD_ID = 0  # the tokenizer reserves id 0 for padding


class CPCModel(nn.Module):
    """x -> (z = g_enc(x), c = g_ar(z))."""

    def __init__(self, encoder: nn.Module, autoregressor: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.autoregressor = autoregressor

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        # x: audio [B, samples] | patches [B, R, Cc, 3, P, P] | tokens [B, S, L]
        z = self.encoder(x)  # [B, T, Z] or [B, R, Cc, Z]
        c = self.autoregressor(z)  # [B, T, C] or [B, R, Cc, C]
        return z, c


def build_model(cfg: TrainConfig) -> CPCModel:
    """The CPC model for `cfg.modality`, sized by `cfg.model`."""
    m = cfg.model
    if cfg.modality == "audio" and isinstance(m, AudioModelConfig):
        return CPCModel(AudioEncoder(m), GRUContext(m.encoder_dim, m.context_dim))
    if cfg.modality == "image" and isinstance(m, ImageModelConfig):
        return CPCModel(
            PatchEncoder(m), RowCausalContext(m.encoder_dim, m.context_dim, m.context_layers)
        )
    if cfg.modality == "text" and isinstance(m, TextModelConfig):
        return CPCModel(
            SentenceEncoder(m, pad_id=TEXT_PAD_ID), GRUContext(m.encoder_dim, m.context_dim)
        )
    raise ValueError(f"modality {cfg.modality!r} does not match model config {type(m).__name__}")


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters in `model` (trainable or not)."""
    return sum(p.numel() for p in model.parameters())
