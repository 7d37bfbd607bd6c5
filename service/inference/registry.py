"""The loaded models, by name, and how a request picks one.

A request names a model, or a modality whose default is the bundle named
after the modality ("audio", "image", "text") when there is one, else the
first bundle of that modality by name. `load_registry` reads every bundle
folder of CPC_MODELS_DIR (a sub-folder holding bundle.json) and fails on the
first bad one with a message that names the file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from service.bundle import BUNDLE_FILE, MODALITIES
from service.config import Settings
from service.errors import BundleError, InvalidInput, NotFound
from service.inference.batcher import DynamicBatcher
from service.inference.model import OnnxEncoder
from service.metrics import Metrics

logger = logging.getLogger(__name__)
# Inputs per onnxruntime call when CPC_MAX_INFERENCE_BATCH is 0 (see service.config).
AUTO_MAX_BATCH = {"audio": 16, "image": 16, "text": 64}


@dataclass
class ServedModel:
    """A loaded bundle and the batcher in front of it."""

    encoder: OnnxEncoder
    batcher: DynamicBatcher

    @property
    def name(self) -> str:
        return self.encoder.name

    @property
    def modality(self) -> str:
        return self.encoder.modality

    @property
    def dim(self) -> int:
        """Width of the default (context) layer."""
        return self.encoder.spec.dims.context


class ModelRegistry:
    """Loaded models by name, with one default per modality."""

    def __init__(self, models: list[ServedModel]) -> None:
        self._models: dict[str, ServedModel] = {}
        for served in sorted(models, key=lambda m: m.name):
            if served.name in self._models:
                first = self._models[served.name].encoder.folder
                raise BundleError(
                    f"two bundles are named {served.name!r}: {first} and {served.encoder.folder}"
                )
            self._models[served.name] = served
        self.defaults: dict[str, str] = {}
        for modality in MODALITIES:
            names = [m.name for m in self._models.values() if m.modality == modality]
            if names:
                self.defaults[modality] = modality if modality in names else names[0]

    def __iter__(self) -> Iterator[ServedModel]:
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)

    def __contains__(self, name: object) -> bool:
        return name in self._models

    @property
    def names(self) -> list[str]:
        return list(self._models)

    def _loaded(self) -> str:
        return ", ".join(self._models) if self._models else "none"

    def get(self, name: str) -> ServedModel:
        """The model called `name`; 404 with the list of loaded names."""
        served = self._models.get(name)
        if served is None:
            raise NotFound(f"unknown model {name!r}; loaded models: {self._loaded()}")
        return served

    def resolve(self, model: str | None, modality: str | None) -> ServedModel:
        """The model a request asks for, by name or by modality (its default)."""
        if model is not None:
            served = self.get(model)
            if modality is not None and modality != served.modality:
                raise InvalidInput(
                    f"model {model!r} is a{'n' if served.modality[0] in 'aeiou' else ''} "
                    f"{served.modality} model, but the request says modality {modality!r}"
                )
            return served
        if modality is not None:
            name = self.defaults.get(modality)
            if name is None:
                raise NotFound(f"no {modality} model is loaded; loaded models: {self._loaded()}")
            return self._models[name]
        if len(self._models) == 1:
            return next(iter(self._models.values()))
        raise InvalidInput(
            f"say which model to use with `model` or `modality`; loaded models: {self._loaded()}"
        )

    def start(self) -> None:
        for served in self:
            served.batcher.start()

    async def stop(self) -> None:
        for served in self:
            await served.batcher.stop()


def bundle_folders(models_dir: Path) -> list[Path]:
    """Sub-folders of `models_dir` that hold a bundle.json, sorted by name."""
    if not models_dir.is_dir():
        raise BundleError(f"{models_dir}: the models folder (CPC_MODELS_DIR) does not exist")
    return sorted(
        p
        for p in models_dir.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / BUNDLE_FILE).is_file()
    )


def load_registry(settings: Settings, metrics: Metrics) -> ModelRegistry:
    """Load (and, if configured, warm up) every bundle; BundleError names the bad file."""
    models: list[ServedModel] = []
    for folder in bundle_folders(settings.models_dir):
        encoder = OnnxEncoder.from_settings(
            folder, settings, instances=settings.inference_instances
        )
        if settings.warmup:
            encoder.warmup()
        batcher = DynamicBatcher(
            encoder,
            metrics,
            max_queue=settings.max_queue,
            max_batch=settings.max_inference_batch or AUTO_MAX_BATCH[encoder.modality],
            wait_ms=settings.batch_wait_ms,
            release_memory=settings.release_memory,
            instances=encoder.instances,
        )
        models.append(ServedModel(encoder, batcher))
        logger.info(
            "loaded %s model %r from %s (%s)",
            encoder.modality,
            encoder.name,
            folder,
            encoder.model_file,
        )
    if not models:
        logger.warning("no model bundles in %s: /embed will find no model", settings.models_dir)
    return ModelRegistry(models)
