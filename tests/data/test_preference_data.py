"""Preference formats through `wenzhen data prepare`: pairs and KTO answers, rejects with reasons, every row counted."""

import json
from pathlib import Path

import pytest

from wenzhen.data import prepare
from wenzhen.data.config import DataConfig
from wenzhen.data.readers import choose_reader
from wenzhen.io import read_jsonl

QUESTION = "孩子发烧三十八度半，精神还好，需要马上去医院吗？"
GOOD = "先物理降温，多喝水；超过三十九度或精神变差请及时就医。"
BAD = "没事，不用管。"


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def prepared(tmp_path: Path, source: Path) -> tuple[dict, list[dict]]:
    report = prepare([source], tmp_path / "out", DataConfig(progress=False, split={"dev": 0, "test": 0}))
    return report, read_jsonl(tmp_path / "out" / "train.jsonl")


def accounted(report: dict) -> bool:
    return report["read"] == report["kept"] + report["duplicates"] + report["rejected"]


def test_medicalgpt_pairs_keep_their_prompt_turns_and_both_answers(shared_dir: Path, tmp_path: Path) -> None:
    source = shared_dir / "data" / "medicalgpt-dpo-sample" / "dpo_zh_500.jsonl"
    assert choose_reader(source)[0].name == "preference-pairs"
    report = prepare([source], tmp_path / "out", DataConfig(progress=False))
    assert report["read"] == 500 and accounted(report)
    rows = [
        row for split in ("train", "dev", "test") for row in read_jsonl(tmp_path / "out" / f"{split}.jsonl")
    ]
    assert len(rows) == report["kept"] > 450
    assert all(set(row) == {"conversations", "chosen", "rejected"} for row in rows)
    assert all(
        row["conversations"][-1]["role"] == "user" and row["chosen"] != row["rejected"] for row in rows
    )
    # 84 of the 500 carry a system turn (SOURCE.md); it stays the first prompt turn.
    with_system = [row for row in rows if row["conversations"][0]["role"] == "system"]
    assert 70 < len(with_system) <= 84


@pytest.mark.parametrize(
    "row",
    [
        {"prompt": QUESTION, "chosen": GOOD, "rejected": BAD},
        {
            "prompt": [{"role": "user", "content": QUESTION}],
            "chosen": [{"role": "assistant", "content": GOOD}],
            "rejected": [{"role": "assistant", "content": BAD}],
        },
        {"conversations": [{"from": "human", "value": QUESTION}], "chosen": GOOD, "rejected": BAD},
        {"question": QUESTION, "response_chosen": GOOD, "response_rejected": BAD, "history": []},
    ],
    ids=["prompt-text", "trl-conversational", "sharegpt", "old-medicalgpt"],
)
def test_every_pair_layout_becomes_the_same_row(tmp_path: Path, row: dict) -> None:
    report, rows = prepared(tmp_path, write(tmp_path / "pairs.jsonl", [row]))
    assert report["inputs"][0]["format"] == "preference-pairs"
    assert rows == [
        {"conversations": [{"role": "user", "content": QUESTION}], "chosen": GOOD, "rejected": BAD}
    ]


def test_kto_answers_keep_their_label_and_bad_labels_are_rejected(tmp_path: Path) -> None:
    source = write(
        tmp_path / "kto.jsonl",
        [
            {"prompt": QUESTION, "completion": GOOD, "label": True},
            {"prompt": QUESTION + "？", "completion": BAD, "label": "false"},
            {"prompt": "头痛怎么办", "completion": BAD, "label": "maybe"},
        ],
    )
    report, rows = prepared(tmp_path, source)
    assert report["inputs"][0]["format"] == "kto" and accounted(report)
    assert [(row["completion"], row["label"]) for row in rows] == [(GOOD, True), (BAD, False)]
    assert report["rejected_by_reason"] == {"bad_field": 1}


def test_pairs_are_cleaned_on_both_sides_and_identical_or_broken_pairs_rejected(tmp_path: Path) -> None:
    source = write(
        tmp_path / "pairs.jsonl",
        [
            {"prompt": QUESTION, "chosen": GOOD, "rejected": "请拨打13812345678咨询。" + BAD},
            {"prompt": "头痛怎么办", "chosen": GOOD, "rejected": GOOD},
            {"prompt": "咳嗽怎么办", "chosen": GOOD, "rejected": ""},
            {"conversations": [{"from": "gpt", "value": "你好"}], "chosen": GOOD, "rejected": BAD},
            {"prompt": QUESTION, "chosen": GOOD, "rejected": "请拨打13812345678咨询。" + BAD},
        ],
    )
    report, rows = prepared(tmp_path, source)
    assert accounted(report) and report["kept"] == 1 and report["duplicates"] == 1
    assert "13812345678" not in rows[0]["rejected"] and "[电话]" in rows[0]["rejected"]
    assert report["rejected_by_reason"] == {"identical_pair": 1, "empty_rejected": 1, "bad_prompt": 1}
    reasons = [row["reason"] for row in read_jsonl(tmp_path / "out" / "rejects.jsonl")]
    assert sorted(reasons) == ["bad_prompt", "empty_rejected", "identical_pair"]
