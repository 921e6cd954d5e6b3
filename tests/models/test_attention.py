"""Grouped-query SDPA gives transformers' SDPA results over a static cache with left padding."""

import pytest
import torch
from transformers import StaticCache

from wenzhen.models import load_model
from wenzhen.models.attention import (
    GROUPED_MATMUL_DECODE,
    GROUPED_SDPA,
    fuse_qkv_projections,
    matmul_decode_attention,
    use_grouped_sdpa,
)


def prefill_and_step(model) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    ids = torch.randint(100, 60000, (2, 9))
    attention = torch.ones_like(ids)
    attention[1, :3] = 0
    mask = torch.ones(2, 32, dtype=torch.long)
    mask[:, :9] = attention
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    cache = StaticCache(config=model.config, max_cache_len=32)
    with torch.no_grad():
        prefill = model(
            input_ids=ids,
            position_ids=positions,
            attention_mask=mask,
            past_key_values=cache,
            cache_position=torch.arange(9),
        ).logits
        step = model(
            input_ids=ids[:, -1:],
            position_ids=positions[:, -1:] + 1,
            attention_mask=mask,
            past_key_values=cache,
            cache_position=torch.tensor([9]),
        ).logits
    return prefill[attention.bool()], step


def test_same_logits_as_transformers_sdpa(chatglm3_dir):
    model = load_model(chatglm3_dir / "tiny-chatglm3", dtype="fp32", device="cpu").model
    assert model.config.num_attention_heads > model.config.num_key_value_heads
    reference = prefill_and_step(model)
    assert use_grouped_sdpa(model)
    assert model.config._attn_implementation == GROUPED_SDPA
    for ours, theirs in zip(prefill_and_step(model), reference, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 2])
def test_one_token_attention_equals_sdpa_with_the_same_mask(batch):
    torch.manual_seed(0)
    heads, kv_heads, window, dim = 8, 2, 40, 16
    query = torch.randn(batch, heads, 1, dim)
    key, value = torch.randn(2, batch, kv_heads, window, dim)
    reached = torch.tensor([17, 39])[:batch]  # each row has reached its own position; later keys are garbage
    mask = (torch.arange(window)[None, :] <= reached[:, None])[:, None, None, :]
    # One query per row takes the two-matmul path; it equals plain SDPA over repeated key/value heads.
    ours, _ = matmul_decode_attention(torch.nn.Module().eval(), query, key, value, mask, scaling=0.25)
    repeated = {"dim": 1, "repeats": heads // kv_heads}
    expected = torch.nn.functional.scaled_dot_product_attention(
        query,
        key.repeat_interleave(**repeated),
        value.repeat_interleave(**repeated),
        attn_mask=mask,
        scale=0.25,
    ).transpose(1, 2)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def batch_one_step(model) -> torch.Tensor:
    """Logits of one decode step of one sequence over a static cache (a boolean mask hides its unused tail)."""
    ids = torch.randint(100, 60000, (1, 9), generator=torch.Generator().manual_seed(1))
    cache = StaticCache(config=model.config, max_cache_len=32)
    mask = torch.zeros(1, 32, dtype=torch.long)
    mask[:, :10] = 1
    with torch.no_grad():
        model(
            input_ids=ids, attention_mask=mask[:, :9], past_key_values=cache, cache_position=torch.arange(9)
        )
        return model(
            input_ids=ids[:, -1:],
            attention_mask=mask,
            past_key_values=cache,
            cache_position=torch.tensor([9]),
        ).logits


def test_matmul_decode_gives_transformers_logits(chatglm3_dir):
    model = load_model(chatglm3_dir / "tiny-chatglm3", dtype="fp32", device="cpu").model
    expected = [batch_one_step(model), *prefill_and_step(model)]
    assert use_grouped_sdpa(model, matmul_decode=True)
    assert model.config._attn_implementation == GROUPED_MATMUL_DECODE
    for ours, theirs in zip([batch_one_step(model), *prefill_and_step(model)], expected, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attention", ["eager"])
def test_other_attention_kernels_are_left_alone(chatglm3_dir, attention):
    model = load_model(chatglm3_dir / "tiny-chatglm3", dtype="fp32", device="cpu").model
    model.set_attn_implementation(attention)
    assert not use_grouped_sdpa(model)
    assert model.config._attn_implementation == attention


def test_fused_qkv_gives_the_same_logits_and_tokens(chatglm3_dir):
    reference = load_model(chatglm3_dir / "tiny-chatglm3", dtype="fp32", device="cpu").model
    fused = load_model(chatglm3_dir / "tiny-chatglm3", dtype="fp32", device="cpu").model
    assert fuse_qkv_projections(fused) == fused.config.num_hidden_layers
    attention = fused.model.layers[0].self_attn
    assert not hasattr(attention, "q_proj") and attention.qkv_proj.out_features == sum(attention.qkv_sizes)
    ids = torch.randint(100, 60000, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(fused(ids).logits, reference(ids).logits, rtol=1e-5, atol=1e-5)
        settings = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": 0}
        assert torch.equal(fused.generate(ids, **settings), reference.generate(ids, **settings))


def test_adapter_wrapped_projections_are_not_fused(chatglm3_dir):
    loaded = load_model(
        chatglm3_dir / "tiny-chatglm3", adapter=chatglm3_dir / "tiny-chatglm3-lora-adapter", device="cpu"
    )
    assert fuse_qkv_projections(loaded.model) == 0
