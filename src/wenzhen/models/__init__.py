"""Model layer: one loader for official ChatGLM3 downloads, converted directories and any local HF chat model."""

from wenzhen.models.convert import convert_model
from wenzhen.models.family import FAMILIES, Message, ModelFamily
from wenzhen.models.loading import LoadedModel, detect_family, load_model, load_tokenizer, resolve_base

__all__ = [
    "FAMILIES",
    "LoadedModel",
    "Message",
    "ModelFamily",
    "convert_model",
    "detect_family",
    "load_model",
    "load_tokenizer",
    "resolve_base",
]
