"""Tiny training configs: every modality trains and exports in a second or two."""

from __future__ import annotations

from training.config import (
    AudioModelConfig,
    DataConfig,
    ImageModelConfig,
    LossConfig,
    OptimConfig,
    TextModelConfig,
    TrainConfig,
)
from training.export.quantize import CalibrationConfig

# Two-step models are near their random start; their int8 copies are checked
# against a looser bound than a trained bundle's 0.999.
LENIENT = CalibrationConfig(min_cosine=0.9)


def tiny_config(modality: str, steps: int = 6) -> TrainConfig:
    optim = OptimConfig(batch_size=4, lr=2e-3, warmup_steps=2, steps=steps)
    common = {"precision": "fp32", "log_every": 2, "checkpoint_every": 4, "optim": optim}
    if modality == "audio":
        return TrainConfig(
            modality="audio",
            model=AudioModelConfig(channels=16, encoder_dim=16, context_dim=16),
            loss=LossConfig(prediction_steps=4),
            data=DataConfig(window=4096, val_fraction=0.0),
            **common,  # type: ignore[arg-type]
        )
    if modality == "image":
        return TrainConfig(
            modality="image",
            model=ImageModelConfig(
                image_size=32,
                patch_size=8,
                patch_stride=4,
                channels=8,
                blocks=1,
                encoder_dim=16,
                context_dim=16,
                context_layers=2,
            ),
            loss=LossConfig(prediction_steps=3, min_step=2),
            data=DataConfig(window=0, val_fraction=0.0),
            **common,  # type: ignore[arg-type]
        )
    return TrainConfig(
        modality="text",
        model=TextModelConfig(
            vocab_size=300, max_tokens=16, embed_dim=16, channels=16, encoder_dim=16, context_dim=16
        ),
        loss=LossConfig(prediction_steps=2),
        data=DataConfig(window=6, val_fraction=0.0),
        **common,  # type: ignore[arg-type]
    )
