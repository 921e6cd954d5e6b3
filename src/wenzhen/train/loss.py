"""Causal-LM loss that computes logits only where a label is, and upcasts them to fp32 one chunk at a time.

ChatGLM3's vocabulary has 65,024 entries: transformers' loss path materialises logits for every position and
upcasts them to fp32 (8,192 tokens x 65,024 x 4 bytes = 2.1 GB per packed row, plus the saved log-softmax and
its gradient), although the prompt positions carry no label. transformers' `logits_to_keep` accepts a tensor of
positions, so the forward (through DDP/FSDP wrappers as usual) runs the lm_head only at positions whose next
token is labelled. The cross-entropy is then taken in chunks under activation checkpointing: only the bf16
logits stay alive between forward and backward, and each chunk's fp32 log-softmax is recomputed in backward.
At 1,024-token rows with gradient checkpointing that is the difference between fitting the official recipe's
13 GiB and not (benchmarks/results/train_throughput.md). It is plain PyTorch rather than a fused kernel
library's loss because it must run on CPU and under torch.compile too.

On a CUDA GPU with liger-kernel installed, `performance.fused_loss` goes one step further (`fused_head_loss`): the
lm_head is taken out of the forward, which then returns the final hidden states at the labelled positions, and
liger's fused linear cross-entropy computes lm_head and loss together in chunks, its gradient included, so neither
the bf16 logits nor their fp32 copies are ever whole in memory (about 3 GiB less at 16k-token rows, and fewer
memory-bound passes over them). Neither transformers nor peft offers that for a loss over chosen positions; the
swap of the lm_head below is the only hand-written part, the kernel is liger's.
"""

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


def labelled_positions(labels: torch.Tensor) -> torch.Tensor:
    """Positions p (over all rows) whose next token p+1 carries a label; these are the logits the loss needs."""
    wanted = (labels[:, 1:] != IGNORE_INDEX).any(dim=0)
    return wanted.nonzero(as_tuple=True)[0]


def _cross_entropy_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")


def chunked_cross_entropy_sum(logits: torch.Tensor, targets: torch.Tensor, chunk: int | None) -> torch.Tensor:
    """Summed cross-entropy of `logits` [N, V] against `targets` [N], fp32 math, `chunk` rows at a time.

    With gradients on, each chunk is checkpointed, so at most one chunk's fp32 copies exist at any moment.
    `chunk` None (or one covering all rows) computes it in one piece.
    """
    if chunk is None or logits.shape[0] <= chunk or not torch.is_grad_enabled():
        return _cross_entropy_sum(logits, targets)
    total = logits.new_zeros((), dtype=torch.float32)
    for start in range(0, logits.shape[0], chunk):
        part = checkpoint(
            _cross_entropy_sum,
            logits[start : start + chunk],
            targets[start : start + chunk],
            use_reentrant=False,
        )
        total = total + part
    return total


def sparse_logits_loss(
    model: nn.Module,
    inputs: dict[str, Any],
    num_items_in_batch: int | torch.Tensor | None = None,
    chunk: int | None = None,
) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled tokens, equal to `model(**inputs).loss` up to rounding.

    `num_items_in_batch` is the labelled-token count over the whole gradient-accumulated batch (the Trainer
    passes it); by default this batch's own count. `chunk`: labelled positions per fp32 cross-entropy chunk.
    """
    labels = inputs["labels"]
    positions = labelled_positions(labels)
    forward_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    if positions.numel() == 0:
        outputs = model(**forward_inputs, logits_to_keep=1)
        return outputs.logits.sum() * 0.0
    logits = model(**forward_inputs, logits_to_keep=positions).logits
    targets = labels[:, positions + 1].to(logits.device)
    total = chunked_cross_entropy_sum(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), chunk)
    count = num_items_in_batch if num_items_in_batch is not None else (targets != IGNORE_INDEX).sum()
    if isinstance(count, torch.Tensor):
        count = count.to(total.device)
    return total / count


# (lm_head weight, lm_head bias or None, hidden states [N, H], targets [N]) -> summed cross-entropy, fp32.
HeadLoss = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor], torch.Tensor]


def liger_head_loss(
    weight: torch.Tensor, bias: torch.Tensor | None, hidden: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """liger-kernel's fused linear cross-entropy (CUDA, Triton): lm_head and loss in chunks, summed."""
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    loss = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="sum")
    return loss(weight, hidden, targets, bias).float()


