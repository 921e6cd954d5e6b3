"""Corpus readers: one per raw layout, picked automatically from a file's first record (or by `--format`).

Each reader streams `Record`s. A record it cannot interpret comes out with `error` set (and is rejected later with
its line number); only a file that no reader recognises stops the run.
"""

import csv
import io
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wenzhen.data.records import BadRecord, Message, Record
from wenzhen.data.textio import detect_encoding, iter_csv_rows, iter_json_records, open_text, read_head
from wenzhen.errors import WenzhenError
from wenzhen.registry import Registry


@dataclass(slots=True)
class Probe:
    """What a reader may look at to decide whether it can read a file."""

    path: Path
    encoding: str
    head: str
    csv_header: list[str] | None
    first_json: Any


@dataclass(frozen=True, slots=True)
class Reader:
    """A named raw layout: `accepts` judges a probe, `read` streams the file's records."""

    name: str
    description: str
    accepts: Callable[[Probe], bool]
    read: Callable[[Path, str], Iterator[Record]]


READERS: Registry[Reader] = Registry("corpus format")

# Sets that look like corpora but are exam or evaluation questions: reading them as training data would leak
# the benchmarks into the model, so they are refused by name.
EVAL_SIGNATURES: list[tuple[Callable[[Probe], bool], str]] = [
    (lambda p: p.csv_header is not None and p.csv_header[1:] == ["Question", "A", "B", "C", "D", "Answer"],
     "a multiple-choice exam set (CMMLU layout)"),
    (lambda p: _keys(p) >= {"medical_case", "doctor_diagnosis"}, "an evaluation question set (HuatuoGPT Med-dialog)"),
    (lambda p: _keys(p) >= {"label", "query"} and "answer" not in _keys(p), "an intent-classification set"),
]  # fmt: skip


def _keys(probe: Probe) -> set[str]:
    return set(probe.first_json) if isinstance(probe.first_json, dict) else set()


def probe_file(path: Path) -> Probe:
    """Detect the encoding and peek at the first record (CSV header or first JSON value)."""
    if not path.is_file():
        raise WenzhenError(f"input {path} does not exist or is not a file")
    encoding = detect_encoding(path)
    head = read_head(path, encoding)
    first_json: Any = None
    csv_header: list[str] | None = None
    if head.lstrip("\ufeff \t\r\n")[:1] in ("[", "{"):
        first = next(iter_json_records(path, encoding), None)
        first_json = first.value if first is not None and first.error is None else None
    else:
        try:
            csv_header = next(csv.reader(io.StringIO(head)), None)
        except csv.Error:
            csv_header = None
    return Probe(path, encoding, head, csv_header, first_json)


def choose_reader(path: Path, format_name: str | None = None) -> tuple[Reader, str]:
    """The reader for `path` (the named one, or the first that accepts it) and the file's encoding."""
    probe = probe_file(path)
    if format_name:
        return READERS.get(format_name), probe.encoding
    for matches, what in EVAL_SIGNATURES:
        if matches(probe):
            raise WenzhenError(f"{path} looks like {what}, not training data; leave it out of `data prepare`")
    for _, reader in READERS.items():
        if reader.accepts(probe):
            return reader, probe.encoding
    seen = repr(probe.first_json)[:120] if probe.first_json is not None else repr(probe.head[:120])
    raise WenzhenError(
        f"{path}: no reader recognises this file (it starts with {seen}); pass --format with one of: "
        + ", ".join(READERS.names())
    )


def read_records(path: Path, format_name: str | None = None) -> Iterator[Record]:
    """Stream the records of one input file with the matching reader."""
    reader, encoding = choose_reader(path, format_name)
    return reader.read(path, encoding)


# ---------------------------------------------------------------------------------------------- helpers


