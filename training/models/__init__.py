"""CPC encoders (g_enc) and autoregressors (g_ar) for audio, images and text."""

from training.models.audio import AudioEncoder
from training.models.autoregressive import GRUContext, RowCausalContext
from training.models.cpc import CPCModel, build_model, count_parameters
from training.models.image import PatchEncoder
from training.models.text import SentenceEncoder

__all__ = [
    "AudioEncoder",
    "CPCModel",
    "GRUContext",
    "PatchEncoder",
    "RowCausalContext",
    "SentenceEncoder",
    "build_model",
    "count_parameters",
]
