"""Autoregressors g_ar: summarise z_<=t into c_t.

`GRUContext` runs over a sequence (audio frames, sentences). `RowCausalContext`
runs over an image's patch grid with masked convolutions (PixelCNN-style) so
that output row i sees input rows <= i only, in any column.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class GRUContext(nn.Module):
    """z [B, T, Z] -> c [B, T, C] with a one-layer, unidirectional (causal) GRU."""

    def __init__(self, input_dim: int, context_dim: int) -> None:
        super().__init__()
        self.gru = nn.GRU(input_dim, context_dim, num_layers=1, batch_first=True)

    def forward(self, z: Tensor) -> Tensor:
        # z: [B, T, Z]
        c, _ = self.gru(z)  # [B, T, C]
        return c


class RowCausalConv(nn.Module):
    """A 2-D conv over [B, C, R, Cc] padded only on top, so row i sees rows i-kh+1..i."""

    def __init__(self, in_ch: int, out_ch: int, kernel: tuple[int, int] = (3, 3)) -> None:
        super().__init__()
        kh, kw = kernel
        if kw % 2 != 1:
            raise ValueError(f"kernel width must be odd to pad symmetrically, got {kw}")
        self.padding = (kw // 2, kw // 2, kh - 1, 0)  # (left, right, top, bottom)
        self.conv = nn.Conv2d(in_ch, out_ch, kernel)

    def forward(self, x: Tensor) -> Tensor:
        # x: [B, C, R, Cc] -> [B, out_ch, R, Cc]
        return self.conv(F.pad(x, self.padding))


class RowCausalBlock(nn.Module):
    """Residual block: ReLU -> row-causal 3x3 conv -> ReLU -> 1x1 conv, added to the input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = RowCausalConv(channels, channels)
        self.mix = nn.Conv2d(channels, channels, 1)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        # x: [B, C, R, Cc]
        return x + self.mix(self.act(self.conv(self.act(x))))


class RowCausalContext(nn.Module):
    """z grid [B, R, Cc, Z] -> c grid [B, R, Cc, C]; c at row i depends on z rows <= i."""

    def __init__(self, input_dim: int, context_dim: int, layers: int) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        self.inp = nn.Conv2d(input_dim, context_dim, 1)
        self.blocks = nn.Sequential(*[RowCausalBlock(context_dim) for _ in range(layers)])

    def forward(self, z: Tensor) -> Tensor:
        # z: [B, R, Cc, Z]
        h = self.inp(z.permute(0, 3, 1, 2))  # [B, C, R, Cc]
        h = self.blocks(h)  # [B, C, R, Cc]
        return h.permute(0, 2, 3, 1)  # [B, R, Cc, C]