def _text(value: Any, what: str) -> str:
    """A field that must be a string (numbers are accepted and written as text)."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if value is None:
        return ""
    raise BadRecord(f"bad_field: {what} is {type(value).__name__}, not text")


def _department(value: Any) -> str | None:
    """A department label, with empty and pandas' 'nan' placeholders treated as unknown.

    Labels are interned: a corpus has a handful of departments but hundreds of thousands of records.
    """
    text = str(value).strip() if value is not None else ""
    return sys.intern(text) if text and text.lower() not in ("nan", "none", "null") else None


def _json_reader(convert: Callable[[dict[str, Any]], Record]) -> Callable[[Path, str], Iterator[Record]]:
    """A reader over JSON arrays or JSON Lines whose records `convert` turns into Records."""

    def read(path: Path, encoding: str) -> Iterator[Record]:
        source = str(path)
        for item in iter_json_records(path, encoding):
            if item.error is not None:
                yield Record(source, item.line, item.value, error=item.error)
                continue
            if not isinstance(item.value, dict):
                yield Record(source, item.line, item.value, error="not_an_object")
                continue
            try:
                record = convert(item.value)
            except BadRecord as exc:
                yield Record(source, item.line, item.value, error=str(exc))
                continue
            record.source, record.line, record.raw = source, item.line, item.value
            yield record

    return read


def _conversation(messages: list[Message], raw: dict[str, Any] | None = None, **kw: Any) -> Record:
    return Record(source="", line=0, raw=raw, messages=messages, **kw)


# ---------------------------------------------------------------------------------------------- Toyhom CSV


TOYHOM_COLUMNS = ("department", "title", "ask", "answer")


def _read_toyhom_csv(path: Path, encoding: str) -> Iterator[Record]:
    """`department,title,ask,answer` rows, parsed as RFC 4180 (quoted commas, quotes and newlines survive)."""
    source = str(path)
    rows = iter_csv_rows(path, encoding)
    header_line, header, _ = next(rows, (1, [], None))
    if not isinstance(header, list):
        raise WenzhenError(f"{path}:{header_line}: the CSV header cannot be parsed")
    columns = [name.strip().lstrip("\ufeff") for name in header]
    missing = [name for name in TOYHOM_COLUMNS if name not in columns]
    if missing:
        raise WenzhenError(
            f"{path}: the CSV header {columns} lacks {missing}; Toyhom CSV needs {list(TOYHOM_COLUMNS)}"
        )
    index = [columns.index(name) for name in TOYHOM_COLUMNS]
    width = len(columns)
    for line, row, error in rows:
        if error is not None or not isinstance(row, list):
            yield Record(source, line, row, error=error)
            continue
        if not row:
            continue  # a blank line is not a record
        if len(row) != width:
            yield Record(source, line, row, error=f"wrong_field_count: {len(row)} fields, header has {width}")
            continue
        department, title, ask, answer = (row[i] for i in index)
        yield Record(
            source,
            line,
            dict(zip(columns, row, strict=True)),
            [{"role": "user", "content": ask}, {"role": "assistant", "content": answer}],
            department=_department(department),
            title=title,
        )


READERS.add(
    "toyhom-csv",
    Reader(
        "toyhom-csv",
        "Toyhom Chinese-medical-dialogue CSV: department,title,ask,answer (GB18030 or UTF-8)",
        lambda p: (
            p.csv_header is not None
            and set(TOYHOM_COLUMNS) <= {c.strip().lstrip("\ufeff") for c in p.csv_header}
        ),
        _read_toyhom_csv,
    ),
)


# ---------------------------------------------------------------------------------------------- Toyhom txt


def _read_toyhom_txt(path: Path, encoding: str) -> Iterator[Record]:
    """Blocks of `title,ask` + newline + `answer`, separated by two blank lines (the upstream 数据处理.py output).

    The title is split from the question at the first comma, as the upstream script joined them; the file's name
    (e.g. 内科) is the department.
    """
    source = str(path)
    department = _department(path.stem)
    with open_text(path, encoding) as handle:
        block: list[str] = []
        start, blanks = 1, 0
        for number, line in enumerate(handle, start=1):
            text = line.rstrip("\r\n")
            if text:
                if not block:
                    start = number
                block.extend([""] * blanks if block else [])
                block.append(text)
                blanks = 0
                continue
            blanks += 1
            if block and blanks >= 2:
                yield _toyhom_block(source, start, block, department)
                block = []
        if block:
            yield _toyhom_block(source, start, block, department)


def _toyhom_block(source: str, line: int, block: list[str], department: str | None) -> Record:
    raw = "\n".join(block)
    if len(block) < 2 or "," not in block[0]:
        return Record(source, line, raw, error="malformed_block: expected 'title,question' then the answer")
    title, ask = block[0].split(",", 1)
    answer = "\n".join(block[1:])
    messages = [{"role": "user", "content": ask}, {"role": "assistant", "content": answer}]
    return Record(source, line, raw, messages, department=department, title=title)


def _looks_like_toyhom_txt(probe: Probe) -> bool:
    first_block = probe.head.replace("\r\n", "\n").split("\n\n", 1)[0].split("\n")
    return (
        probe.path.suffix.lower() == ".txt"
        and probe.first_json is None
        and len(first_block) == 2
        and "," in first_block[0]
        and "\n\n\n" in probe.head.replace("\r\n", "\n")
    )


READERS.add(
    "toyhom-txt",
    Reader("toyhom-txt", "Toyhom .txt blocks: 'title,ask' line, answer line, two blank lines", _looks_like_toyhom_txt, _read_toyhom_txt),
)  # fmt: skip


# ---------------------------------------------------------------------------------------------- alpaca


FLATTENED_TURN = re.compile(r"\s*<(user|bot)>\s*[:：]\s*")


def _split_flattened(text: str) -> list[Message] | None:
    """Huatuo's ' <user>: ... <bot>: ... <user>: ...' flattened history, or None when `text` is plain."""
    if "<user>" not in text:
        return None
    parts = FLATTENED_TURN.split(text)
    if parts[0].strip():
        raise BadRecord("malformed_turns: text before the first <user>/<bot> marker")
    return [
        {"role": "user" if speaker == "user" else "assistant", "content": content}
        for speaker, content in zip(parts[1::2], parts[2::2], strict=True)
    ]


