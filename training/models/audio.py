"""Audio encoder g_enc: a stack of unpadded strided 1-D convolutions over the raw waveform.

Every conv is "valid" (no padding), so step t depends only on samples
[hop*t, hop*t + receptive_field) and right-padding a batch never changes a valid
step. Normalisation is a LayerNorm over channels at each time step (never batch
norm, which would let sequences in a batch see each other).
"""

from __future__ import annotations

from torch import Tensor, nn

from training.config import AudioModelConfig


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of a [B, C, T] tensor, independently per step."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        # x: [B, C, T] -> [B, T, C] -> norm -> [B, C, T]
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


class AudioEncoder(nn.Module):
    """Raw waveform [B, samples] -> z [B, S, encoder_dim], one step per hop samples."""

    def __init__(self, cfg: AudioModelConfig) -> None:
        super().__init__()
        if len(cfg.conv_kernels) != len(cfg.conv_strides) or not cfg.conv_kernels:
            raise ValueError(
                f"conv_kernels {cfg.conv_kernels} and conv_strides {cfg.conv_strides} "
                "must be non-empty and of equal length"
            )
        layers: list[nn.Module] = []
        in_ch = 1
        for kernel, stride in zip(cfg.conv_kernels, cfg.conv_strides, strict=True):
            layers += [
                nn.Conv1d(in_ch, cfg.channels, kernel, stride=stride),
                ChannelLayerNorm(cfg.channels),
                nn.ReLU(),
            ]
            in_ch = cfg.channels
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Conv1d(cfg.channels, cfg.encoder_dim, kernel_size=1)

    def forward(self, audio: Tensor) -> Tensor:
        # audio: [B, samples]
        h = self.convs(audio.unsqueeze(1))  # [B, channels, S]
        z = self.proj(h)  # [B, encoder_dim, S]
        return z.transpose(1, 2)  # [B, S, encoder_dim]
