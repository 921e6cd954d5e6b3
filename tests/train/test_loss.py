"""The chunked loss equals transformers' own causal-LM loss, value and gradients."""

import torch
from transformers import GlmConfig, GlmForCausalLM

from wenzhen.train.loss import chunked_lm_loss


def tiny_model() -> GlmForCausalLM:
    torch.manual_seed(0)
    config = GlmConfig(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        pad_token_id=0,
    )
    return GlmForCausalLM(config)


def test_matches_transformers_loss_and_gradients():
    model = tiny_model()
    ids = torch.randint(1, 300, (2, 40))
    labels = ids.clone()
    labels[:, :15] = -100
    labels[1, 30:] = -100
    reference = model(input_ids=ids, labels=labels).loss
    reference.backward()
    expected = model.lm_head.weight.grad.clone()
    model.zero_grad()
    hidden = model.model(input_ids=ids).last_hidden_state
    loss = chunked_lm_loss(hidden, model.lm_head, labels, chunk_size=7)
    loss.backward()
    assert torch.allclose(loss, reference, atol=1e-6)
    assert torch.allclose(model.lm_head.weight.grad, expected, atol=1e-6)


def test_no_labels_gives_zero_with_a_graph():
    model = tiny_model()
    hidden = model.model(input_ids=torch.randint(1, 300, (1, 8))).last_hidden_state
    loss = chunked_lm_loss(hidden, model.lm_head, torch.full((1, 8), -100))
    loss.backward()
    assert loss.item() == 0.0
