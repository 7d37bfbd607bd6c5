"""Audio encoder g_enc: a stack of unpadded strided 1-D convolutions over the raw waveform.

Every conv is "valid" (no padding), so step t depends only on samples
[hop*t, hop*t + receptive_field) and right-padding a batch never changes a valid
step. Normalisation is a LayerNorm over channels at each time step (never batch
norm, which would let sequences in a batch see each other).

In training the same convolutions run as matrix products over a [B, T, C]
(channels-last) layout (`AudioEncoder.rows_forward`): the LayerNorm then needs no
transposes, and on a CPU the products are several times faster than the
convolutions and their layout copies. Evaluation and ONNX export keep the
convolutions, so the exported graph does not change.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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
        if self.training and not torch.onnx.is_in_onnx_export():
            return self.rows_forward(audio)
        h = self.convs(audio.unsqueeze(1))  # [B, channels, S]
        z = self.proj(h)  # [B, encoder_dim, S]
        return z.transpose(1, 2)  # [B, S, encoder_dim]

    def rows_forward(self, audio: Tensor) -> Tensor:
        """The same function as the convolutions, as matrix products over [B, T, C] rows."""
        # audio: [B, samples]
        h = audio.unsqueeze(-1)  # [B, samples, 1]
        for i in range(0, len(self.convs), 3):
            conv, norm = self.convs[i], self.convs[i + 1]
            assert isinstance(conv, nn.Conv1d) and isinstance(norm, ChannelLayerNorm)
            h = F.relu(norm.norm(_conv_rows(h, conv)))  # [B, T', channels]
        return F.linear(h, self.proj.weight.squeeze(-1), self.proj.bias)  # [B, S, encoder_dim]


def _conv_rows(x: Tensor, conv: nn.Conv1d) -> Tensor:
    """`conv` (unpadded, undilated) of x [B, T, Ci] -> [B, L, Co], L = (T - k) // s + 1.

    One input channel: the windows are unfolded and multiplied by the kernel.
    Otherwise the T rows are regrouped into blocks of s (a view when T divides),
    each block is multiplied by the m = ceil(k / s) slices of s taps of the kernel
    in one product, and output row t adds slice j of block t + j.
    """
    weight, bias = conv.weight, conv.bias  # [Co, Ci, k], [Co]
    co, ci, k = weight.shape
    s = conv.stride[0]
    b, t, _ = x.shape
    length = (t - k) // s + 1
    if ci == 1:
        frames = x.squeeze(-1).unfold(1, k, s)  # [B, L, k]
        return F.linear(frames, weight.squeeze(1), bias)
    m = -(-k // s)
    rows = (length + m - 1) * s  # input rows the blocks cover
    if rows > t:
        x = F.pad(x, (0, 0, 0, rows - t))  # rows only the zero taps below reach
    taps = F.pad(weight, (0, m * s - k)).permute(0, 2, 1)  # [Co, m*s, Ci], tap-major
    blocks = x[:, :rows].reshape(b, length + m - 1, s * ci)
    slices = taps.reshape(co, m, s * ci).transpose(0, 1).reshape(m * co, s * ci)
    if bias is not None:  # added once, with slice 0, inside the product
        bias = torch.cat([bias, bias.new_zeros((m - 1) * co)])
    parts = F.linear(blocks, slices, bias)  # [B, L + m - 1, m*Co]
    out = parts[:, :length, :co]
    for j in range(1, m):
        out = out + parts[:, j : j + length, j * co : (j + 1) * co]
    return out