def plain_head_loss(
    weight: torch.Tensor, bias: torch.Tensor | None, hidden: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """The same sum without a fused kernel (the reference the fused path is checked against)."""
    return _cross_entropy_sum(F.linear(hidden, weight, bias), targets)


class HiddenStates(nn.Module):
    """Stands in for the lm_head: the forward then returns the final hidden states where it returned logits."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden


@contextmanager
def lm_head_removed(model: Any) -> Iterator[nn.Linear]:
    """Yield `model`'s lm_head while its forward returns hidden states instead of logits.

    `model` is the transformers (or peft-wrapped) model itself, not a DDP wrapper: the swap is an attribute of the
    module tree, and the forward still goes through whatever wraps it.
    """
    head: nn.Linear = model.get_output_embeddings()
    model.set_output_embeddings(HiddenStates())
    try:
        yield head
    finally:
        model.set_output_embeddings(head)


def fused_head_loss(
    model: nn.Module,
    inputs: dict[str, Any],
    num_items_in_batch: int | torch.Tensor | None = None,
    *,
    unwrapped: nn.Module | None = None,
    head_loss: HeadLoss = liger_head_loss,
) -> torch.Tensor:
    """`sparse_logits_loss` with the lm_head and the cross-entropy computed together by `head_loss`.

    `model` is what the forward goes through (a DDP wrapper under torchrun), `unwrapped` the model inside it whose
    lm_head is taken out for the forward (default: `model`).
    """
    labels = inputs["labels"]
    positions = labelled_positions(labels)
    if positions.numel() == 0:
        return sparse_logits_loss(model, inputs, num_items_in_batch)
    forward_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    with lm_head_removed(unwrapped if unwrapped is not None else model) as head:
        hidden = model(**forward_inputs, logits_to_keep=positions).logits
    targets = labels[:, positions + 1].to(hidden.device)
    total = head_loss(
        head.weight, getattr(head, "bias", None), hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    )
    count = num_items_in_batch if num_items_in_batch is not None else (targets != IGNORE_INDEX).sum()
    if isinstance(count, torch.Tensor):
        count = count.to(total.device)
    return total / count


class FusedLoss:
    """`fused_head_loss` for a whole run, with a way out: when its first use fails (liger-kernel missing or broken,
    its Triton kernel not building on this GPU), one notice says so and the run continues on the chunked
    `sparse_logits_loss`. Once the fused loss has worked, later errors are real and raised. An out-of-memory error
    is never taken for a missing kernel.
    """

    def __init__(self, chunk: int | None, head_loss: HeadLoss = liger_head_loss) -> None:
        self.chunk, self.head_loss = chunk, head_loss
        self.proven = False
        self.failed = False

    def __call__(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        num_items_in_batch: int | torch.Tensor | None,
        unwrapped: nn.Module | None = None,
    ) -> torch.Tensor:
        if self.failed:
            return sparse_logits_loss(model, inputs, num_items_in_batch, chunk=self.chunk)
        try:
            loss = fused_head_loss(
                model, inputs, num_items_in_batch, unwrapped=unwrapped, head_loss=self.head_loss
            )
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:  # whatever the kernel library raises, the chunked loss still works
            if self.proven:
                raise
            self.failed = True
            log.warning(
                "notice: the fused loss (liger-kernel) does not run here (%s: %s); using the chunked loss instead "
                "(set performance.fused_loss: false to skip the attempt)",
                type(exc).__name__,
                str(exc)[:160],
            )
            return sparse_logits_loss(model, inputs, num_items_in_batch, chunk=self.chunk)
        self.proven = True
        return loss
