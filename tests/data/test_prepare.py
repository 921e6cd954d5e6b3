"""End to end through the CLI: invariant, splits, rejects, determinism, atomic output, shipped config."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from wenzhen.cli import main
from wenzhen.config import load_yaml_config
from wenzhen.data import DataConfig, prepare, sample_corpus_paths
from wenzhen.errors import WenzhenError
from wenzhen.io import OUTPUT_RECORD

REPO = Path(__file__).resolve().parents[2]
TRAINING_CORPORA = [
    "toyhom-chinese-medical-dialogue",
    "huatuo-llama-med-chinese",
    "medicalgpt-medical-sample",
    "disc-med-sft-sample",
    "bianque-cmedialog-example",
    "cmb-clin",
    "zhongjing-eval",
]


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def check_outputs(out: Path) -> dict:
    """The invariant, the official format, and one split per question."""
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["read"] == report["kept"] + report["duplicates"] + report["rejected"]
    assert sum(report["rejected_by_reason"].values()) == report["rejected"]
    rejects = read_lines(out / "rejects.jsonl")
    assert len(rejects) == report["rejected"]
    assert all({"source", "line", "reason", "raw"} <= set(r) for r in rejects)
    questions: dict[tuple, str] = {}
    for split in ("train", "dev", "test"):
        rows = read_lines(out / f"{split}.jsonl")
        assert len(rows) == report["splits"][split]
        for row in rows:
            turns = row["conversations"]
            assert {t["role"] for t in turns} <= {"system", "user", "assistant"} and turns[-1][
                "role"
            ] == "assistant"
            key = tuple(t["content"] for t in turns if t["role"] == "user")
            assert questions.setdefault(key, split) == split, f"question in two splits: {key[0][:30]}"
    assert sum(report["splits"].values()) == report["kept"]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != OUTPUT_RECORD]
    return report


@pytest.mark.slow
def test_every_training_corpus_end_to_end(shared_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    inputs = [str(shared_dir / "data" / name) for name in TRAINING_CORPORA]
    assert main(["data", "prepare", *inputs, "--out", str(out), "--no-progress"]) == 0
    report = check_outputs(out)
    by_input = {Path(i["path"]).name: i for i in report["inputs"]}
    assert by_input["样例_内科5000-6000.csv"]["read"] == 7644
    assert by_input["CMtMedQA_test.json"]["read"] == 1144 and by_input["cmd_samples.json"]["kept"] == 120
    # DISC's three conversations ending on a user turn are trimmed (the default rule), not lost; one opens with '无'.
    assert by_input["test_examples.jsonl"]["kept"] == 162 and report["cleaning"]["ending.trimmed"] >= 3
    rejects = read_lines(out / "rejects.jsonl")
    assert [r["reason"] for r in rejects if r["source"].endswith("test_examples.jsonl")] == [
        "placeholder_question"
    ]


def test_toyhom_counts_and_rejects(shared_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "toyhom"
    source = shared_dir / "data" / "toyhom-chinese-medical-dialogue" / "样例_内科5000-6000.csv"
    report = prepare([source], out, DataConfig(progress=False))
    check_outputs(out)
    assert report["read"] == 7644
    assert report["duplicates"] >= 378  # the exact duplicate rows, plus rows equal after cleaning
    assert report["cleaning"]["placeholders.replaced_by_title"] == 6  # the six '无' questions
    assert report["cleaning"]["ads.removed"] >= 10
    kept_text = (out / "train.jsonl").read_text(encoding="utf-8") + (out / "dev.jsonl").read_text(
        encoding="utf-8"
    )
    kept_text += (out / "test.jsonl").read_text(encoding="utf-8")
    assert "点击我实施在线交流" not in kept_text
    assert '\\"乙肝两对半\\",\\"肝功能\\"' in kept_text  # a quoted field with commas survived intact
    assert set(report["departments"]) == {"肝病科", "消化科", "神经科", "心血管科", "内分泌科", "呼吸科", "肾内科",
                                          "感染科", "血液科", "普通内科", "风湿免疫科"}  # fmt: skip


def test_disc_ending_rule_drop(shared_dir: Path, tmp_path: Path) -> None:
    config = DataConfig(progress=False, cleaning={"ending": "drop"})
    report = prepare(
        [shared_dir / "data" / "disc-med-sft-sample" / "test_examples.jsonl"], tmp_path / "o", config
    )
    assert report["rejected_by_reason"] == {"ends_on_user_turn": 3, "placeholder_question": 1}


def test_sample_corpus_is_deterministic_and_counts_splits(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    report = prepare(sample_corpus_paths(), first, DataConfig(progress=False, split={"dev": 5, "test": 5}))
    prepare(sample_corpus_paths(), second, DataConfig(progress=False, split={"dev": 5, "test": 5}))
    check_outputs(first)
    for name in ("train.jsonl", "dev.jsonl", "test.jsonl", "rejects.jsonl"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    assert report["splits"]["dev"] == 5 and report["splits"]["test"] == 5
    assert report["duplicates"] == 1 and report["cleaning"]["mask_pii.phone"] == 1
    duplicate = read_lines(first / "duplicates.jsonl")
    assert len(duplicate) == 1 and duplicate[0]["raw"]["title"] == "脸上长痘痘怎么办"
    other = prepare(sample_corpus_paths(), tmp_path / "c", DataConfig(progress=False, seed=7))
    assert (tmp_path / "c" / "dev.jsonl").read_bytes() != (first / "dev.jsonl").read_bytes() or other[
        "kept"
    ] < 20


def test_system_prompt_and_length_limits(tmp_path: Path) -> None:
    config = DataConfig(progress=False, system_prompt="你是医生。", length={"max_assistant": 100})
    report = prepare(sample_corpus_paths(), tmp_path / "o", config)
    check_outputs(tmp_path / "o")
    first = read_lines(tmp_path / "o" / "train.jsonl")[0]["conversations"][0]
    assert first == {"role": "system", "content": "你是医生。"}
    assert report["rejected_by_reason"]["too_long_answer"] > 0
    assert all(r["reason"] == "too_long_answer" for r in read_lines(tmp_path / "o" / "rejects.jsonl"))


def test_token_lengths_with_the_chatglm3_tokenizer(chatglm3_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    code = main(["data", "prepare", *map(str, sample_corpus_paths()), "--out", str(out), "--no-progress",
                 "--tokenizer", str(chatglm3_dir / "tiny-chatglm3")])  # fmt: skip
    assert code == 0
    length = json.loads((out / "report.json").read_text(encoding="utf-8"))["length"]
    assert length["unit"] == "tokens" and length["counter"].startswith("sentencepiece (verified")
    chars = prepare(sample_corpus_paths(), tmp_path / "c", DataConfig(progress=False))["length"]
    assert 0 < length["assistant"]["p50"] < chars["assistant"]["p50"]


def _prepare(inputs: list[Path], out: Path, *extra: str) -> int:
    return main(["data", "prepare", *map(str, inputs), "--out", str(out), "--no-progress", *extra])


def test_existing_output_needs_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o"
    assert _prepare(sample_corpus_paths(), out) == 0
    first = (out / "train.jsonl").read_bytes()
    assert _prepare(sample_corpus_paths(), out) == 2
    assert "--force" in capsys.readouterr().err
    # An earlier output holding only what wenzhen wrote (its output record says what) is replaced.
    assert _prepare(sample_corpus_paths(), out, "--force") == 0
    assert (out / "train.jsonl").read_bytes() == first
    assert "train.jsonl" in json.loads((out / OUTPUT_RECORD).read_text())["files"]


def test_force_never_deletes_files_wenzhen_did_not_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: --force replaced any folder, the user's own files included.
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep me")
    assert _prepare(sample_corpus_paths(), foreign, "--force") == 2
    assert "not written by wenzhen" in capsys.readouterr().err
    assert (foreign / "mine.txt").read_text() == "keep me"
    out = tmp_path / "o"
    assert _prepare(sample_corpus_paths(), out) == 0
    (out / "analysis.ipynb").write_text("the user's work")
    assert _prepare(sample_corpus_paths(), out, "--force") == 2
    assert "analysis.ipynb" in capsys.readouterr().err
    assert (out / "analysis.ipynb").read_text() == "the user's work"


@pytest.mark.parametrize("where", ["the input folder", "its parent", "inside it"])
def test_output_overlapping_an_input_is_refused(
    where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: `--out corpus --force` (or its parent) exited 0 and deleted the corpus and its neighbours.
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for path in sample_corpus_paths():
        (corpus / path.name).write_bytes(path.read_bytes())
    (tmp_path / "unrelated.txt").write_text("a neighbour")
    out = {"the input folder": corpus, "its parent": tmp_path, "inside it": corpus / "prepared"}[where]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert _prepare([corpus], out, "--force") == 2
    assert "input" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_a_line_too_deeply_nested_to_parse_is_a_reject(tmp_path: Path) -> None:
    # Before: RecursionError aborted the whole run with a traceback.
    lines = sample_corpus_paths()[1].read_text(encoding="utf-8").splitlines(keepends=True)
    deep = '{"conversations": ' + "[" * 100_000 + "]" * 100_000 + "}\n"
    source = tmp_path / "c.jsonl"
    source.write_text(lines[0] + deep + "".join(lines[1:]), encoding="utf-8")
    report = prepare([source], tmp_path / "o", DataConfig(progress=False))
    assert report["rejected_by_reason"].get("malformed_json") == 1
    reject = read_lines(tmp_path / "o" / "rejects.jsonl")[0]
    assert reject["line"] == 2 and "nested too deeply" in reject["detail"]


def test_an_unwritable_output_is_one_sentence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert _prepare(sample_corpus_paths(), blocker / "o") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write the output") and "Traceback" not in err


def test_a_file_size_limit_is_one_sentence(tmp_path: Path) -> None:
    # Before: a traceback (OSError: [Errno 27] File too large). The limit applies to the child process only.
    script = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "from wenzhen.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    paths = [str(p) for p in sample_corpus_paths()]
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            "data",
            "prepare",
            *paths,
            "--out",
            str(tmp_path / "o"),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "File too large" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "o").exists()


def test_interrupted_run_leaves_no_partial_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from wenzhen.data import cleaning

    calls = Counter[str]()
    original = cleaning.Cleaner.clean

    def interrupt_midway(self: cleaning.Cleaner, record: object) -> str | None:
        calls["n"] += 1
        if calls["n"] == 30:
            raise KeyboardInterrupt
        return original(self, record)  # type: ignore[arg-type]

    monkeypatch.setattr(cleaning.Cleaner, "clean", interrupt_midway)
    assert (
        main(
            [
                "data",
                "prepare",
                *map(str, sample_corpus_paths()),
                "--out",
                str(tmp_path / "o"),
                "--no-progress",
            ]
        )
        == 130
    )
    assert list(tmp_path.iterdir()) == []


def test_unknown_file_stops_before_any_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "data.json"
    bad.write_text('{"foo": "bar"}', encoding="utf-8")
    assert (
        main(["data", "prepare", *map(str, sample_corpus_paths()), str(bad), "--out", str(tmp_path / "o")])
        == 2
    )
    assert "data.json" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_too_many_dev_examples_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(WenzhenError, match="exceed"):
        prepare(
            sample_corpus_paths(), tmp_path / "o", DataConfig(progress=False, split={"dev": 60, "test": 60})
        )
    assert not (tmp_path / "o").exists()


def test_shipped_config_loads_and_runs(tmp_path: Path) -> None:
    config = load_yaml_config(DataConfig, REPO / "configs" / "data.yaml")
    assert config.cleaning.ads.patterns == ["本院专家团队"] and config.system_prompt
    config.progress = False
    report = prepare(sample_corpus_paths(), tmp_path / "o", config)
    assert report["kept"] > 60


def test_config_typos_are_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("cleaning:\n  strip_htm: true\n", encoding="utf-8")
    assert (
        main(
            [
                "data",
                "prepare",
                *map(str, sample_corpus_paths()),
                "--out",
                str(tmp_path / "o"),
                "--config",
                str(path),
            ]
        )
        == 2
    )


def test_help_explains_itself(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["data", "prepare", "--help"])
    text = capsys.readouterr().out
    assert "rejects.jsonl" in text and "toyhom-csv" in text and "--force" in text


def test_a_bad_byte_rejects_one_record(tmp_path: Path) -> None:
    source = tmp_path / "dirty.csv"
    good = "内科,头痛怎么办,最近总是头痛,注意休息，必要时就医。\n".encode("gb18030")
    bad = "内科,发热,发热两天".encode("gb18030") + b"\xff\xff" + ",多喝水。\n".encode("gb18030")
    source.write_bytes(
        "department,title,ask,answer\n".encode("gb18030")
        + good
        + bad
        + good.replace("头痛".encode("gb18030"), "咳嗽".encode("gb18030"))
    )
    report = prepare([source], tmp_path / "o", DataConfig(progress=False))
    assert (report["read"], report["kept"], report["rejected_by_reason"]) == (3, 2, {"undecodable_bytes": 1})
    reject = read_lines(tmp_path / "o" / "rejects.jsonl")[0]
    assert reject["line"] == 3 and "\\udcff" in (tmp_path / "o" / "rejects.jsonl").read_text(encoding="utf-8")
