"""Grouped-query attention for generation without copying keys and values for every query head.

transformers' SDPA path hands the kernel keys and values repeated to the number of query heads whenever an
attention mask is present (`repeat_kv`), because PyTorch's masked kernels on CUDA do not take grouped heads.
Generation over a static KV cache always has a mask, so for ChatGLM3-6B (32 query heads, 2 key/value heads)
every layer of every decode step copied its whole cache 16 times: 0.27 ms of a 6.1 ms step on an H100
(benchmarks/results/generate_speed.md). Folding the 16 query heads of a group into the query-length axis gives
the same attention with the cache read once: query head h uses key/value head h // groups either way, and the
mask, which depends only on the query position and the key, is repeated per folded row. A decode step (one query
per row) can go through two matrix multiplies instead of an SDPA kernel (`matmul_decode_attention`, opt-in).
Registered with transformers' `AttentionInterface` under its own name; the mask is transformers' SDPA mask.
"""

import sys
import types
from typing import Any

import torch
from torch.nn import functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

GROUPED_SDPA = "wenzhen_grouped_sdpa"
GROUPED_MATMUL_DECODE = "wenzhen_grouped_matmul_decode"


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


def matmul_decode_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """`grouped_sdpa_attention`, except that rows of one new token under a boolean mask (decode steps) attend
    through `one_token_attention`. Opt-in (`use_grouped_sdpa(model, matmul_decode=True)`): faster on paper, but
    not yet measured on a GPU, nor its compilation over dynamic batch sizes and windows."""
    batch, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    if length != 1 or attention_mask is None or attention_mask.dtype != torch.bool or heads == kv_heads:
        return grouped_sdpa_attention(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    folded = query.reshape(batch, kv_heads, heads // kv_heads, dim)
    return one_token_attention(folded, key, value, attention_mask, scaling), None


def one_token_attention(
    folded: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor, scaling: float | None
) -> torch.Tensor:
    """Attention of one new token (the query heads of each key/value group folded into `folded`'s length axis,
    [batch, kv_heads, groups, dim]) over a boolean [batch, 1, 1, keys] mask: scores and weighted sum as two
    matrix multiplies, the softmax in fp32; [batch, 1, heads, dim] like transformers' attention functions.

    Why for decoding: SDPA's kernels (cuDNN's flash kernel on an H200, the memory-efficient one elsewhere) give
    one thread block to the 16 folded queries of a key/value head and walk the keys one tile after another: at
    batch 1, ChatGLM3-6B's 2 key/value heads ran on 2 of 132 multiprocessors, 25 us per layer over a 1,024-key
    window, 0.71 ms of a 4.8 ms step (benchmarks/results/generate_speed-h200.md, profile); at batch 32, 64 blocks
    each walk the same 1,024 keys. Two matrix multiplies spread the keys over the GPU; FlexAttention's decoding
    kernel, tried instead at batch 1, was slower still (163 against 209 tokens/s)."""
    batch, kv_heads, groups, dim = folded.shape
    scale = scaling if scaling is not None else dim**-0.5
    scores = torch.matmul(folded, key.transpose(-1, -2)).float() * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1).to(value.dtype)
    output = torch.matmul(weights, value)
    return output.reshape(batch, kv_heads * groups, 1, dim).transpose(1, 2).contiguous()


def use_grouped_sdpa(model: Any, matmul_decode: bool = False) -> bool:
    """Switch a model that attends through SDPA with grouped key/value heads to `grouped_sdpa_attention` (or
    `matmul_decode_attention` with `matmul_decode`); True when switched."""
    config = model.config
    heads = getattr(config, "num_attention_heads", None)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    ours = (GROUPED_SDPA, GROUPED_MATMUL_DECODE)
    if config._attn_implementation not in ("sdpa", *ours) or not heads or heads == kv_heads:
        return False
    name = GROUPED_MATMUL_DECODE if matmul_decode else GROUPED_SDPA
    AttentionInterface.register(name, matmul_decode_attention if matmul_decode else grouped_sdpa_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(name, sdpa_mask)
    model.set_attn_implementation(name)
    return True


def fuse_qkv_projections(model: Any) -> int:
    """Compute query, key and value with one matrix multiply per layer for inference; returns the layers fused.

    Decoding one token is bound by reading the weights, and each projection is its own kernel (plus a split-K
    reduction) per layer and step: ChatGLM3-6B's key and value projections are 256 rows each beside the query's
    4,096, so two of every three launches move little data. One `[q; k; v]` weight is read in one kernel instead.
    transformers' attention modules call the three projections in their `forward`, so the fused module gets the
    same forward with the one projection (`_fused_attention_forward`). Only plain `nn.Linear` projections of
    modules without extra query/key processing (norms, sliding windows) are fused; adapters stay untouched.
    """
    fused = 0
    for module in model.modules():
        if _fusable(module):
            _fuse(module)
            fused += 1
    return fused


def _fusable(module: torch.nn.Module) -> bool:
    names = ("q_proj", "k_proj", "v_proj", "o_proj")
    if not all(type(getattr(module, name, None)) is torch.nn.Linear for name in names):
        return False
    modeling = sys.modules.get(type(module).__module__)
    return (
        hasattr(modeling, "apply_rotary_pos_emb")
        and hasattr(modeling, "eager_attention_forward")
        and not any(hasattr(module, name) for name in ("q_norm", "k_norm", "sliding_window"))
        and hasattr(module, "head_dim")
        and hasattr(module, "layer_idx")
    )


def _fuse(module: Any) -> None:
    parts: list[torch.nn.Linear] = [module.q_proj, module.k_proj, module.v_proj]
    weight = torch.cat([p.weight.detach() for p in parts])
    bias = None
    if parts[0].bias is not None:
        bias = torch.cat([p.bias.detach() for p in parts if p.bias is not None])
    qkv = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    qkv.weight = torch.nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        qkv.bias = torch.nn.Parameter(bias, requires_grad=False)
    module.qkv_proj = qkv
    module.qkv_sizes = [p.out_features for p in parts]
    del module.q_proj, module.k_proj, module.v_proj
    module.forward = types.MethodType(_fused_attention_forward, module)


def _fused_attention_forward(
    self: Any,
    hidden_states: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
    attention_mask: torch.Tensor | None = None,
    past_key_values: Any = None,
    cache: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, Any]:
    """transformers' attention forward (projections, rotary embedding, cache update, attention, output
    projection) with the query, key and value projections as one; `cache` or `past_key_values` by version."""
    modeling = sys.modules[type(self).__module__]
    input_shape = hidden_states.shape[:-1]
    hidden_shape = (*input_shape, -1, self.head_dim)
    query, key, value = self.qkv_proj(hidden_states).split(self.qkv_sizes, dim=-1)
    query = query.view(hidden_shape).transpose(1, 2)
    key = key.view(hidden_shape).transpose(1, 2)
    value = value.view(hidden_shape).transpose(1, 2)
    assert position_embeddings is not None
    cos, sin = position_embeddings
    query, key = modeling.apply_rotary_pos_emb(query, key, cos, sin)
    store = cache if cache is not None else past_key_values
    if store is not None:
        key, value = store.update(key, value, self.layer_idx)
    implementation = self.config._attn_implementation
    if implementation == "eager":
        attention = modeling.eager_attention_forward
    else:
        attention = ALL_ATTENTION_FUNCTIONS[implementation]
    output, weights = attention(
        self,
        query,
        key,
        value,
        attention_mask,
        dropout=0.0 if not self.training else self.attention_dropout,
        scaling=self.scaling,
        **kwargs,
    )
    return self.o_proj(output.reshape(*input_shape, -1).contiguous()), weights
