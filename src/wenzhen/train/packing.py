"""Batches for training: padding-free packing (the default) or right-padded rows.

Packing uses transformers' `DataCollatorWithFlattening`: the samples of a batch are concatenated into one row and
`position_ids` restart at 0 for every sample, with no `attention_mask`. transformers reads such position ids as
packed sequences (`masking_utils.find_packed_sequence_indices`) and builds a block-diagonal causal mask for SDPA
and flex attention, or variable-length kernels for flash-attention, so no token attends across a sample boundary
and no compute is spent on padding. The first label of every sample is -100, so the last token of one sample is
never trained to predict the first token of the next. The packed loss is therefore the token-weighted mean of the
samples' losses, exactly what a padded batch gives (checked by `tests/train/test_packing.py`).

Prefix tuning (P-Tuning v2) feeds virtual tokens through the KV cache, which turns the packed-sequence detection
off; it trains on padded rows instead.
"""

from collections.abc import Sequence
from typing import Any

import torch
from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening, PreTrainedTokenizerBase

from wenzhen.train.encoding import IGNORE, EncodedSample


class SampleDataset(torch.utils.data.Dataset):
    """Encoded samples as the feature dicts the collators expect."""

    def __init__(self, samples: Sequence[EncodedSample]) -> None:
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        sample = self.samples[index]
        return {"input_ids": sample.input_ids, "labels": sample.labels}


def make_collator(
    packed: bool, tokenizer: PreTrainedTokenizerBase | None, flash_attention: bool = False
) -> Any:
    """The batch builder: flattened packed rows, or rows right-padded to the longest sample.

    With flash-attention the packed batch also carries the sample boundaries (`cu_seq_lens_*`), so the kernel
    need not recompute them from `position_ids` in every layer.
    """
    if packed:
        return DataCollatorWithFlattening(
            return_position_ids=True, separator_id=IGNORE, return_flash_attn_kwargs=flash_attention
        )
    if tokenizer is None:
        raise ValueError("padded batches need the tokenizer's pad token")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Training pads on the right: left padding would shift every position of the short rows.
    tokenizer.padding_side = "right"
    return DataCollatorForSeq2Seq(
        tokenizer, padding="longest", label_pad_token_id=IGNORE, return_tensors="pt"
    )
