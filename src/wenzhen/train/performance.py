"""Speed switches of a training run (`performance:` in the config): the attention kernel and compilation.

The measured effect of each on an H100 is in benchmarks/results/train_throughput.md (see docs/training.md).
"""

import importlib.util
import logging

import torch
from transformers import PreTrainedModel

from wenzhen.errors import WenzhenError

log = logging.getLogger(__name__)


def choose_attention(model: PreTrainedModel, device: torch.device, requested: str, packed: bool) -> str:
    """The attention kernel: `requested`, or for `auto` on a GPU flash-attention 2 where installed, else flex
    attention for packed batches (13.8k vs 9.1k tokens/s for SDPA on an H100, benchmarks/results/
    train_throughput.md), else SDPA. On CPU, SDPA (flex attention has no CPU backward).

    All honour packed `position_ids`: SDPA through a block-diagonal mask, flex attention through a sparse block
    mask, flash-attention through variable-length kernels, so packing never lets a token see another sample.
    """
    if requested == "auto" and device.type == "cuda":
        if importlib.util.find_spec("flash_attn") is not None:
            requested = "flash_attention_2"
        elif packed:
            requested = "flex_attention"
    if requested != "auto":
        try:
            model.set_attn_implementation(requested)
        except (ImportError, ValueError) as exc:
            raise WenzhenError(
                f"performance.attention {requested} is not available here ({str(exc)[:120]}); use auto or sdpa"
            ) from None
    return str(model.config._attn_implementation)


def repeated_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The outermost list of identical blocks (the decoder layers) of a transformers model, peft-wrapped or not."""
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 1 and _all_one_class(module):
            return module
    raise WenzhenError(
        f"{type(model).__name__} has no list of repeated layers to compile; set performance.compile: false"
    )


def _all_one_class(modules: torch.nn.ModuleList) -> bool:
    return len({type(child) for child in modules}) == 1


def compile_decoder_layers(model: torch.nn.Module) -> int:
    """torch.compile every decoder layer in place; returns how many.

    Regional rather than whole-model compilation: the layers share one code object, so one compilation (seconds,
    not minutes) serves all of them, the lm_head with its varying number of labelled positions stays eager
    instead of recompiling, and module names, state dicts, peft saving and gradient checkpointing are unchanged
    (`Module.compile` keeps the module and only swaps its call).
    """
    layers = repeated_layers(model)
    for layer in layers:
        layer.compile()
    log.info("compiled %d %s layers", len(layers), type(layers[0]).__name__)
    return len(layers)
