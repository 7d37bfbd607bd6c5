"""Image encoder g_enc: a small ResNet applied to every patch of a grid independently.

Normalisation is GroupNorm with one group (statistics of a single patch), never
batch norm, so patches and images in a batch never see each other. The graph
uses only reshapes with -1 for the batch, so it exports to ONNX with a dynamic
batch axis.
"""

from __future__ import annotations

from torch import Tensor, nn

from training.config import ImageModelConfig


def _norm(channels: int) -> nn.GroupNorm:
    """Per-sample normalisation over channels and space."""
    return nn.GroupNorm(1, channels)


class ResidualBlock(nn.Module):
    """Two 3x3 convs with a skip connection; `stride` 2 halves the resolution."""

    def __init__(self, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _norm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm2 = _norm(channels)
        self.act = nn.ReLU()
        self.skip: nn.Module = nn.Identity()
        if stride != 1:
            self.skip = nn.Sequential(
                nn.Conv2d(channels, channels, 1, stride=stride, bias=False), _norm(channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        # x: [N, ch, H, W] -> [N, ch, H/stride, W/stride]
        h = self.act(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        return self.act(h + self.skip(x))


class PatchEncoder(nn.Module):
    """Patch grid [B, rows, cols, 3, P, P] -> z [B, rows, cols, encoder_dim].

    A stride-2 stem, then two stages of `cfg.blocks` residual blocks at width
    `cfg.channels`; the first block of the second stage has stride 2.
    Global average pool, then a linear map.
    """

    def __init__(self, cfg: ImageModelConfig) -> None:
        super().__init__()
        if cfg.blocks < 1:
            raise ValueError(f"blocks must be >= 1, got {cfg.blocks}")
        ch = cfg.channels
        # A strided stem halves the patch first: 4x less compute in every block after it.
        self.stem = nn.Sequential(
            nn.Conv2d(3, ch, 4, stride=2, padding=1, bias=False), _norm(ch), nn.ReLU()
        )
        stage1 = [ResidualBlock(ch) for _ in range(cfg.blocks)]
        stage2 = [ResidualBlock(ch, stride=2)] + [ResidualBlock(ch) for _ in range(cfg.blocks - 1)]
        self.blocks = nn.Sequential(*stage1, *stage2)
        self.head = nn.Linear(ch, cfg.encoder_dim)

    def forward(self, patches: Tensor) -> Tensor:
        # patches: [B, rows, cols, 3, P, P]
        rows, cols = patches.shape[1], patches.shape[2]
        p_h, p_w = patches.shape[4], patches.shape[5]
        x = patches.reshape(-1, 3, p_h, p_w)  # [B*rows*cols, 3, P, P]
        h = self.blocks(self.stem(x))  # [B*rows*cols, ch, P/4, P/4]
        h = h.mean(dim=(2, 3))  # [B*rows*cols, ch]
        z = self.head(h)  # [B*rows*cols, encoder_dim]
        return z.reshape(-1, rows, cols, z.shape[-1])  # [B, rows, cols, encoder_dim]
