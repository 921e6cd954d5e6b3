"""Which model an eval runs on: options shared by every eval command, resolved through the one model loader."""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import Field

from wenzhen.config import StrictModel
from wenzhen.generation import ChatEngine
from wenzhen.models import load_model


class ModelOptions(StrictModel):
    """How to load the evaluated model (ignored when a ready engine is passed)."""

    adapter: str | None = Field(None, description="LoRA / prefix-tuning adapter directory to apply")
    base: str | None = Field(None, description="base model of an adapter, overriding the recorded one")
    dtype: str = Field("auto", description="bf16, fp16, fp32 or auto (bf16 on GPU, fp32 on CPU)")
    device: str = Field("auto", description="cuda, cpu or auto")
    static_cache: bool | None = Field(
        None,
        description="continuous batching over a slot KV cache (its step compiled on CUDA); false = transformers' "
        "generate; None = the engine's default (on, except for prefix-tuning adapters)",
    )


def open_engine(model: ChatEngine | str | Path, options: ModelOptions) -> ChatEngine:
    """`model` itself when it is an engine, else the engine of the model loaded from that path."""
    if isinstance(model, ChatEngine):
        return model
    loaded = load_model(
        model, dtype=options.dtype, device=options.device, adapter=options.adapter, base=options.base
    )
    return ChatEngine(loaded, static_cache=options.static_cache)


def describe_device(engine: ChatEngine) -> str:
    """`cpu`, or the GPU's name, for the report."""
    device = engine.device
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


def run_label(engine: ChatEngine, label: str | None) -> str:
    """The name a run has in reports: given, else the adapter's or the model's folder name."""
    return label or engine.loaded.name


def adapter_path(engine: ChatEngine) -> str | None:
    """The applied adapter's path as text, if any."""
    return str(engine.loaded.adapter) if engine.loaded.adapter is not None else None
