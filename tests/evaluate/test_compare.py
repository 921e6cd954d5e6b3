"""Side-by-side reports: tables, charts, sample counts, definitions, and refusing runs on different data."""

import json
from pathlib import Path

import pytest

from wenzhen.errors import WenzhenError
from wenzhen.evaluate.compare import COMPARISON_JSON, COMPARISON_MD, compare_runs
from wenzhen.evaluate.report import DataInfo, EvalReport, write_report


def _run(folder: Path, label: str, value: float, sha: str = "a" * 64, kind: str = "gen") -> Path:
    folder.mkdir()
    report = EvalReport(
        kind=kind,
        label=label,
        model="/models/base",
        adapter=None if label == "base" else f"/runs/{label}",
        data=DataInfo(path="test.jsonl", sha256=sha, n_available=100, n_evaluated=20, selection="all"),
        metrics={"rouge-1": value, "bleu-4": value / 2},
        metric_labels={"rouge-1": "ROUGE-1 (jieba words, x100)", "bleu-4": "BLEU-4 (jieba words, x100)"},
        metric_definitions={"rouge-1": "unigram F1", "bleu-4": "nltk method3"},
    )
    write_report(folder, report, "# run\n")
    return folder


def test_runs_side_by_side(tmp_path: Path) -> None:
    runs = [
        _run(tmp_path / "a", "base", 10.0),
        _run(tmp_path / "b", "lora", 30.0),
        _run(tmp_path / "c", "lora", 31.0),
    ]
    comparison = compare_runs(runs, tmp_path / "out")
    data = json.loads((tmp_path / "out" / COMPARISON_JSON).read_text(encoding="utf-8"))
    gen = data["kinds"]["gen"]
    assert gen["metrics"]["rouge-1"] == {"base": 10.0, "lora #2": 30.0, "lora #3": 31.0}
    assert gen["n_samples"] == {"base": 20, "lora #2": 20, "lora #3": 20}
    markdown = (tmp_path / "out" / COMPARISON_MD).read_text(encoding="utf-8")
    assert "| ROUGE-1 (jieba words, x100) | 10.00 | 30.00 | 31.00 |" in markdown
    assert "samples per run: base: 20" in markdown and "**bleu-4**: nltk method3" in markdown
    png = (tmp_path / "out" / "compare-gen.png").read_bytes()
    assert png.startswith(b"\x89PNG") and comparison.charts == ["compare-gen.png"]


def test_runs_on_different_data_are_refused_unless_allowed(tmp_path: Path) -> None:
    runs = [_run(tmp_path / "a", "base", 10.0), _run(tmp_path / "b", "lora", 30.0, sha="b" * 64)]
    with pytest.raises(WenzhenError, match=r"differ in data.*--allow-different-data"):
        compare_runs(runs, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written
    comparison = compare_runs(runs, tmp_path / "out", allow_different_data=True)
    assert "**Warning:** runs differ in data" in comparison.markdown


def test_kinds_are_compared_separately(tmp_path: Path) -> None:
    runs = [_run(tmp_path / "a", "base", 10.0), _run(tmp_path / "b", "base", 40.0, sha="c" * 64, kind="exam")]
    comparison = compare_runs(runs, tmp_path / "out")
    assert set(comparison.data["kinds"]) == {"gen", "exam"}
    assert comparison.charts == ["compare-gen.png", "compare-exam.png"]


def test_a_folder_without_report_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(WenzhenError, match=r"has no report\.json"):
        compare_runs([tmp_path / "empty"], tmp_path / "out")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "report.json").write_text("{}", encoding="utf-8")
    with pytest.raises(WenzhenError, match="is not a wenzhen eval report"):
        compare_runs([tmp_path / "broken"], tmp_path / "out")
