"""Causal-LM loss computed from hidden states in chunks, only at labelled positions.

ChatGLM3's vocabulary has 65,024 entries: the usual path materialises fp32 logits for every position
(8,192 tokens x 65,024 x 4 bytes = 2.1 GB per packed row, plus their gradient) although the prompt positions carry
no label. Here the lm_head runs only on positions that have a label, a chunk at a time under activation
checkpointing, so at most one chunk of logits exists at once. No maintained kernel library covers ChatGLM3
(Liger and Unsloth do not), hence this small function.
"""

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100


def _chunk_loss_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = F.linear(hidden, weight).float()
    return F.cross_entropy(logits, targets, reduction="sum")


def chunked_lm_loss(
    hidden_states: torch.Tensor,
    lm_head: nn.Module,
    labels: torch.Tensor,
    num_items: int | torch.Tensor | None = None,
    chunk_size: int = 4096,
) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled positions (labels are unshifted, as in transformers).

    `num_items` is the number of labelled tokens over the whole (gradient-accumulated) batch; the default is this
    batch's own count. The result equals `CausalLM(labels=...).loss` up to floating-point rounding.
    """
    hidden = hidden_states[:, :-1].reshape(-1, hidden_states.shape[-1])
    targets = labels[:, 1:].reshape(-1).to(hidden.device)
    positions = (targets != IGNORE_INDEX).nonzero(as_tuple=True)[0]
    if num_items is None:
        num_items = positions.numel()
    if positions.numel() == 0:
        return hidden_states.sum() * 0.0
    hidden, targets = hidden[positions], targets[positions]
    weight: torch.Tensor = lm_head.weight  # type: ignore[assignment]
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk_size):
        end = start + chunk_size
        if torch.is_grad_enabled():
            total = total + checkpoint(
                _chunk_loss_sum, hidden[start:end], weight, targets[start:end], use_reentrant=False
            )
        else:
            total = total + _chunk_loss_sum(hidden[start:end], weight, targets[start:end])
    return total / num_items
