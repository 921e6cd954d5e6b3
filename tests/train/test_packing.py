"""Packed batches: no attention across samples, so the packed loss equals the samples' losses run one by one."""

import pytest
import torch
from transformers import GlmConfig, GlmForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from wenzhen.train.encoding import IGNORE
from wenzhen.train.packing import make_collator


def tiny(architecture: str) -> PreTrainedModel:
    torch.manual_seed(0)
    common = {
        "vocab_size": 500,
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "pad_token_id": 0,
        "use_cache": False,
    }
    if architecture == "glm":
        return GlmForCausalLM(GlmConfig(head_dim=8, partial_rotary_factor=0.5, **common)).eval()
    return LlamaForCausalLM(LlamaConfig(**common)).eval()


def samples(count: int = 4) -> list[dict[str, list[int]]]:
    generator = torch.Generator().manual_seed(1)
    rows = []
    for index in range(count):
        length = 9 + 5 * index
        ids = torch.randint(3, 500, (length,), generator=generator).tolist()
        labels = [IGNORE] * (length // 2) + ids[length // 2 :]
        rows.append({"input_ids": ids, "labels": labels})
    return rows


def one_by_one(model: PreTrainedModel, rows: list[dict[str, list[int]]]) -> tuple[float, int]:
    """Token-weighted mean of the samples' own losses, and the number of predicted tokens."""
    total, count = 0.0, 0
    for row in rows:
        labels = torch.tensor([row["labels"]])
        loss = model(input_ids=torch.tensor([row["input_ids"]]), labels=labels).loss
        predicted = int((labels[:, 1:] != IGNORE).sum())
        total += loss.item() * predicted
        count += predicted
    return total / count, count


@pytest.mark.parametrize("architecture", ["glm", "llama"])
def test_packed_loss_equals_mean_of_one_by_one_losses(architecture: str):
    model = tiny(architecture)
    rows = samples()
    batch = make_collator(True, tokenizer=None)(rows)
    assert batch["input_ids"].shape == (1, sum(len(row["input_ids"]) for row in rows))
    assert "attention_mask" not in batch
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist()
    assert starts == [0, 9, 23, 42]
    packed = model(**batch).loss.item()
    expected, _ = one_by_one(model, rows)
    assert abs(packed - expected) < 1e-5, (packed, expected)


@pytest.mark.parametrize("architecture", ["glm", "llama"])
def test_packed_logits_equal_unpacked_logits(architecture: str):
    """The stronger statement: every position sees exactly its own sample."""
    model = tiny(architecture)
    rows = samples(3)
    batch = make_collator(True, tokenizer=None)(rows)
    packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
    alone = torch.cat([model(input_ids=torch.tensor([row["input_ids"]])).logits[0] for row in rows])
    assert torch.allclose(packed, alone, atol=1e-5)


def test_without_restarting_positions_samples_would_leak():
    """Guards the test above: the same concatenation with plain positions gives different logits."""
    model = tiny("llama")
    rows = samples(2)
    batch = make_collator(True, tokenizer=None)(rows)
    leaked = model(input_ids=batch["input_ids"]).logits[0, len(rows[0]["input_ids"]) :]
    alone = model(input_ids=torch.tensor([rows[1]["input_ids"]])).logits[0]
    assert not torch.allclose(leaked, alone, atol=1e-3)
