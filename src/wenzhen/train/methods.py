"""Tuning methods: how the base model is loaded and which weights train. One registry entry each.

* `lora`: LoRA adapters (peft) on the family's attention projections; for ChatGLM3 on the native Glm model that
  is q/k/v, the exact split of the official fused `query_key_value`.
* `ptuning_v2`: prefix tuning (peft `PREFIX_TUNING`), the official `ptuning_v2.yaml`: trained key/value prefixes
  in every layer.
* `full`: every weight trains; fp32 master weights (mixed precision on GPU).
* `qlora`: LoRA on a 4-bit (bitsandbytes NF4) base; needs CUDA and bitsandbytes.
"""

import importlib.util
import logging
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from wenzhen.config import StrictModel
from wenzhen.errors import WenzhenError
from wenzhen.models import LoadedModel, load_model
from wenzhen.models.family import ModelFamily
from wenzhen.registry import Registry
from wenzhen.train.config import LoraSettings, PrefixSettings, TrainConfig

log = logging.getLogger(__name__)

# Official ChatGLM3 configs and adapters name the fused projection; the native model splits it in three.
OFFICIAL_FUSED_QKV = "query_key_value"


def peft_dtype(device: torch.device) -> torch.dtype:
    """Frozen base weights: bf16 where the GPU supports it, fp16 on older GPUs, fp32 on CPU."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


class TuningMethod(ABC):
    """One way of fine-tuning; `settings` is the typed section of its keys (None: it has none)."""

    name: str = ""
    settings: type[StrictModel] | None = None
    trains_adapter: bool = True
    supports_packing: bool = True
    supports_gradient_checkpointing: bool = True

    def check_available(self, device: torch.device) -> None:  # noqa: B027 - most methods run anywhere
        """Raise a WenzhenError when this machine cannot run the method."""

    def load(self, model_dir: Path, device: torch.device, config: TrainConfig) -> LoadedModel:
        """The base model, through the one model loader."""
        return load_model(model_dir, dtype=peft_dtype(device), device=device)

    @abstractmethod
    def prepare(self, model: PreTrainedModel, config: TrainConfig, family: ModelFamily) -> torch.nn.Module:
        """Wrap or unfreeze `model` so that exactly the method's weights train."""


METHODS: Registry[TuningMethod] = Registry("tuning method")


def method_settings(method: TuningMethod, config: TrainConfig) -> Any:
    """The method's typed settings: from `peft_config` when the config has one, else the method's defaults."""
    if method.settings is None:
        raise WenzhenError(f"method {method.name} has no settings")
    values = config.peft_config.settings().model_dump() if config.peft_config is not None else {}
    return method.settings.model_validate(values)


def lora_targets(settings: LoraSettings, family: ModelFamily) -> list[str] | str:
    """The configured target modules, with the official fused name translated to the family's projections."""
    configured = settings.target_modules
    if configured is None:
        return list(family.default_lora_targets)
    if isinstance(configured, str):
        configured = [configured] if configured != "all-linear" else configured
    if isinstance(configured, list) and OFFICIAL_FUSED_QKV in configured:
        log.warning(
            "notice: target module %s is the official fused projection; training %s, its native equivalent",
            OFFICIAL_FUSED_QKV,
            ", ".join(family.default_lora_targets),
        )
        configured = [m for m in configured if m != OFFICIAL_FUSED_QKV] + list(family.default_lora_targets)
    return configured


class LoraMethod(TuningMethod):
    """LoRA adapters with the LoRA settings (`peft_config`, defaults in LoraSettings)."""

    name = "lora"
    settings = LoraSettings

    def prepare(self, model: PreTrainedModel, config: TrainConfig, family: ModelFamily) -> torch.nn.Module:
        """peft LoRA on the family's attention projections (or the configured targets)."""
        from peft import LoraConfig, get_peft_model

        settings: LoraSettings = method_settings(self, config)
        lora = LoraConfig(
            task_type="CAUSAL_LM",
            r=settings.r,
            lora_alpha=settings.lora_alpha,
            lora_dropout=settings.lora_dropout,
            target_modules=lora_targets(settings, family),
            bias=settings.bias,
            modules_to_save=settings.modules_to_save,
        )
        try:
            return get_peft_model(model, lora)
        except ValueError as exc:
            raise WenzhenError(
                f"LoRA cannot be applied ({str(exc).splitlines()[0][:200]}); "
                "set peft_config.target_modules to module names of this model"
            ) from None


