"""The labelled-positions loss equals transformers' own causal-LM loss, value and gradients."""

import torch
from transformers import GlmConfig, GlmForCausalLM

from wenzhen.train.loss import labelled_positions, sparse_logits_loss


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


def batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(1, 300, (2, 40))
    labels = ids.clone()
    labels[:, :15] = -100
    labels[1, 30:] = -100
    labels[0, 20:25] = -100
    return {"input_ids": ids, "labels": labels}


def test_matches_transformers_loss_and_gradients():
    model = tiny_model()
    inputs = batch()
    reference = model(**inputs).loss
    reference.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    loss = sparse_logits_loss(model, inputs)
    loss.backward()
    assert torch.allclose(loss, reference, atol=1e-6)
    for name, parameter in model.named_parameters():
        assert torch.allclose(parameter.grad, expected[name], atol=1e-6), name


def test_only_labelled_positions_reach_the_lm_head():
    labels = torch.full((2, 10), -100)
    labels[0, 4] = 7
    labels[1, 8] = 3
    assert labelled_positions(labels).tolist() == [3, 7]


def test_no_labels_gives_zero_with_a_graph():
    model = tiny_model()
    loss = sparse_logits_loss(
        model, {"input_ids": torch.randint(1, 300, (1, 8)), "labels": torch.full((1, 8), -100)}
    )
    loss.backward()
    assert loss.item() == 0.0
