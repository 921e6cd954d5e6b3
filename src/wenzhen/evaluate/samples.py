"""Held-out consultations for `wenzhen eval gen`: a prompt (messages) and the reference answer, from a file.

Accepted files: JSON Lines or a JSON array. Each record is one of the layouts in `LAYOUTS`, recognised by its keys:
`{"conversations"|"messages": [{role, content}, ...]}` (the project's prepared splits and the official ChatGLM3
format; the last assistant turn is the reference), alpaca with optional `history` (Zhongjing's CMtMedQA test
set; its safety probes spell the key `instruct`), and HuatuoGPT's `{medical_case, doctor_diagnosis}`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wenzhen.errors import WenzhenError
from wenzhen.io import read_jsonl
from wenzhen.models import Message
from wenzhen.registry import Registry


@dataclass
class EvalSample:
    """One prompt and its reference answer."""

    id: str
    messages: list[Message]
    reference: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Layout:
    """A record layout: `describe` names its keys, `matches(record)` recognises it, `convert(record, id)` makes a sample."""

    describe: str
    matches: Callable[[dict[str, Any]], bool]
    convert: Callable[[dict[str, Any], str], EvalSample]


LAYOUTS: Registry[Layout] = Registry("eval record layout")


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _from_messages(record: dict[str, Any], sample_id: str) -> EvalSample:
    turns = record.get("conversations", record.get("messages"))
    if not isinstance(turns, list) or not all(isinstance(t, dict) and "role" in t for t in turns):
        raise ValueError("'conversations' must be a list of {role, content} objects")
    last_answer = max((i for i, t in enumerate(turns) if t["role"] == "assistant"), default=None)
    if last_answer is None or last_answer == 0:
        raise ValueError("the conversation has no assistant turn after a prompt to use as the reference")
    prompt = [{"role": t["role"], "content": t.get("content") or ""} for t in turns[:last_answer]]
    return EvalSample(sample_id, prompt, _text(turns[last_answer].get("content")))


def _from_alpaca(record: dict[str, Any], sample_id: str) -> EvalSample:
    messages: list[Message] = []
    if _text(record.get("system")):
        messages.append({"role": "system", "content": _text(record["system"])})
    for pair in record.get("history") or []:
        if not (isinstance(pair, list) and len(pair) == 2):
            raise ValueError("'history' must be a list of [user, assistant] pairs")
        messages += [
            {"role": "user", "content": _text(pair[0])},
            {"role": "assistant", "content": _text(pair[1])},
        ]
    instruction = _text(record.get("instruction", record.get("instruct")))
    extra = _text(record.get("input"))
    messages.append({"role": "user", "content": f"{instruction}\n{extra}" if extra else instruction})
    meta: dict[str, Any] = {key: record[key] for key in ("cate1", "cate2") if key in record}
    return EvalSample(sample_id, messages, _text(record.get("output")), meta)


def _from_case(record: dict[str, Any], sample_id: str) -> EvalSample:
    meta = {"department": record["Department"]} if "Department" in record else {}
    user = {"role": "user", "content": _text(record.get("medical_case"))}
    return EvalSample(sample_id, [user], _text(record.get("doctor_diagnosis")), meta)


LAYOUTS.add(
    "conversations",
    Layout(
        '{"conversations": [{"role", "content"}, ...]} or {"messages": [...]}',
        lambda r: "conversations" in r or "messages" in r,
        _from_messages,
    ),
)
LAYOUTS.add(
    "alpaca",
    Layout(
        '{"instruction", "input", "output", "history"?}',
        lambda r: ("instruction" in r or "instruct" in r) and "output" in r,
        _from_alpaca,
    ),
)
LAYOUTS.add("case", Layout('{"medical_case", "doctor_diagnosis"}', lambda r: "medical_case" in r, _from_case))


def read_records(path: Path) -> list[Any]:
    """The records of a JSON Lines file or a JSON array, with a clear error for a missing or malformed file."""
    if not path.is_file():
        raise WenzhenError(f"eval file {path} does not exist; pass --data with a JSONL or JSON test file")
    if path.suffix == ".jsonl":
        records = read_jsonl(path)
    else:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise WenzhenError(
                f"{path} is not valid UTF-8 JSON ({exc}); pass a JSON array or a .jsonl file"
            ) from None
        if not isinstance(data, list):
            raise WenzhenError(f"{path} holds a JSON {type(data).__name__}, not an array of records")
        records = data
    if not records:
        raise WenzhenError(f"eval file {path} has no records; pass a non-empty test split")
    return records


def to_sample(record: Any, index: int, source: Path) -> EvalSample:
    """Convert one record through the first layout that recognises it."""
    where = f"{source} record {index + 1}"
    if not isinstance(record, dict):
        raise WenzhenError(f"{where} is not a JSON object; each record must be an object")
    sample_id = str(record.get("id", index))
    for _, layout in LAYOUTS.items():
        if layout.matches(record):
            try:
                sample = layout.convert(record, sample_id)
            except ValueError as exc:
                raise WenzhenError(f"{where}: {exc}") from None
            if not sample.messages or not sample.messages[-1]["content"]:
                raise WenzhenError(f"{where} has an empty prompt; fix or remove that record")
            return sample
    accepted = "; ".join(layout.describe for _, layout in LAYOUTS.items())
    raise WenzhenError(f"{where} has keys {sorted(record)}, none of the accepted layouts: {accepted}")


def load_samples(path: str | Path) -> list[EvalSample]:
    """Every record of an eval file as a sample (records without a reference are kept and reported)."""
    source = Path(path)
    return [to_sample(record, index, source) for index, record in enumerate(read_records(source))]


def select(samples: list[EvalSample], limit: int | None, seed: int) -> tuple[list[EvalSample], str]:
    """The whole split, or `limit` samples drawn with `seed` (kept in file order); with a description."""
    if limit is None or limit >= len(samples):
        return samples, "all"
    chosen = sorted(random.Random(seed).sample(range(len(samples)), limit))
    return [samples[i] for i in chosen], f"random {limit} with seed {seed}"
