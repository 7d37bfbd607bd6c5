"""Text encoder g_enc: one vector per sentence from a 1-D conv over token embeddings.

Pad tokens get zero embeddings and are left out of the mean pool, and there is
a single conv layer whose zero padding looks exactly like pad tokens, so extra
pad tokens (or whole pad sentences) on the right never change a valid output.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from training.config import TextModelConfig


class SentenceEncoder(nn.Module):
    """Token ids [B, S, L] (padded with `pad_id`) -> z [B, S, encoder_dim]."""

    def __init__(self, cfg: TextModelConfig, pad_id: int = 0) -> None:
        super().__init__()
        if cfg.kernel_size < 1:
            raise ValueError(f"kernel_size must be >= 1, got {cfg.kernel_size}")
        self.pad_id = pad_id
        self.token_dropout = cfg.token_dropout
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim, padding_idx=pad_id)
        self.conv = nn.Conv1d(
            cfg.embed_dim, cfg.channels, cfg.kernel_size, padding=cfg.kernel_size // 2
        )
        self.act = nn.ReLU()
        self.proj = nn.Linear(cfg.channels, cfg.encoder_dim)

    def forward(self, tokens: Tensor) -> Tensor:
        # tokens: [B, S, L] int64
        num_sentences, length = tokens.shape[1], tokens.shape[2]
        flat = tokens.reshape(-1, length)  # [B*S, L]
        if self.training and self.token_dropout > 0:
            # Drop whole tokens (as if absent): the model cannot memorise exact sentences.
            drop = torch.rand(flat.shape, device=flat.device) < self.token_dropout
            flat = flat.masked_fill(drop, self.pad_id)
        mask = (flat != self.pad_id).unsqueeze(-1).float()  # [B*S, L, 1]
        emb = self.embed(flat) * mask  # [B*S, L, E]
        h = self.act(self.conv(emb.transpose(1, 2)))  # [B*S, ch, L (+1 for an even kernel)]
        h = h[:, :, :length].transpose(1, 2)  # [B*S, L, ch]
        count = mask.sum(dim=1).clamp(min=1.0)  # [B*S, 1]
        pooled = (h * mask).sum(dim=1) / count  # [B*S, ch]
        z = self.proj(pooled)  # [B*S, encoder_dim]
        return z.reshape(-1, num_sentences, z.shape[-1])  # [B, S, encoder_dim]
