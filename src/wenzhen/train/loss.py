"""Causal-LM loss that computes logits only where a label is.

ChatGLM3's vocabulary has 65,024 entries: transformers' loss path materialises logits for every position and
upcasts them to fp32 (8,192 tokens x 65,024 x 4 bytes = 2.1 GB per packed row, plus gradients), although the
prompt positions carry no label. transformers' `logits_to_keep` accepts a tensor of positions, so the forward
(through DDP/FSDP wrappers as usual) runs the lm_head only at positions whose next token is labelled, and the
cross-entropy is taken there. No maintained fused-kernel library covers ChatGLM3 (Liger and Unsloth do not).
"""

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

IGNORE_INDEX = -100


def labelled_positions(labels: torch.Tensor) -> torch.Tensor:
    """Positions p (over all rows) whose next token p+1 carries a label; these are the logits the loss needs."""
    wanted = (labels[:, 1:] != IGNORE_INDEX).any(dim=0)
    return wanted.nonzero(as_tuple=True)[0]


def sparse_logits_loss(
    model: nn.Module, inputs: dict[str, Any], num_items_in_batch: int | torch.Tensor | None = None
) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled tokens, equal to `model(**inputs).loss` up to rounding.

    `num_items_in_batch` is the labelled-token count over the whole gradient-accumulated batch (the Trainer
    passes it); by default this batch's own count.
    """
    labels = inputs["labels"]
    positions = labelled_positions(labels)
    if positions.numel() == 0:
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"}, logits_to_keep=1)
        return outputs.logits.sum() * 0.0
    forward_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    logits = model(**forward_inputs, logits_to_keep=positions).logits
    targets = labels[:, positions + 1].to(logits.device)
    total = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    count = num_items_in_batch if num_items_in_batch is not None else (targets != IGNORE_INDEX).sum()
    if isinstance(count, torch.Tensor):
        count = count.to(total.device)
    return total / count
