"""Low-level, streaming access to raw corpus files: encoding detection, CSV rows and JSON records with line numbers.

Everything here reads incrementally, so a corpus larger than memory streams through record by record.
"""

import codecs
import csv
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from wenzhen.errors import WenzhenError

HEAD_BYTES = 1 << 20
JSON_CHUNK = 1 << 20
# Undecodable bytes become lone surrogates (as with surrogateescape) so one bad byte rejects one record, not the
# run. The handler also counts them, so records need scanning for surrogates only once a decode error happened.
DECODE_ERRORS = "wenzhen-surrogateescape"
_DECODE_ERRORS_SEEN = [0]
_surrogateescape = codecs.lookup_error("surrogateescape")


def _count_and_escape(error: UnicodeError) -> tuple[str | bytes, int]:
    _DECODE_ERRORS_SEEN[0] += 1
    return _surrogateescape(error)


codecs.register_error(DECODE_ERRORS, _count_and_escape)


def undecodable_seen() -> bool:
    """Whether any input decoded so far (in this process) had bytes its encoding could not decode."""
    return _DECODE_ERRORS_SEEN[0] > 0


_UNDECODABLE = re.compile("[\udc80-\udcff]")
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def detect_encoding(path: Path) -> str:
    """The text encoding of `path`: UTF-8 (with or without BOM) or GB18030, judged on the first megabyte.

    GB18030 is a superset of GBK and GB2312, so Toyhom's files (which strict GB2312 cannot read) decode fully. A
    few undecodable bytes (at most one in 10,000) are tolerated: those records are rejected, the rest are read.
    """
    with open(path, "rb") as handle:
        head = handle.read(HEAD_BYTES)
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    # Text corpora hold no NUL bytes; binaries and UTF-16 are full of them (one stray NUL is a record's problem).
    if head.count(b"\x00") > len(head) // 100 + 1:
        raise WenzhenError(f"{path} is a binary file, not a text corpus (first bytes: {head[:24]!r})")
    complete = len(head) < HEAD_BYTES
    bad_bytes = {encoding: _undecodable_bytes(head, encoding, complete) for encoding in ("utf-8", "gb18030")}
    encoding = min(bad_bytes, key=lambda name: bad_bytes[name])
    if bad_bytes[encoding] <= 2 + len(head) // 10_000:
        return encoding
    raise WenzhenError(
        f"{path}: cannot tell its text encoding (neither UTF-8 nor GB18030; first bytes: {head[:24]!r}); "
        "convert it to UTF-8"
    )


def _undecodable_bytes(head: bytes, encoding: str, complete: bool) -> int:
    text = codecs.getincrementaldecoder(encoding)("surrogateescape").decode(head, final=complete)
    return len(_UNDECODABLE.findall(text))


def open_text(path: Path, encoding: str) -> IO[str]:
    """Open `path` for streaming text reads; `newline=""` keeps CR/LF inside quoted CSV fields intact."""
    return open(path, encoding=encoding, errors=DECODE_ERRORS, newline="")


def read_head(path: Path, encoding: str, size: int = 64 * 1024) -> str:
    """The first `size` characters of the file."""
    with open_text(path, encoding) as handle:
        return handle.read(size)


def has_undecodable(text: str) -> bool:
    """True when `text` carries bytes the detected encoding could not decode (lone surrogates)."""
    return not text.isascii() and _UNDECODABLE.search(text) is not None


@dataclass(slots=True)
class JsonItem:
    """One JSON record, or the reason it could not be parsed (`value` is then the raw text)."""

    line: int
    value: Any
    error: str | None = None


def iter_csv_rows(path: Path, encoding: str) -> Iterator[tuple[int, list[str] | str, str | None]]:
    """(first line number, fields, None) per CSV row; (line, raw text, reason) where the row cannot be parsed."""
    with open_text(path, encoding) as handle:
        reader = csv.reader(handle)
        start = 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield start, f"<unparseable CSV row: {exc}>", "malformed_csv"
                start = reader.line_num + 1
                continue
            yield start, row, None
            start = reader.line_num + 1


