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


class BadRecord(Exception):
    """Raised by a reader's record converter: the record is malformed; the message is the reject reason."""
