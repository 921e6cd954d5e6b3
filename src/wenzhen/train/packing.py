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

import bisect
import random
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


def pack_rows(
    samples: Sequence[EncodedSample], row_tokens: int, seed: int, pad_id: int
) -> list[dict[str, list[int]]]:
    """Pack samples into rows of exactly `row_tokens` tokens (best-fit decreasing), then shuffle the rows.

    Fixed-length rows keep tensor shapes constant, so compiled kernels and flex-attention block masks are built
    once; best-fit decreasing fills rows to within a few tokens, and the remainder is a padding "sample" of its
    own (positions restart, no labels) that nothing attends across. Each sample's first label is -100, as in
    the flattening collator, so no token learns to predict the next sample's start. Padding uses the tokenizer's
    pad id, which the Trainer's non-padding token count excludes.
    """
    too_long = [len(s.input_ids) for s in samples if len(s.input_ids) > row_tokens]
    if too_long:
        raise ValueError(
            f"{len(too_long)} samples are longer than row_tokens={row_tokens} (longest {max(too_long)})"
        )
    order = sorted(range(len(samples)), key=lambda i: (-len(samples[i].input_ids), i))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free tokens, row index), kept sorted for the best-fit search
    for index in order:
        length = len(samples[index].input_ids)
        slot = bisect.bisect_left(free, (length, -1))
        if slot < len(free):
            space, row = free.pop(slot)
        else:
            space, row = row_tokens, len(rows)
            rows.append([])
        rows[row].append(index)
        if space - length > 0:
            bisect.insort(free, (space - length, row))
    random.Random(seed).shuffle(rows)
    return [_build_row([samples[i] for i in row], row_tokens, pad_id) for row in rows]


def _build_row(members: Sequence[EncodedSample], row_tokens: int, pad_id: int) -> dict[str, list[int]]:
    input_ids: list[int] = []
    labels: list[int] = []
    position_ids: list[int] = []
    for sample in members:
        input_ids += sample.input_ids
        labels += [IGNORE, *sample.labels[1:]]
        position_ids += range(len(sample.input_ids))
    padding = row_tokens - len(input_ids)
    input_ids += [pad_id] * padding
    labels += [IGNORE] * padding
    position_ids += range(padding)
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}


class RowDataset(torch.utils.data.Dataset):
    """Pre-packed fixed-length rows; `default_data_collator` stacks them."""

    def __init__(self, rows: Sequence[dict[str, list[int]]]) -> None:
        self.rows = list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.rows[index]