def iter_json_records(path: Path, encoding: str) -> Iterator[JsonItem]:
    """Every record of a JSON array, a single JSON object, or a JSON Lines file (whatever the file is named)."""
    with open_text(path, encoding) as handle:
        head = handle.read(JSON_CHUNK)
        stripped = head.lstrip("\ufeff \t\r\n")
        if stripped.startswith("["):
            yield from _iter_json_array(handle, head)
        elif _first_line_is_json(stripped):
            yield from _iter_json_lines(handle, head)
        else:
            yield from _iter_json_array(handle, head, single=True)


# Python's parser stops at about a thousand levels of nesting; no corpus record is nested like that.
TOO_DEEP = "malformed_json: nested too deeply to parse"


def _first_line_is_json(text: str) -> bool:
    """Whether the first line is a complete JSON value, i.e. the file is JSON Lines."""
    first = text.split("\n", 1)[0].strip()
    try:
        json.loads(first)
    except RecursionError:
        return True  # valid up to a nesting depth no parser follows: a JSON line, rejected as such when read
    except json.JSONDecodeError:
        return False
    return True


def _iter_json_lines(handle: IO[str], head: str) -> Iterator[JsonItem]:
    """One JSON value per line; a bad line is reported with its number and the rest goes on."""
    pending = ""
    number = 0
    chunk = head
    while chunk:
        lines = (pending + chunk).split("\n")
        pending = lines.pop()
        for line in lines:
            number += 1
            yield from _json_line(number, line)
        chunk = handle.read(JSON_CHUNK)
    if pending:
        yield from _json_line(number + 1, pending)


def _json_line(number: int, line: str) -> Iterator[JsonItem]:
    text = line.strip()
    if not text:
        return
    try:
        yield JsonItem(number, json.loads(text))
    except json.JSONDecodeError as exc:
        yield JsonItem(number, line, f"malformed_json: {exc.msg}")
    except RecursionError:
        yield JsonItem(number, line, TOO_DEEP)


def _iter_json_array(handle: IO[str], head: str, single: bool = False) -> Iterator[JsonItem]:
    """Stream the elements of a top-level JSON array with `raw_decode`, reading more text only as needed.

    The standard library has no incremental JSON parser; this keeps memory at one chunk plus one record. A
    syntax error cannot be resynchronised, so the rest of the file becomes one rejected item naming its line.
    """
    decoder = json.JSONDecoder()
    buffer, pos, line, eof = head, 0, 1, False

    def fill() -> bool:
        nonlocal buffer, pos, eof
        more = handle.read(max(JSON_CHUNK, len(buffer)))
        eof = not more
        buffer = buffer[pos:] + more
        pos = 0
        return bool(more)

    def skip(chars: str) -> str:
        """Skip `chars`, reading on; return the next significant character or '' at the end."""
        nonlocal pos, line
        while True:
            while pos < len(buffer) and buffer[pos] in chars:
                line += buffer[pos] == "\n"
                pos += 1
            if pos < len(buffer):
                return buffer[pos]
            if eof or not fill():
                return ""

    skip("\ufeff \t\r\n")
    if not single:
        pos += 1  # the opening bracket
    while True:
        char = skip(" \t\r\n,") if not single else skip(" \t\r\n")
        if char in ("", "]"):
            return
        try:
            value, end = decoder.raw_decode(buffer, pos)
        except json.JSONDecodeError as exc:
            if not eof and fill():
                continue
            yield JsonItem(line, buffer[pos:], f"malformed_json: {exc.msg}")
            return
        except RecursionError:
            yield JsonItem(line, buffer[pos:], TOO_DEEP)
            return
        yield JsonItem(line, value)
        line += buffer.count("\n", pos, end)
        pos = end
        if single:
            if skip(" \t\r\n"):
                yield JsonItem(line, buffer[pos:], "malformed_json: extra data after the JSON value")
            return
        if pos > JSON_CHUNK:
            buffer, pos = buffer[pos:], 0
