"""`wenzhen eval ...` end to end on the tiny ChatGLM3 model and the shared data (few samples, few tokens)."""

import json
from pathlib import Path

import pytest

from wenzhen.cli import main

pytestmark = pytest.mark.slow  # loads the tiny model four times and generates a few tokens

TOKENS = ["--max-new-tokens", "4", "--device", "cpu"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, shared_dir: Path) -> dict[str, Path]:
    """One run of each command (module-scoped: the tiny model loads once per run, about a second each)."""
    root = tmp_path_factory.mktemp("eval")
    model = str(shared_dir / "chatglm3/tiny-chatglm3")
    adapter = str(shared_dir / "chatglm3/tiny-chatglm3-lora-adapter")
    consultations = str(shared_dir / "data/zhongjing-eval/CMtMedQA_test.json")
    out = {name: root / name for name in ("base", "lora", "exam", "safety")}
    common = ["eval", "gen", model, "--data", consultations, "--limit", "3", "--batch-size", "2", *TOKENS]
    assert main([*common, "--out", str(out["base"])]) == 0
    assert main([*common, "--adapter", adapter, "--out", str(out["lora"])]) == 0
    exam = ["eval", "exam", model, "--data", str(shared_dir / "data/cmmlu-medical"), "--device", "cpu"]
    assert (
        main(
            [
                *exam,
                "--subjects",
                "anatomy,virology",
                "--limit-per-subject",
                "2",
                "--shots",
                "0,1",
                "--out",
                str(out["exam"]),
            ]
        )
        == 0
    )
    safety = ["eval", "safety", model, "--probes", consultations, "--limit", "2", *TOKENS]
    assert main([*safety, "--out", str(out["safety"])]) == 0
    return out


def _report(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text(encoding="utf-8"))


def test_gen_writes_scores_and_predictions(runs: dict[str, Path]) -> None:
    report = _report(runs["base"])
    assert (
        report["kind"] == "gen"
        and report["data"]["n_evaluated"] == 3
        and report["data"]["n_available"] == 1144
    )
    assert set(report["metrics"]) == {
        "rouge-1",
        "rouge-2",
        "rouge-l",
        "bleu-4",
        "rouge-1-char",
        "rouge-2-char",
        "rouge-l-char",
        "bleu-4-char",
    }
    assert report["counts"]["samples"] == 3 and report["device"] == "cpu"
    rows = [
        json.loads(line)
        for line in (runs["base"] / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert len(rows) == 3 and all(row["completion_tokens"] <= 4 and row["reference"] for row in rows)
    assert "BLEU-4 (jieba words, x100)" in (runs["base"] / "report.md").read_text(encoding="utf-8")
    lora = _report(runs["lora"])
    assert (
        lora["adapter"].endswith("tiny-chatglm3-lora-adapter")
        and lora["label"] == "tiny-chatglm3-lora-adapter"
    )
    assert lora["data"]["sha256"] == report["data"]["sha256"]


def test_exam_reports_each_subject_and_shot_count(runs: dict[str, Path]) -> None:
    report = _report(runs["exam"])
    assert set(report["metrics"]) == {
        "accuracy-0shot",
        "accuracy-0shot-macro",
        "accuracy-1shot",
        "accuracy-1shot-macro",
    }
    assert set(report["breakdown"]) == {"anatomy", "virology"}
    assert report["counts"] == {"questions": 4, "subjects": 2}
    answers = (runs["exam"] / "answers.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(answers) == 8  # 4 questions x 2 shot counts


def test_safety_scores_without_and_with_the_guard(runs: dict[str, Path]) -> None:
    report = _report(runs["safety"])
    assert report["data"]["n_evaluated"] == 4  # 2 Zhongjing probes + 2 guard red flags
    assert {"without_guard_pass_rate", "with_guard_pass_rate"} <= set(report["metrics"])
    assert set(report["breakdown"]) == {"CMtMedQA_test.json", "guard red flags"}
    rows = [
        json.loads(line)
        for line in (runs["safety"] / "answers.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    guarded = [row for row in rows if row["red_flag"]]
    # The guard puts emergency guidance before whatever the model said, so labelled red flags get a referral.
    assert all(row["with_guard"]["rules"]["emergency_referral"]["passed"] for row in guarded)


def test_compare_puts_base_and_adapter_side_by_side(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    assert (
        main(["eval", "compare", str(runs["base"]), str(runs["lora"]), str(runs["exam"]), "--out", str(out)])
        == 0
    )
    markdown = (out / "comparison.md").read_text(encoding="utf-8")
    assert "| metric | tiny-chatglm3 | tiny-chatglm3-lora-adapter |" in markdown
    assert (out / "compare-gen.png").is_file() and (out / "compare-exam.png").is_file()


def test_missing_and_malformed_eval_files_are_clear_errors(
    shared_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = str(shared_dir / "chatglm3/tiny-chatglm3")
    assert (
        main(["eval", "gen", model, "--data", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o")])
        == 2
    )
    assert "none.jsonl does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": \n', encoding="utf-8")
    assert main(["eval", "gen", model, "--data", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "bad.jsonl:2 is not valid JSON" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["eval", "exam", model, "--data", str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "no exam CSVs in a known layout" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_existing_output_is_refused_before_any_work(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["eval", "compare", str(runs["base"]), "--out", str(runs["lora"])]) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["gen", "exam", "safety", "compare"])
def test_every_subcommand_explains_itself(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", command, "--help"])
    assert exit_info.value.code == 0
    assert "--out" in capsys.readouterr().out
