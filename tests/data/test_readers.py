"""Readers over every raw training corpus in ../shared/data, checking the dirt each SOURCE.md describes."""

import json
from collections import Counter
from pathlib import Path

import pytest

from wenzhen.data import read_records, sample_corpus_paths, textio
from wenzhen.data.readers import choose_reader
from wenzhen.errors import WenzhenError


@pytest.fixture(scope="module")
def data(shared_dir: Path) -> Path:
    return shared_dir / "data"


def records(path: Path, format_name: str | None = None) -> list:
    return list(read_records(path, format_name))


def test_toyhom_csv_is_gb18030_and_keeps_quoted_commas_and_newlines(data: Path) -> None:
    path = data / "toyhom-chinese-medical-dialogue" / "样例_内科5000-6000.csv"
    reader, encoding = choose_reader(path)
    assert (reader.name, encoding) == ("toyhom-csv", "gb18030")
    rows = records(path)
    assert len(rows) == 7644 and not [r for r in rows if r.error]
    assert Counter(r.department for r in rows)["肝病科"] == 3121
    by_title = {r.title: r for r in rows}
    quoted = by_title["较好的肝病医院在哪里?"]
    assert quoted.messages[0]["content"] == "我是一位十多年肝病患者,您好最好的肝病医院在哪里?"
    assert '"乙肝两对半","肝功能"' in quoted.messages[1]["content"]
    multiline = by_title["本人经常性口渴，总要靠经常喝水解决，尿也多。"]
    assert (
        multiline.messages[0]["content"]
        == "患者男，58岁，以前身体状况良好。\n此病情；\n口渴，老是想喝水\n尿多，晚上起床次数特别多"
    )
    # Line numbers point at the row's first physical line (header is line 1).
    assert rows[0].line == 2


def test_toyhom_txt_blocks(data: Path) -> None:
    rows = records(data / "toyhom-chinese-medical-dialogue" / "内科.txt")
    assert len(rows) == 4048 and not [r for r in rows if r.error]
    assert rows[0].department == "内科"
    assert rows[0].title == "高血压患者能吃党参吗？"
    assert rows[0].messages[0]["content"].startswith("我有高血压这两天")


def test_huatuo_json_lines_named_json_and_flattened_turns(data: Path) -> None:
    llama = records(data / "huatuo-llama-med-chinese" / "llama_data.json")
    assert len(llama) == 8658 and all(len(r.messages) == 2 for r in llama)
    liver_path = data / "huatuo-llama-med-chinese" / "liver_cancer.json"
    raw = json.loads(liver_path.read_text(encoding="utf-8"))
    liver = records(liver_path)
    assert len(liver) == 1000 and not [r for r in liver if r.error]
    for item, record in zip(raw, liver, strict=True):
        users = [m for m in record.messages if m["role"] == "user"]
        assert len(users) == item["instruction"].count("<user>")
        assert not any("<user>" in m["content"] or "<bot>" in m["content"] for m in record.messages)
        assert record.messages[-1] == {"role": "assistant", "content": item["output"]}


def test_medicalgpt_sharegpt_and_chinese_key_qa(data: Path) -> None:
    sharegpt = records(data / "medicalgpt-medical-sample" / "medical_sft_1K_format.jsonl")
    assert len(sharegpt) == 1000 and [m["role"] for m in sharegpt[0].messages] == ["user", "assistant"]
    corpus = records(data / "medicalgpt-medical-sample" / "medical_corpus.txt")
    assert choose_reader(data / "medicalgpt-medical-sample" / "medical_corpus.txt")[0].name == "qa-json"
    assert len(corpus) == 87 and corpus[0].messages[1]["content"] == "食管克罗恩病"


def test_disc_raw_anwser_and_conversations(data: Path) -> None:
    cmd = records(data / "disc-med-sft-sample" / "cmd_samples.json")
    assert len(cmd) == 120 and all(r.messages[1]["content"] for r in cmd)
    assert Counter(r.department for r in cmd) == dict.fromkeys(
        ["儿科", "内科", "外科", "妇产科", "男科", "肿瘤科"], 20
    )
    conversations = records(data / "disc-med-sft-sample" / "test_examples.jsonl")
    assert len(conversations) == 163
    assert sum(r.messages[-1]["role"] == "user" for r in conversations) == 3