class PrefixTuningMethod(TuningMethod):
    """P-Tuning v2 as peft prefix tuning, with the prefix settings (`peft_config`, defaults in PrefixSettings)."""

    name = "ptuning_v2"
    settings = PrefixSettings
    supports_packing = False
    # peft feeds the prefixes through the KV cache, which activation checkpointing cannot recompute.
    supports_gradient_checkpointing = False

    def prepare(self, model: PreTrainedModel, config: TrainConfig, family: ModelFamily) -> torch.nn.Module:
        """peft PREFIX_TUNING with the configured number of virtual tokens."""
        from peft import PrefixTuningConfig, get_peft_model

        settings: PrefixSettings = method_settings(self, config)
        prefix = PrefixTuningConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=settings.num_virtual_tokens,
            prefix_projection=settings.prefix_projection,
            encoder_hidden_size=settings.encoder_hidden_size,
        )
        return get_peft_model(model, prefix)


class FullMethod(TuningMethod):
    """Every weight trains, from fp32 master weights."""

    name = "full"
    trains_adapter = False

    def load(self, model_dir: Path, device: torch.device, config: TrainConfig) -> LoadedModel:
        """fp32 weights: the optimizer must not update bf16 weights directly (updates below bf16 resolution vanish)."""
        return load_model(model_dir, dtype=torch.float32, device=device)

    def prepare(self, model: PreTrainedModel, config: TrainConfig, family: ModelFamily) -> torch.nn.Module:
        """Unfreeze everything."""
        model.requires_grad_(True)
        return model


class QLoraMethod(LoraMethod):
    """LoRA on a 4-bit NF4 base (bitsandbytes)."""

    name = "qlora"

    def check_available(self, device: torch.device) -> None:
        """QLoRA needs a CUDA GPU and bitsandbytes."""
        if device.type != "cuda":
            raise WenzhenError(
                "QLoRA needs a CUDA GPU (4-bit weights run through bitsandbytes); use method lora"
            )
        if importlib.util.find_spec("bitsandbytes") is None:
            raise WenzhenError("QLoRA needs bitsandbytes: `pip install bitsandbytes`, or use method lora")

    def load(self, model_dir: Path, device: torch.device, config: TrainConfig) -> LoadedModel:
        """Quantise while loading (through the one loader; official ChatGLM3 downloads must be converted first)."""
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        expandable_segments()
        compute = peft_dtype(device)
        quantization = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=config.quantization.quant_type,
            bnb_4bit_use_double_quant=config.quantization.double_quant,
            bnb_4bit_compute_dtype=compute,
        )
        loaded = load_model(model_dir, dtype=compute, device=device, quantization=quantization)
        loaded.model = prepare_model_for_kbit_training(loaded.model, use_gradient_checkpointing=False)
        return loaded


def expandable_segments() -> None:
    """Let the CUDA allocator grow its segments in place, unless PYTORCH_CUDA_ALLOC_CONF already says.

    Why, for QLoRA: each layer's weights are dequantized to bf16 (four sizes) in the forward, the recomputation and
    the backward, between activations of other sizes; with fixed segments the cache fragments and grows to the whole
    card (H200 capped at 16 GiB: 9.74 GiB allocated, the card full), where QLoRA's users have 12-16 GB cards.
    Set at run time (torch's allocator-settings call) so that it holds after CUDA is already initialised.
    """
    if "expandable_segments" in os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""):
        return
    setter = (
        getattr(torch._C, "_accelerator_setAllocatorSettings", None)
        or torch.cuda.memory._set_allocator_settings
    )
    try:
        setter("expandable_segments:True")
    except (RuntimeError, ValueError) as exc:  # a torch build without them: train with fixed segments
        log.warning(
            "notice: expandable CUDA allocator segments unavailable (%s); the cache may fragment", exc
        )
        return
    log.info("QLoRA: CUDA allocator segments are expandable (less fragmentation on small cards)")


for _method in (LoraMethod(), PrefixTuningMethod(), FullMethod(), QLoraMethod()):
    METHODS.add(_method.name, _method)


def enable_gradient_checkpointing(model: PreTrainedModel) -> None:
    """Turn activation checkpointing on and prove it is on (some remote-code models ignore the call)."""
    # Non-reentrant checkpointing needs no `enable_input_require_grads` hack for frozen embeddings.
    kwargs = {"use_reentrant": False}
    try:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.20 name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    except ValueError as exc:
        raise WenzhenError(f"{exc}; set training_args.gradient_checkpointing: false") from None
    if not any(getattr(module, "gradient_checkpointing", False) for module in model.modules()):
        raise WenzhenError(
            f"{type(model).__name__} ignored gradient checkpointing; set training_args.gradient_checkpointing: false"
        )
