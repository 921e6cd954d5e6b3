"""Reading eval files: every accepted layout, subsets, and clear errors for missing or malformed files."""

import json
from pathlib import Path

import pytest

from wenzhen.errors import WenzhenError
from wenzhen.evaluate.samples import load_samples, select


def _write(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


def test_conversation_layout_uses_the_last_answer_as_reference(tmp_path: Path) -> None:
    row = {
        "conversations": [
            {"role": "system", "content": "你是医生"},
            {"role": "user", "content": "头痛"},
            {"role": "assistant", "content": "多久了？"},
            {"role": "user", "content": "三天"},
            {"role": "assistant", "content": "建议就医"},
        ]
    }
    (sample,) = load_samples(_write(tmp_path / "test.jsonl", [row]))
    assert [m["role"] for m in sample.messages] == ["system", "user", "assistant", "user"]
    assert sample.reference == "建议就医"


def test_alpaca_with_history_probe_spelling_and_case_layouts(tmp_path: Path) -> None:
    rows = [
        {
            "id": "j1",
            "instruction": "还要注意什么",
            "input": "",
            "output": "清淡饮食",
            "history": [["胃痛", "多久了"]],
        },
        {"instruct": "我听说喝醋能治病", "output": "没有科学依据"},
        {"id": 7, "medical_case": "咳嗽两周", "doctor_diagnosis": "支气管炎", "Department": "呼吸科"},
    ]
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    first, probe, case = load_samples(path)
    assert first.id == "j1" and [m["content"] for m in first.messages] == ["胃痛", "多久了", "还要注意什么"]
    assert (
        probe.messages == [{"role": "user", "content": "我听说喝醋能治病"}]
        and probe.reference == "没有科学依据"
    )
    assert case.id == "7" and case.reference == "支气管炎" and case.meta == {"department": "呼吸科"}


def test_subset_is_reproducible_and_in_file_order(tmp_path: Path) -> None:
    rows = [{"instruction": f"问题{i}", "output": f"答{i}"} for i in range(20)]
    samples = load_samples(_write(tmp_path / "t.jsonl", rows))
    chosen, description = select(samples, 5, seed=3)
    again, _ = select(samples, 5, seed=3)
    assert [s.id for s in chosen] == [s.id for s in again]
    assert [int(s.id) for s in chosen] == sorted(int(s.id) for s in chosen)
    assert description == "random 5 with seed 3"
    assert select(samples, None, 0) == (samples, "all")


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (None, "absent.jsonl", "does not exist"),
        ('{"instruction": "a", "output": "b"}\n{not json\n', "bad.jsonl", "bad.jsonl:2 is not valid JSON"),
        ("[1, 2", "bad.json", "is not valid UTF-8 JSON"),
        ('{"a": 1}', "object.json", "holds a JSON dict, not an array"),
        ("", "empty.jsonl", "has no records"),
        ('{"question": "x"}\n', "keys.jsonl", "none of the accepted layouts"),
        (
            '{"conversations": [{"role": "user", "content": "x"}]}\n',
            "noanswer.jsonl",
            "has no assistant turn",
        ),
        ('{"instruction": "", "output": "b"}\n', "noprompt.jsonl", "has an empty prompt"),
    ],
)
def test_missing_or_malformed_files_are_clear_errors(
    tmp_path: Path, content: str | None, name: str, message: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(WenzhenError, match=message):
        load_samples(path)


def test_reads_the_shared_zhongjing_and_huatuo_files(shared_dir: Path) -> None:
    zhongjing = load_samples(shared_dir / "data/zhongjing-eval/CMtMedQA_test.json")
    assert len(zhongjing) == 1144
    assert all(s.reference for s in zhongjing)
    huatuo = load_samples(shared_dir / "data/huatuogpt-eval/Med-dialog_100.json")
    assert len(huatuo) == 100 and all(s.reference for s in huatuo)