def _convert_alpaca(raw: dict[str, Any]) -> Record:
    """instruction (or Zhongjing's `instruct`) + input -> user, output -> assistant, after `history` pairs."""
    instruction = _text(raw.get("instruction", raw.get("instruct")), "instruction")
    extra = _text(raw.get("input"), "input")
    messages: list[Message] = []
    if raw.get("system"):
        messages.append({"role": "system", "content": _text(raw["system"], "system")})
    for pair in raw.get("history") or []:
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise BadRecord("bad_history: each history item must be a [question, answer] pair")
        messages.append({"role": "user", "content": _text(pair[0], "history question")})
        messages.append({"role": "assistant", "content": _text(pair[1], "history answer")})
    flattened = _split_flattened(instruction)
    if flattened is not None:
        messages.extend(flattened)
        if extra.strip():
            messages.append({"role": "user", "content": extra})
    else:
        messages.append(
            {"role": "user", "content": f"{instruction}\n{extra}" if extra.strip() else instruction}
        )
    messages.append({"role": "assistant", "content": _text(raw.get("output"), "output")})
    department = _department(raw.get("department", raw.get("cate1")))
    return _conversation(messages, department=department)


READERS.add(
    "alpaca",
    Reader(
        "alpaca",
        "alpaca JSON / JSON Lines: instruction (or instruct), input, output, optional history and system",
        lambda p: bool(_keys(p) & {"instruction", "instruct"}) and "output" in _keys(p),
        _json_reader(_convert_alpaca),
    ),
)


# ---------------------------------------------------------------------------------------------- conversations

SHAREGPT_ROLES = {
    "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "bot": "assistant",
    "chatgpt": "assistant", "model": "assistant", "system": "system",
}  # fmt: skip
MESSAGE_ROLES = {"system", "user", "assistant"}
CONVERSATION_KEYS = ("conversations", "conversation", "messages")


