"""Grouped-query attention for generation without copying keys and values for every query head.

transformers' SDPA path hands the kernel keys and values repeated to the number of query heads whenever an
attention mask is present (`repeat_kv`), because PyTorch's masked kernels on CUDA do not take grouped heads.
Generation over a static KV cache always has a mask, so for ChatGLM3-6B (32 query heads, 2 key/value heads)
every layer of every decode step copied its whole cache 16 times: 0.27 ms of a 6.1 ms step on an H100
(benchmarks/results/generate_speed.md). Folding the 16 query heads of a group into the query-length axis gives
the same attention with the cache read once: query head h uses key/value head h // groups either way, and the
mask, which depends only on the query position and the key, is repeated per folded row. Registered with
transformers' `AttentionInterface` under its own name; the mask is transformers' SDPA mask.
"""

from typing import Any

import torch
from torch.nn import functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

GROUPED_SDPA = "wenzhen_grouped_sdpa"


def grouped_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """SDPA on [batch, heads, length, dim] inputs with fewer key/value heads, returning [batch, length, heads,
    dim] like transformers' attention functions. Unmasked or ungrouped calls go to transformers' own SDPA."""
    batch, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    if attention_mask is None or heads == kv_heads:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    groups = heads // kv_heads
    folded = query.reshape(batch, kv_heads, groups * length, dim)
    mask = attention_mask[:, :, None].expand(-1, -1, groups, -1, -1)
    mask = mask.reshape(batch, attention_mask.shape[1], groups * length, attention_mask.shape[-1])
    output = F.scaled_dot_product_attention(
        folded,
        key,
        value,
        attn_mask=mask,
        dropout_p=dropout if module.training else 0.0,
        scale=scaling,
    )
    return output.reshape(batch, heads, length, dim).transpose(1, 2).contiguous(), None


def use_grouped_sdpa(model: Any) -> bool:
    """Switch a model that attends through SDPA with grouped key/value heads to `grouped_sdpa_attention`;
    True when switched."""
    config = model.config
    heads = getattr(config, "num_attention_heads", None)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    if config._attn_implementation != "sdpa" or not heads or heads == kv_heads:
        return False
    AttentionInterface.register(GROUPED_SDPA, grouped_sdpa_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(GROUPED_SDPA, sdpa_mask)
    model.set_attn_implementation(GROUPED_SDPA)
    return True
