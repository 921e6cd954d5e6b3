"""The labelled-positions loss equals transformers' own causal-LM loss, value and gradients."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from wenzhen.train.loss import (
    FusedLoss,
    chunked_cross_entropy_sum,
    fused_head_loss,
    labelled_positions,
    plain_head_loss,
    sparse_logits_loss,
)


def batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(1, 300, (2, 40))
    labels = ids.clone()
    labels[:, :15] = -100
    labels[1, 30:] = -100
    labels[0, 20:25] = -100
    return {"input_ids": ids, "labels": labels}


@pytest.mark.parametrize("chunk", [None, 1, 7, 1000])
def test_matches_transformers_loss_and_gradients(tiny_glm, chunk):
    model = tiny_glm
    inputs = batch()
    reference = model(**inputs).loss
    reference.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    loss = sparse_logits_loss(model, inputs, chunk=chunk)
    loss.backward()
    assert torch.allclose(loss, reference, atol=1e-6)
    for name, parameter in model.named_parameters():
        assert torch.allclose(parameter.grad, expected[name], atol=1e-6), name


def test_only_labelled_positions_reach_the_lm_head():
    labels = torch.full((2, 10), -100)
    labels[0, 4] = 7
    labels[1, 8] = 3
    assert labelled_positions(labels).tolist() == [3, 7]


def test_no_labels_gives_zero_with_a_graph(tiny_glm):
    model = tiny_glm
    loss = sparse_logits_loss(
        model, {"input_ids": torch.randint(1, 300, (1, 8)), "labels": torch.full((1, 8), -100)}
    )
    loss.backward()
    assert loss.item() == 0.0


def test_chunked_cross_entropy_keeps_ignored_targets_out_and_matches_one_piece():
    logits = torch.randn(23, 50, dtype=torch.bfloat16, requires_grad=True)
    targets = torch.randint(0, 50, (23,))
    targets[[0, 5, 22]] = -100
    whole = torch.nn.functional.cross_entropy(logits.float(), targets, ignore_index=-100, reduction="sum")
    (expected,) = torch.autograd.grad(whole, logits)
    chunked = chunked_cross_entropy_sum(logits, targets, chunk=4)
    (grad,) = torch.autograd.grad(chunked, logits)
    assert chunked.dtype == torch.float32
    assert torch.allclose(chunked, whole, rtol=1e-6)
    assert torch.equal(grad, expected)


@pytest.mark.parametrize("wrapped", [False, True])
def test_the_fused_path_returns_hidden_states_to_the_head_loss_and_matches(tiny_glm, wrapped):
    """With the lm_head taken out of the forward and given to the head loss, value and gradients are unchanged,
    for a plain and a peft-wrapped model (`plain_head_loss` is the unfused sum; on a GPU liger's kernel takes its
    place)."""
    model = (
        get_peft_model(tiny_glm, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
        if wrapped
        else tiny_glm
    )
    inputs = batch()
    reference = sparse_logits_loss(model, inputs)
    reference.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    seen = {}

    def head_loss(weight, bias, hidden, targets):
        seen["hidden"] = hidden.shape
        return plain_head_loss(weight, bias, hidden, targets)

    loss = fused_head_loss(model, inputs, head_loss=head_loss)
    loss.backward()
    positions = int(labelled_positions(inputs["labels"]).numel())
    assert seen["hidden"] == (2 * positions, tiny_glm.config.hidden_size)
    assert torch.allclose(loss, reference, atol=1e-6)
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert torch.allclose(parameter.grad, expected[name], atol=1e-6), name
    assert isinstance(tiny_glm.get_output_embeddings(), torch.nn.Linear)  # put back after the forward


def test_a_fused_loss_that_cannot_run_falls_back_to_the_chunked_loss_with_one_notice(tiny_glm, caplog):
    """Here liger-kernel is not installed (a CPU machine): the first call fails to import it, says so once, and the
    run goes on with the chunked loss; the same happens where liger's Triton kernel cannot build."""
    inputs = batch()
    fused = FusedLoss(chunk=None)
    with caplog.at_level("WARNING"):
        first = fused(tiny_glm, inputs, None)
        second = fused(tiny_glm, inputs, None)
    assert torch.allclose(first, sparse_logits_loss(tiny_glm, inputs)) and torch.allclose(second, first)
    assert sum("fused loss (liger-kernel) does not run here" in r.message for r in caplog.records) == 1
    assert isinstance(tiny_glm.get_output_embeddings(), torch.nn.Linear)


def test_once_the_fused_loss_has_worked_its_errors_are_raised(tiny_glm):
    calls = []

    def head_loss(weight, bias, hidden, targets):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("kernel broke mid-run")
        return plain_head_loss(weight, bias, hidden, targets)

    fused = FusedLoss(chunk=None, head_loss=head_loss)
    fused(tiny_glm, batch(), None)
    with pytest.raises(RuntimeError, match="mid-run"):
        fused(tiny_glm, batch(), None)
