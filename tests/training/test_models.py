"""Shapes, causality, padding invariance and ONNX export of the CPC models."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from service.bundle import AudioPreprocess
from training.config import (
    AudioModelConfig,
    ImageModelConfig,
    TextModelConfig,
    TrainConfig,
    default_config,
)
from training.infonce import CPCCriterion
from training.models import CPCModel, build_model, count_parameters

AUDIO = dataclasses.replace(AudioModelConfig(), channels=16, encoder_dim=16, context_dim=16)
IMAGE = dataclasses.replace(
    ImageModelConfig(),
    image_size=32,
    patch_size=8,
    patch_stride=8,
    channels=8,
    blocks=1,
    encoder_dim=16,
    context_dim=16,
    context_layers=2,
)
TEXT = dataclasses.replace(
    TextModelConfig(), vocab_size=50, embed_dim=8, channels=16, encoder_dim=16, context_dim=16
)
AUDIO_PRE = AudioPreprocess(
    sample_rate=AUDIO.sample_rate,
    conv_kernels=list(AUDIO.conv_kernels),
    conv_strides=list(AUDIO.conv_strides),
)


def tiny_model(modality: str) -> CPCModel:
    model_cfg = {"audio": AUDIO, "image": IMAGE, "text": TEXT}[modality]
    torch.manual_seed(0)
    return build_model(TrainConfig(modality=modality, model=model_cfg)).eval()  # type: ignore[arg-type]


def tokens(lengths: list[list[int]], max_len: int, num_sent: int, seed: int = 0) -> Tensor:
    """Token ids [B, num_sent, max_len]: sentence s of item b has lengths[b][s] non-pad tokens."""
    gen = torch.Generator().manual_seed(seed)
    out = torch.zeros(len(lengths), num_sent, max_len, dtype=torch.long)
    for b, item in enumerate(lengths):
        for s, n in enumerate(item):
            out[b, s, :n] = torch.randint(1, TEXT.vocab_size, (n,), generator=gen)
    return out


@pytest.mark.parametrize("num_samples", [465, 2000, 3217])
def test_audio_shapes_match_bundle_steps(num_samples: int) -> None:
    z, c = tiny_model("audio")(torch.randn(2, num_samples))
    steps = AUDIO_PRE.num_steps(num_samples)
    assert z.shape == (2, steps, AUDIO.encoder_dim)
    assert c.shape == (2, steps, AUDIO.context_dim)


def test_audio_causal() -> None:
    model, t = tiny_model("audio"), 6
    x = torch.randn(1, 4000)
    y = x.clone()
    y[:, AUDIO_PRE.hop_samples * t + AUDIO_PRE.receptive_field :] = torch.randn(1)
    with torch.no_grad():
        (z1, c1), (z2, c2) = model(x), model(y)
    assert not torch.allclose(z1, z2)
    torch.testing.assert_close(z1[:, : t + 1], z2[:, : t + 1], atol=1e-6, rtol=0)
    torch.testing.assert_close(c1[:, : t + 1], c2[:, : t + 1], atol=1e-6, rtol=0)


def test_audio_right_padding() -> None:
    model = tiny_model("audio")
    long, short = torch.randn(4000), torch.randn(2500)
    batch = torch.stack([long, torch.cat([short, torch.zeros(1500)])])
    with torch.no_grad():
        z, c = model(batch)
        z_s, c_s = model(short[None])
        z_l, c_l = model(long[None])
    n = AUDIO_PRE.num_steps(2500)
    torch.testing.assert_close(z[1:, :n], z_s, atol=1e-5, rtol=0)
    torch.testing.assert_close(c[1:, :n], c_s, atol=1e-5, rtol=0)
    torch.testing.assert_close(z[:1], z_l, atol=1e-5, rtol=0)
    torch.testing.assert_close(c[:1], c_l, atol=1e-5, rtol=0)


def test_text_shapes_and_all_pad_sentence() -> None:
    x = tokens([[3, 5, 0], [1, 7, 2]], max_len=8, num_sent=3)
    z, c = tiny_model("text")(x)
    assert z.shape == (2, 3, TEXT.encoder_dim) and c.shape == (2, 3, TEXT.context_dim)
    assert torch.isfinite(z).all() and torch.isfinite(c).all()


def test_text_causal() -> None:
    model, t = tiny_model("text"), 2
    x = tokens([[4, 5, 6, 3, 2, 5]], max_len=6, num_sent=6)
    y = x.clone()
    y[:, t + 1 :] = tokens([[6, 6, 6]], max_len=6, num_sent=3, seed=9)
    with torch.no_grad():
        (z1, c1), (z2, c2) = model(x), model(y)
    assert not torch.allclose(c1, c2)
    torch.testing.assert_close(z1[:, : t + 1], z2[:, : t + 1], atol=1e-6, rtol=0)
    torch.testing.assert_close(c1[:, : t + 1], c2[:, : t + 1], atol=1e-6, rtol=0)


def test_text_right_padding() -> None:
    model = tiny_model("text")
    alone = tokens([[2, 5, 1]], max_len=5, num_sent=3, seed=3)
    padded = torch.zeros(2, 6, 9, dtype=torch.long)  # longer sentences, more sentences
    padded[0, :3, :5] = alone[0]
    padded[1] = tokens([[9, 9, 9, 9, 9, 9]], max_len=9, num_sent=6, seed=4)[0]
    with torch.no_grad():
        z_a, c_a = model(alone)
        z_p, c_p = model(padded)
    torch.testing.assert_close(z_p[:1, :3], z_a, atol=1e-5, rtol=0)
    torch.testing.assert_close(c_p[:1, :3], c_a, atol=1e-5, rtol=0)


def patches(batch: int, rows: int = 4, cols: int = 4, seed: int = 0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    p = IMAGE.patch_size
    return torch.randn(batch, rows, cols, 3, p, p, generator=gen)


def test_image_shapes() -> None:
    z, c = tiny_model("image")(patches(2, rows=4, cols=3))
    assert z.shape == (2, 4, 3, IMAGE.encoder_dim) and c.shape == (2, 4, 3, IMAGE.context_dim)


@pytest.mark.parametrize("row", [0, 1, 2])
def test_image_row_causal(row: int) -> None:
    model = tiny_model("image")
    x = patches(1)
    y = x.clone()
    y[:, row + 1 :] = patches(1, rows=3 - row, seed=5)
    with torch.no_grad():
        (z1, c1), (z2, c2) = model(x), model(y)
    assert not torch.allclose(c1, c2)
    torch.testing.assert_close(z1[:, : row + 1], z2[:, : row + 1], atol=1e-6, rtol=0)
    torch.testing.assert_close(c1[:, : row + 1], c2[:, : row + 1], atol=1e-6, rtol=0)


def test_image_batch_equals_one_by_one() -> None:
    model, x = tiny_model("image"), patches(4)
    with torch.no_grad():
        z, c = model(x)
        singles = [model(x[i : i + 1]) for i in range(4)]
    torch.testing.assert_close(z, torch.cat([s[0] for s in singles]), atol=1e-5, rtol=0)
    torch.testing.assert_close(c, torch.cat([s[1] for s in singles]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("modality", ["audio", "image", "text"])
def test_no_batch_norm(modality: str) -> None:
    for model in (tiny_model(modality), build_model(default_config(modality))):  # type: ignore[arg-type]
        for module in model.modules():
            assert not isinstance(module, nn.modules.batchnorm._BatchNorm)
            assert "BatchNorm" not in type(module).__name__


def test_build_model_rejects_mismatched_config() -> None:
    with pytest.raises(ValueError, match="does not match"):
        build_model(TrainConfig(modality="image", model=AudioModelConfig()))


@pytest.mark.parametrize("modality", ["audio", "image", "text"])
def test_default_config_trains_one_step(modality: str) -> None:
    cfg = default_config(modality)  # type: ignore[arg-type]
    torch.manual_seed(0)
    model = build_model(cfg)
    assert count_parameters(model) > 0
    m = cfg.model
    if isinstance(m, AudioModelConfig):
        x = torch.randn(2, 160 * (cfg.loss.prediction_steps + 4) + 465)  # a short crop
    elif isinstance(m, ImageModelConfig):
        n = (m.image_size - m.patch_size) // m.patch_stride + 1
        x = torch.randn(1, n, n, 3, m.patch_size, m.patch_size)
    else:
        x = tokens([[5] * cfg.data.window] * 2, max_len=7, num_sent=cfg.data.window)
    z, c = model(x)
    crit = CPCCriterion(c.shape[-1], z.shape[-1], cfg.loss)
    out = crit(z, c)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert set(out.accuracy) == set(range(cfg.loss.min_step, cfg.loss.prediction_steps + 1))


def onnx_inputs(modality: str, batch: int, length: int) -> Tensor:
    if modality == "audio":
        return torch.randn(batch, 1000 + 160 * length)
    if modality == "image":
        return patches(batch, seed=length)
    return tokens(
        [[3, 1, 4, 1, 5][:length]] * batch, max_len=4 + length, num_sent=length, seed=length
    )


@pytest.mark.parametrize("modality", ["audio", "image", "text"])
def test_onnx_export_dynamic_batch(modality: str, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    model = tiny_model(modality)
    path = tmp_path / "model.onnx"
    axes = {
        "audio": {0: "batch", 1: "samples"},
        "image": {0: "batch"},
        "text": {0: "batch", 1: "sentences", 2: "tokens"},
    }[modality]
    torch.onnx.export(
        model,
        (onnx_inputs(modality, 2, 3),),
        str(path),
        dynamo=False,
        input_names=["x"],
        output_names=["z", "c"],
        opset_version=17,
        dynamic_axes={"x": axes, "z": {0: "batch", 1: "steps"}, "c": {0: "batch", 1: "steps"}},
    )
    onnx.checker.check_model(onnx.load(str(path)))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch, length in [(1, 2), (3, 4)]:
        x = onnx_inputs(modality, batch, length)
        with torch.no_grad():
            z, c = model(x)
        z_o, c_o = session.run(["z", "c"], {"x": x.numpy()})
        np.testing.assert_allclose(z_o, z.numpy(), atol=1e-4)
        np.testing.assert_allclose(c_o, c.numpy(), atol=1e-4)


@pytest.mark.parametrize(
    ("kernels", "strides"),
    [
        ((10, 8, 4, 4, 4), (5, 4, 2, 2, 2)),  # the default: every kernel twice its stride
        ((7, 5, 3, 1), (3, 2, 3, 1)),  # kernels of 1, 2 and 3 blocks of their stride
        ((3, 6, 2), (2, 4, 1)),  # kernels that are no multiple of their stride
    ],
)
@pytest.mark.parametrize("num_samples", [1001, 2047])
def test_audio_training_rows_equal_the_convolutions(
    kernels: tuple[int, ...], strides: tuple[int, ...], num_samples: int
) -> None:
    """In training the encoder runs as products over [B, T, C] rows: same values and gradients."""
    cfg = dataclasses.replace(AUDIO, conv_kernels=kernels, conv_strides=strides)
    torch.manual_seed(0)
    encoder = build_model(TrainConfig(modality="audio", model=cfg)).encoder
    x = torch.randn(3, num_samples, requires_grad=True)
    results = []
    for training in (False, True):  # eval: the convolutions ONNX export sees
        encoder.train(training)
        z = encoder(x)
        grads = torch.autograd.grad(
            (z * torch.linspace(-1, 1, z.shape[-1])).sum(), [x, *encoder.parameters()]
        )
        results.append((z, grads))
    (z_conv, g_conv), (z_rows, g_rows) = results
    torch.testing.assert_close(z_rows, z_conv, atol=1e-5, rtol=1e-5)
    for got, want in zip(g_rows, g_conv, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
