"""Output folders: never overlapping an input, and --force replacing only what wenzhen itself wrote."""

import json
from pathlib import Path

import pytest

from wenzhen.cli import main
from wenzhen.errors import WenzhenError
from wenzhen.io import OUTPUT_RECORD, atomic_directory, check_apart


@pytest.mark.parametrize(
    ("out", "source"),
    [("a", "a"), ("a", "a/b"), ("a/b/c", "a/b"), ("a", "a/b/file.jsonl"), ("./a/../a", "a")],
)
def test_overlapping_outputs_are_refused(tmp_path: Path, out: str, source: str) -> None:
    with pytest.raises(WenzhenError, match="input"):
        check_apart(tmp_path / out, [tmp_path / source])


def test_neighbours_do_not_overlap(tmp_path: Path) -> None:
    check_apart(tmp_path / "ab", [tmp_path / "a", tmp_path / "abc", tmp_path / "b" / "a"])


def test_the_output_record_lists_what_was_written_and_force_replaces_only_that(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with atomic_directory(out) as staging:
        (staging / "sub").mkdir()
        (staging / "sub" / "x.json").write_text("{}")
        (staging / "y.txt").write_text("y")
    assert json.loads((out / OUTPUT_RECORD).read_text())["files"] == ["sub/x.json", "y.txt"]
    with atomic_directory(out, force=True) as staging:
        (staging / "z.txt").write_text("z")
    assert sorted(p.name for p in out.iterdir()) == [OUTPUT_RECORD, "z.txt"]
    (out / "sub").mkdir()
    (out / "sub" / "notes.md").write_text("mine")
    with pytest.raises(WenzhenError, match=r"sub/notes\.md"), atomic_directory(out, force=True):
        pass
    assert (out / "sub" / "notes.md").read_text() == "mine"


def test_eval_refuses_an_output_that_is_one_of_its_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: `eval compare A B --out A --force` replaced run A by the comparison.
    runs = [tmp_path / "a", tmp_path / "b"]
    for run in runs:
        run.mkdir()
        (run / "report.json").write_text("{}")
    assert main(["eval", "compare", *map(str, runs), "--out", str(runs[0]), "--force"]) == 2
    assert "input" in capsys.readouterr().err
    assert (runs[0] / "report.json").read_text() == "{}"