def _turns(raw: dict[str, Any]) -> list[Any]:
    for key in CONVERSATION_KEYS:
        if key in raw:
            turns = raw[key]
            if not isinstance(turns, list):
                raise BadRecord(f"bad_field: {key} is not a list")
            return turns
    raise BadRecord("missing_field: no conversations/conversation/messages list")


def _convert_sharegpt(raw: dict[str, Any]) -> Record:
    """ShareGPT `{from, value}` turns (human/gpt/system)."""
    messages = []
    for turn in _turns(raw):
        if not isinstance(turn, dict) or "from" not in turn:
            raise BadRecord("bad_turn: a ShareGPT turn needs 'from' and 'value'")
        role = SHAREGPT_ROLES.get(str(turn["from"]).lower())
        if role is None:
            raise BadRecord(f"unknown_role: {turn['from']!r}")
        messages.append({"role": role, "content": _text(turn.get("value"), "value")})
    return _conversation(messages, department=_department(raw.get("department")))


def _convert_messages(raw: dict[str, Any]) -> Record:
    """`{role, content}` turns under conversations/conversation/messages (ChatGLM3's and OpenAI's layout)."""
    messages = []
    for turn in _turns(raw):
        if not isinstance(turn, dict) or "role" not in turn:
            raise BadRecord("bad_turn: a turn needs 'role' and 'content'")
        role = str(turn["role"])
        if role not in MESSAGE_ROLES:
            raise BadRecord(
                f"unknown_role: {role!r} (only system, user and assistant turns are training data)"
            )
        messages.append({"role": role, "content": _text(turn.get("content"), "content")})
    return _conversation(messages, department=_department(raw.get("department")))


def _first_turn(probe: Probe) -> dict[str, Any]:
    if not isinstance(probe.first_json, dict):
        return {}
    for key in CONVERSATION_KEYS:
        turns = probe.first_json.get(key)
        if isinstance(turns, list) and turns and isinstance(turns[0], dict):
            return turns[0]
    return {}


# ---------------------------------------------------------------------------------------------- preference data
# Registered before the conversation readers: a MedicalGPT pair also has a `conversations` list.


def _prompt_turns(turns: Any) -> list[Message]:
    """Prompt turns in ShareGPT `{from, value}` or `{role, content}` form; the prompt must end on a user turn."""
    if not isinstance(turns, list) or not turns:
        raise BadRecord("bad_field: the prompt is not a non-empty list of turns")
    messages: list[Message] = []
    for turn in turns:
        if isinstance(turn, dict) and "from" in turn:
            role = SHAREGPT_ROLES.get(str(turn["from"]).lower())
            content = turn.get("value")
        elif isinstance(turn, dict) and "role" in turn:
            role = str(turn["role"]) if turn["role"] in MESSAGE_ROLES else None
            content = turn.get("content")
        else:
            raise BadRecord("bad_turn: a prompt turn needs from/value or role/content")
        if role is None:
            raise BadRecord(f"unknown_role: {turn.get('from', turn.get('role'))!r}")
        messages.append({"role": role, "content": _text(content, "prompt turn")})
    if messages[-1]["role"] != "user":
        raise BadRecord("bad_prompt: the prompt must end with the user's turn that the answers reply to")
    return messages


