"""The unit that flows through data preparation: one source record, its conversation, and where it came from."""

from dataclasses import dataclass, field
from typing import Any

Message = dict[str, str]


@dataclass(slots=True)
class Record:
    """One record as a reader produced it.

    `messages` holds the conversation in the training format (`role`/`content` dicts); it is empty when the reader
    could not make sense of the record, and `error` then says why. `raw` is what the source held, verbatim, so a
    rejected record can be written out unchanged.
    """

    source: str
    line: int
    raw: Any
    messages: list[Message] = field(default_factory=list)
    department: str | None = None
    title: str | None = None
    error: str | None = None
    # Preference data: `messages` ends with the chosen (or, for KTO, the judged) answer; `rejected` is the
    # dispreferred answer to the same prompt, `label` KTO's verdict on a single answer.
    rejected: str | None = None
    label: bool | None = None

    @property
    def is_preference(self) -> bool:
        """True for a chosen/rejected pair or a labelled single answer."""
        return self.rejected is not None or self.label is not None


def output_row(messages: list[Message], rejected: str | None, label: bool | None) -> dict[str, Any]:
    """The JSON line written for a kept record.

    Conversations as `{"conversations": [...]}` (the ChatGLM3 fine-tuning format); pairs as MedicalGPT's layout
    with role/content prompt turns (`{"conversations": prompt, "chosen", "rejected"}`); KTO answers as
    `{"conversations": prompt, "completion", "label"}`.
    """
    if rejected is None and label is None:
        return {"conversations": messages}
    prompt, answer = messages[:-1], messages[-1]["content"]
    if rejected is not None:
        return {"conversations": prompt, "chosen": answer, "rejected": rejected}
    return {"conversations": prompt, "completion": answer, "label": label}


class BadRecord(Exception):
    """Raised by a reader's record converter: the record is malformed; the message is the reject reason."""
