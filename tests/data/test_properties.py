"""Property tests: generated CSV and JSON corpora (with commas, quotes, newlines, junk) never crash preparation,
and every record read is kept, a duplicate or rejected."""

import csv
import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wenzhen.data import DataConfig, prepare

TEXT = st.text(
    alphabet=st.sampled_from(list("头痛发热咳嗽无，。！？,\"'\n\r \t<>&;@0123456789１abc\u3000\u200b"))
    # NUL is left out: a file with more than a few NUL bytes is refused as binary by design (test_readers).
    | st.characters(exclude_categories=("Cs",), exclude_characters="\x00"),
    max_size=40,
)
PROPERTY_SETTINGS = settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def run(tmp_path: Path, source: Path, name: str) -> dict:
    out = tmp_path / name
    report = prepare([source], out, DataConfig(progress=False, split={"dev": 0.2, "test": 0.2}), force=True)
    assert report["read"] == report["kept"] + report["duplicates"] + report["rejected"]
    written = sum(
        1 for split in ("train", "dev", "test") for _ in (out / f"{split}.jsonl").open(encoding="utf-8")
    )
    assert written == report["kept"]
    assert sum(1 for _ in (out / "rejects.jsonl").open(encoding="utf-8")) == report["rejected"]
    return report


@PROPERTY_SETTINGS
@given(
    rows=st.lists(st.lists(TEXT, min_size=3, max_size=5), max_size=12),
    encoding=st.sampled_from(["utf-8", "gb18030"]),
)
def test_generated_toyhom_csv(tmp_path: Path, rows: list[list[str]], encoding: str) -> None:
    source = tmp_path / "corpus.csv"
    with open(source, "w", encoding=encoding, errors="replace", newline="") as handle:
        # Toyhom quotes what needs it and ends lines with LF; quoting every field keeps a bare CR inside its field.
        writer = csv.writer(handle, lineterminator="\n", quoting=csv.QUOTE_ALL)
        writer.writerow(["department", "title", "ask", "answer"])
        writer.writerows(rows)
    report = run(tmp_path, source, "csv")
    assert report["read"] == len(rows)


JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | TEXT, lambda inner: st.lists(inner, max_size=3), max_leaves=6
)
ALPACA = st.fixed_dictionaries(
    {"instruction": TEXT, "output": TEXT},
    optional={
        "input": TEXT,
        "history": st.lists(st.lists(TEXT, min_size=1, max_size=3), max_size=3),
        "system": TEXT,
    },
)
MESSAGES = st.fixed_dictionaries(
    {
        "messages": st.lists(
            st.fixed_dictionaries(
                {
                    "role": st.sampled_from(["user", "assistant", "system", "tool"]),
                    "content": TEXT | JSON_VALUE,
                }
            ),
            max_size=5,
        )
    }
)


@PROPERTY_SETTINGS
@given(
    first=ALPACA,
    records=st.lists(ALPACA | MESSAGES | JSON_VALUE, max_size=10),
    lines=st.booleans(),
    junk=st.sampled_from(["", "{broken", "]", "\x00"]),
)
def test_generated_json_corpora(tmp_path: Path, first: dict, records: list, lines: bool, junk: str) -> None:
    source = tmp_path / ("corpus.jsonl" if lines else "corpus.json")
    items = [first, *records]
    if lines:
        text = "\n".join(json.dumps(item, ensure_ascii=False) for item in items) + (
            f"\n{junk}" if junk else ""
        )
    else:
        text = json.dumps(items, ensure_ascii=False)
    source.write_text(text.replace("\x00", "\\u0000"), encoding="utf-8")
    report = run(tmp_path, source, "json")
    assert report["read"] == len(items) + (1 if lines and junk else 0)