def _answer(value: Any, what: str) -> str:
    """An answer as text, or as TRL's conversational form: a list holding one assistant message."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        value = value[0].get("content", value[0].get("value"))
    return _text(value, what)


def _prompt(raw: dict[str, Any]) -> list[Message]:
    """The prompt of a preference record: `conversations` turns, or `prompt` as text or as a list of turns, with
    the older MedicalGPT `system` / `history` / `question` keys."""
    if "conversations" in raw:
        return _prompt_turns(raw["conversations"])
    prompt = raw.get("prompt", raw.get("question"))
    if isinstance(prompt, list):
        return _prompt_turns(prompt)
    messages: list[Message] = []
    if raw.get("system"):
        messages.append({"role": "system", "content": _text(raw["system"], "system")})
    for pair in raw.get("history") or []:
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise BadRecord("bad_history: each history item must be a [question, answer] pair")
        messages.append({"role": "user", "content": _text(pair[0], "history question")})
        messages.append({"role": "assistant", "content": _text(pair[1], "history answer")})
    messages.append({"role": "user", "content": _text(prompt, "prompt")})
    return messages


PAIR_KEYS = [("chosen", "rejected"), ("response_chosen", "response_rejected")]


def _convert_pair(raw: dict[str, Any]) -> Record:
    """A prompt with a chosen and a rejected answer (MedicalGPT, TRL's prompt/chosen/rejected, ShareGPT pairs)."""
    for chosen_key, rejected_key in PAIR_KEYS:
        if chosen_key in raw and rejected_key in raw:
            messages = _prompt(raw)
            messages.append({"role": "assistant", "content": _answer(raw[chosen_key], chosen_key)})
            return _conversation(
                messages,
                department=_department(raw.get("department")),
                rejected=_answer(raw[rejected_key], rejected_key),
            )
    raise BadRecord("missing_field: a preference pair needs chosen and rejected answers")


KTO_LABELS = {True: True, False: False, "true": True, "false": False}  # 1 and 0 equal True and False


def _convert_kto(raw: dict[str, Any]) -> Record:
    """One answer to a prompt with KTO's label: true when it is a desirable answer."""
    label = raw.get("label")
    verdict = KTO_LABELS.get(label.lower() if isinstance(label, str) else label)
    if verdict is None:
        raise BadRecord(f"bad_field: label is {label!r}, not true or false")
    messages = _prompt(raw)
    messages.append({"role": "assistant", "content": _answer(raw.get("completion"), "completion")})
    return _conversation(messages, department=_department(raw.get("department")), label=verdict)


READERS.add(
    "preference-pairs",
    Reader(
        "preference-pairs",
        "preference pairs: conversations (MedicalGPT/ShareGPT prompt turns) or prompt, with chosen and rejected "
        "(also question/response_chosen/response_rejected)",
        lambda p: any({c, r} <= _keys(p) for c, r in PAIR_KEYS),
        _json_reader(_convert_pair),
    ),
)
READERS.add(
    "kto",
    Reader(
        "kto",
        "KTO single answers: conversations or prompt, completion, label (true: desirable)",
        lambda p: {"completion", "label"} <= _keys(p),
        _json_reader(_convert_kto),
    ),
)


READERS.add(
    "sharegpt",
    Reader("sharegpt", "ShareGPT JSON / JSON Lines: conversations [{from, value}]", lambda p: "from" in _first_turn(p), _json_reader(_convert_sharegpt)),
)  # fmt: skip
READERS.add(
    "messages",
    Reader(
        "messages",
        "role/content conversations under conversations, conversation or messages (ChatGLM3 / OpenAI layout)",
        lambda p: "role" in _first_turn(p),
        _json_reader(_convert_messages),
    ),
)


# ---------------------------------------------------------------------------------------------- single QA

# (question key, answer key) spellings seen in public corpora, including DISC's `raw_anwser` (sic).
QA_KEYS = [("question", "answer"), ("question", "raw_anwser"), ("question", "raw_answer"), ("问", "答"),
           ("query", "response"), ("ask", "answer"), ("prompt", "response")]  # fmt: skip


def _convert_qa(raw: dict[str, Any]) -> Record:
    """One question/answer pair under any of the QA_KEYS spellings."""
    for question, answer in QA_KEYS:
        if question in raw and answer in raw:
            messages = [
                {"role": "user", "content": _text(raw[question], question)},
                {"role": "assistant", "content": _text(raw[answer], answer)},
            ]
            return _conversation(
                messages, department=_department(raw.get("department")), title=raw.get("title")
            )
    raise BadRecord(
        "missing_field: no question/answer pair among " + ", ".join(f"{q}/{a}" for q, a in QA_KEYS)
    )


READERS.add(
    "qa-json",
    Reader(
        "qa-json",
        "single question/answer JSON records (question/answer, question/raw_anwser, 问/答, query/response ...)",
        lambda p: any({q, a} <= _keys(p) for q, a in QA_KEYS),
        _json_reader(_convert_qa),
    ),
)


# ---------------------------------------------------------------------------------------------- BianQue CSV

BIANQUE_TURN = re.compile(r"(病人|医生)[：:]")


def _read_bianque_csv(path: Path, encoding: str) -> Iterator[Record]:
    """`input,target,...` rows whose input is '病人：...\\n医生：...\\n医生：' with LITERAL backslash-n separators."""
    source = str(path)
    rows = iter_csv_rows(path, encoding)
    _, header, _ = next(rows, (1, [], None))
    columns = [name.strip().lstrip("\ufeff") for name in header] if isinstance(header, list) else []
    if not {"input", "target"} <= set(columns):
        raise WenzhenError(f"{path}: the CSV header {columns} lacks input/target; BianQue CSV needs both")
    for line, row, error in rows:
        if error is not None or not isinstance(row, list):
            yield Record(source, line, row, error=error)
            continue
        if len(row) != len(columns):
            yield Record(
                source, line, row, error=f"wrong_field_count: {len(row)} fields, header has {len(columns)}"
            )
            continue
        raw = dict(zip(columns, row, strict=True))
        try:
            messages = _bianque_dialogue(
                raw["input"].replace("\\n", "\n"), raw["target"].replace("\\n", "\n")
            )
        except BadRecord as exc:
            yield Record(source, line, raw, error=str(exc))
            continue
        yield Record(source, line, raw, messages)


def _bianque_dialogue(dialogue: str, target: str) -> list[Message]:
    parts = BIANQUE_TURN.split(dialogue)
    if parts[0].strip() or len(parts) < 3:
        raise BadRecord("malformed_turns: input must be 病人：/医生： turns")
    messages = [
        {"role": "user" if speaker == "病人" else "assistant", "content": content.strip("\n")}
        for speaker, content in zip(parts[1::2], parts[2::2], strict=True)
    ]
    if messages[-1]["role"] == "assistant" and not messages[-1]["content"].strip():
        messages[-1]["content"] = target
    else:
        messages.append({"role": "assistant", "content": target})
    return messages


READERS.add(
    "bianque-csv",
    Reader(
        "bianque-csv",
        "BianQue CSV: input (病人：/医生： turns joined by a literal \\n), target",
        lambda p: p.csv_header is not None and {"input", "target"} <= {c.strip() for c in p.csv_header},
        _read_bianque_csv,
    ),
)


# ---------------------------------------------------------------------------------------------- CMB-Clin


def _convert_cmb_clin(raw: dict[str, Any]) -> Record:
    """A clinical case: the description opens the first question; each QA pair is one more turn."""
    pairs = raw.get("QA_pairs")
    if not isinstance(pairs, list) or not pairs:
        raise BadRecord("missing_field: QA_pairs")
    description = _text(raw.get("description"), "description")
    messages: list[Message] = []
    for number, pair in enumerate(pairs):
        if not isinstance(pair, dict):
            raise BadRecord("bad_field: QA_pairs items must be objects")
        question = _text(pair.get("question"), "question")
        if number == 0:
            question = f"{description}\n\n{question}"
        messages.append({"role": "user", "content": question})
        messages.append({"role": "assistant", "content": _text(pair.get("answer"), "answer")})
    return _conversation(messages, title=raw.get("title"))


READERS.add(
    "cmb-clin",
    Reader(
        "cmb-clin",
        "CMB-Clin cases: description + QA_pairs [{question, answer}]",
        lambda p: {"description", "QA_pairs"} <= _keys(p),
        _json_reader(_convert_cmb_clin),
    ),
)