def test_bianque_literal_backslash_n_becomes_turns(data: Path) -> None:
    rows = records(data / "bianque-cmedialog-example" / "cMedialog_example.csv")
    assert len(rows) == 128 and not [r for r in rows if r.error]
    for row in rows:
        assert not any("\\n" in m["content"] for m in row.messages)
        assert row.messages[0]["role"] == "user" and row.messages[-1]["role"] == "assistant"
        assert row.messages[-1]["content"] == row.raw["target"]


def test_cmb_clin_cases_become_multi_turn(data: Path) -> None:
    cases = records(data / "cmb-clin" / "CMB-test-qa.json")
    assert len(cases) == 74
    assert sum(m["role"] == "assistant" for r in cases for m in r.messages) == 208
    assert cases[0].messages[0]["content"].startswith("现病史")


def test_zhongjing_history_and_instruct_probes(data: Path) -> None:
    rows = records(data / "zhongjing-eval" / "CMtMedQA_test.json")
    assert len(rows) == 1144 and not [r for r in rows if r.error]
    first = json.loads((data / "zhongjing-eval" / "CMtMedQA_test.json").read_text(encoding="utf-8"))[0]
    assert len(rows[0].messages) == 2 * len(first["history"]) + 2
    probes = rows[1000:]
    assert all(len(r.messages) == 2 and r.messages[0]["content"] for r in probes)
    assert rows[0].department == "肿瘤科"
    assert sum(r.department is None for r in rows[:1000]) == 1  # the 'nan' category


@pytest.mark.parametrize(
    "relative",
    [
        "cmmlu-medical/test/anatomy.csv",
        "huatuogpt-eval/Med-dialog_100.json",
        "huatuogpt-eval/KUAKE-QIC_100.json",
    ],
)
def test_exam_and_eval_sets_are_refused(data: Path, relative: str) -> None:
    with pytest.raises(WenzhenError, match="not training data"):
        choose_reader(data / relative)


def test_unknown_and_binary_files_name_the_file_and_first_bytes(tmp_path: Path) -> None:
    binary = tmp_path / "image.png"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(WenzhenError, match=r"image\.png.*\\x89PNG"):
        choose_reader(binary)
    unknown = tmp_path / "notes.json"
    unknown.write_text('[{"foo": 1}]', encoding="utf-8")
    with pytest.raises(WenzhenError, match=r"notes\.json.*'foo'"):
        choose_reader(unknown)
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"a,b\n" + bytes(range(0x80, 0x100)) * 50)
    with pytest.raises(WenzhenError, match="encoding"):
        choose_reader(latin)


def test_malformed_json_lines_are_records_with_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "chat.jsonl"
    good = json.dumps({"instruction": "头痛怎么办", "output": "注意休息"}, ensure_ascii=False)
    path.write_text(f"{good}\n{{broken\n\n[1, 2]\n{good}\n", encoding="utf-8")
    rows = records(path)
    assert [(r.line, r.error and r.error.split(":")[0]) for r in rows] == [
        (1, None), (2, "malformed_json"), (4, "not_an_object"), (5, None)
    ]  # fmt: skip


def test_json_array_streams_across_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(textio, "JSON_CHUNK", 64)
    items = [{"question": f"问题{i}，" * (i % 7 + 1), "answer": "回答\n" * i} for i in range(40)]
    path = tmp_path / "qa.json"
    path.write_text(json.dumps(items, ensure_ascii=False, indent=2), encoding="utf-8")
    rows = records(path)
    assert [r.raw for r in rows] == items
    assert rows[1].line == json.dumps(items, ensure_ascii=False, indent=2).splitlines().index("  {", 2) + 1


def test_truncated_json_array_rejects_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "cut.json"
    path.write_text('[{"question": "a", "answer": "b"}, {"question": "c", "ans', encoding="utf-8")
    rows = records(path)
    assert rows[0].error is None and rows[1].error is not None and rows[1].error.startswith("malformed_json")


def test_utf8_bom_csv(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes('department,title,ask,answer\n内科,头痛,"头痛,发热",多休息\n'.encode("utf-8-sig"))
    assert choose_reader(path)[1] == "utf-8-sig"
    assert records(path)[0].messages[0]["content"] == "头痛,发热"


def test_sample_corpus_has_two_raw_formats() -> None:
    formats = {choose_reader(path)[0].name for path in sample_corpus_paths()}
    assert formats == {"toyhom-csv", "sharegpt"}
    assert sum(len(records(path)) for path in sample_corpus_paths()) >= 60
