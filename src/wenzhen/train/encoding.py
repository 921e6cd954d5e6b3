"""Conversations -> training samples (`input_ids`, `labels`), with the official ChatGLM3 loss mask.

There is one algorithm for every model family, built on the family's own chat formatter (`encode_prompt`), so
training sees exactly the token ids that generation will produce:

* each assistant turn is labelled from the token after the assistant header (the prompt that generation ends
  with) to the end of the turn as the template renders it;
* the token that ends the turn is labelled as well, so the model learns to stop: the next role token or the final
  eos for ChatGLM3 (the official `loss_masks = [False, *loss_masks]` shift), the template's own end-of-turn token
  (`<|im_end|>`, `<|eot_id|>`, ...) for other models;
* a conversation whose render does not end in a stop token gets eos appended (the official demo does this).

For ChatGLM3 this reproduces the official `process_batch` ids and labels exactly
(`../shared/chatglm3/golden/sft_examples.jsonl`) with `truncation="official"`. The default `keep_eos` differs
only for samples longer than the budget: the last kept token is replaced by the turn's stop token, so a cut answer
still teaches the model to stop. A sample left with no labelled token is skipped and counted, never trained on.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from transformers import PreTrainedTokenizerBase

from wenzhen.errors import WenzhenError
from wenzhen.models.family import Message, ModelFamily

IGNORE = -100
Truncation = Literal["keep_eos", "official"]


@dataclass
class EncodedSample:
    """One training sample; `labels[i]` is the target for position i (the model shifts them)."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    @property
    def label_count(self) -> int:
        """Tokens that contribute to the loss."""
        return sum(1 for label in self.labels if label != IGNORE)


@dataclass
class EncodingReport:
    """What happened to a split: kept samples and the reasons others were skipped."""

    kept: int = 0
    truncated: int = 0
    skipped_no_labels: int = 0
    skipped_invalid: int = 0
    tokens: int = 0
    label_tokens: int = 0
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (the first few problems only)."""
        return {
            "kept": self.kept,
            "truncated": self.truncated,
            "skipped_no_labels": self.skipped_no_labels,
            "skipped_invalid": self.skipped_invalid,
            "tokens": self.tokens,
            "label_tokens": self.label_tokens,
            "problems": self.problems[:20],
        }


def conversation_messages(row: Any) -> tuple[list[Message], list[dict[str, Any]] | None]:
    """The messages (and tools) of one data row: `{"conversations": [...]}` as the official demo, or `messages`."""
    if not isinstance(row, dict):
        raise WenzhenError('a row is not a JSON object; each line must be {"conversations": [...]}')
    messages = row.get("conversations", row.get("messages"))
    if not isinstance(messages, list) or not messages:
        raise WenzhenError("a row has no non-empty 'conversations' list")
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise WenzhenError("a message is not an object with a 'role'")
        if not isinstance(message.get("content", ""), str):
            raise WenzhenError(f"a {message['role']} message has non-text content")
    if not any(message["role"] == "assistant" for message in messages):
        raise WenzhenError("a conversation has no assistant turn to learn from")
    tools = row.get("tools")
    return messages, tools if isinstance(tools, list) and tools else None


def _render(
    family: ModelFamily,
    tokenizer: PreTrainedTokenizerBase,
    messages: list[Message],
    tools: list[dict[str, Any]] | None,
    add_generation_prompt: bool,
) -> list[int]:
    return family.encode_prompt(tokenizer, messages, tools=tools, add_generation_prompt=add_generation_prompt)


def _require_prefix(prefix: list[int], full: list[int], what: str) -> None:
    """Masking by prefix lengths is only sound when the template renders history the same way every time."""
    if full[: len(prefix)] != prefix:
        raise WenzhenError(
            f"the chat template renders {what} differently once the conversation goes on, so the answer's tokens "
            "cannot be located; use a model whose template is prefix-stable (most instruct models are)"
        )


def encode_conversation(
    family: ModelFamily,
    tokenizer: PreTrainedTokenizerBase,
    messages: list[Message],
    tools: list[dict[str, Any]] | None = None,
) -> EncodedSample:
    """The untruncated sample: the whole conversation, assistant turns and their stop tokens labelled."""
    stops = set(family.stop_token_ids(tokenizer))
    full = _render(family, tokenizer, messages, tools, add_generation_prompt=False)
    labelled = [False] * len(full)
    final_turn_stopped = False
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        header = _render(family, tokenizer, messages[:index], tools, add_generation_prompt=True)
        turn = _render(family, tokenizer, messages[: index + 1], tools, add_generation_prompt=False)
        _require_prefix(header, turn, f"the prompt before assistant turn {index}")
        _require_prefix(turn, full, f"assistant turn {index}")
        for position in range(len(header), len(turn)):
            labelled[position] = True
        if len(turn) < len(full) and full[len(turn)] in stops:
            labelled[len(turn)] = True  # the next role token ends this turn (ChatGLM3)
        final_turn_stopped = any(token in stops for token in turn[len(header) :])
    answer_last = messages[-1]["role"] == "assistant"
    if (answer_last and not final_turn_stopped) or (not answer_last and full and full[-1] not in stops):
        # The render does not end the conversation with a stop token (ChatGLM3): append eos, as the official code.
        eos = tokenizer.eos_token_id
        if eos is None:
            raise WenzhenError("the tokenizer has no eos token; set one in its tokenizer_config.json")
        full.append(eos)
        labelled.append(answer_last)
    labels = [token if mask else IGNORE for token, mask in zip(full, labelled, strict=True)]
    return EncodedSample(input_ids=full, labels=labels)


def truncate(sample: EncodedSample, max_length: int, mode: Truncation, stops: set[int]) -> EncodedSample:
    """Cut to `max_length` tokens; `keep_eos` ends a cut sample with the stop token its last labelled turn used."""
    if len(sample.input_ids) <= max_length:
        return sample
    input_ids, labels = sample.input_ids[:max_length], sample.labels[:max_length]
    if mode == "keep_eos":
        stop = next((token for token in reversed(sample.labels) if token in stops), None)
        if stop is None:
            stop = sample.input_ids[-1]
        # Label the stop token only when the cut falls inside an answer: stopping mid-question is not a lesson.
        inside_answer = labels[-1] != IGNORE
        input_ids[-1] = stop
        labels[-1] = stop if inside_answer else IGNORE
    return EncodedSample(input_ids=input_ids, labels=labels, truncated=True)


def encode_rows(
    rows: Iterable[Any],
    family: ModelFamily,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    truncation: Truncation = "keep_eos",
    source: str = "data",
) -> tuple[list[EncodedSample], EncodingReport]:
    """Encode a split; invalid rows and rows left without labels are counted (with reasons), not trained on."""
    stops = set(family.stop_token_ids(tokenizer)) | (
        {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    )
    samples: list[EncodedSample] = []
    report = EncodingReport()
    for number, row in enumerate(rows, start=1):
        try:
            messages, tools = conversation_messages(row)
            sample = truncate(
                encode_conversation(family, tokenizer, messages, tools), max_length, truncation, stops
            )
        except WenzhenError as exc:
            report.skipped_invalid += 1
            report.problems.append(f"{source} row {number}: {exc}")
            continue
        if sample.label_count == 0:
            report.skipped_no_labels += 1
            report.problems.append(
                f"{source} row {number}: no answer token left after truncation to {max_length}"
            )
            continue
        samples.append(sample)
        report.kept += 1
        report.truncated += int(sample.truncated)
        report.tokens += len(sample.input_ids)
        report.label_tokens += sample.label_count
    return samples, report
