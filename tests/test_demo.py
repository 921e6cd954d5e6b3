"""`wenzhen demo`: a shortened run end to end through the CLI, the shipped demo config, the output-folder rules."""

import json
from pathlib import Path

import pytest
import yaml

from wenzhen.cli import main
from wenzhen.config import load_yaml_config
from wenzhen.demo import REPORT_JSON, REPORT_MD, STEP_DIRS, DemoConfig, check_out_dir
from wenzhen.errors import WenzhenError
from wenzhen.io import atomic_directory

REPO = Path(__file__).resolve().parents[1]


def test_shipped_demo_config_is_the_builtin_default() -> None:
    assert load_yaml_config(DemoConfig, REPO / "configs" / "demo.yaml") == DemoConfig()


def test_a_folder_the_demo_did_not_make_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(WenzhenError, match="--force"):
        check_out_dir(tmp_path, force=False)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_an_earlier_demo_is_replaced(tmp_path: Path) -> None:
    with atomic_directory(tmp_path / "data") as step:  # a step folder as a wenzhen stage writes it
        (step / "train.jsonl").write_text("old")
    check_out_dir(tmp_path, force=False)
    assert not (tmp_path / "data").exists()


def test_a_step_folder_wenzhen_did_not_write_is_kept(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "old.txt").write_text("mine")
    with pytest.raises(WenzhenError, match="did not write"):
        check_out_dir(tmp_path, force=False)
    assert (tmp_path / "train" / "old.txt").read_text() == "mine"


@pytest.mark.slow
def test_shortened_demo_runs_every_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = DemoConfig().model_dump(mode="json", exclude_none=True)
    config["train"]["max_input_length"] = config["train"]["max_output_length"] = 48
    config["train"]["training_args"] |= {"max_steps": 3, "eval_steps": 2, "max_eval_samples": 2}
    # A budget spent after the first step: the demo must stop there rather than run all three.
    config["train_minutes"] = 1e-6
    config["eval_samples"] = 2
    config["eval"]["generation"]["max_new_tokens"] = 6
    config["answer"]["max_new_tokens"] = 6
    config_file = tmp_path / "demo.yaml"
    config_file.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    out = tmp_path / "demo"

    assert main(["demo", "--out", str(out), "--config", str(config_file)]) == 0

    printed = capsys.readouterr().out
    report = json.loads((out / REPORT_JSON).read_text(encoding="utf-8"))
    assert all((out / name).is_dir() for name in STEP_DIRS)
    assert report["training"]["steps"] == 1
    # The dev loss is measured before the first update (step 0) and once more where training stopped.
    metrics = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in metrics if "eval_loss" in row] == [0, 1]
    assert report["dev_loss_before"] > 0 and report["dev_loss_after"] > 0
    assert report["data"]["splits"]["test"] == 8
    assert set(report["eval_before"]) == set(report["eval_after"]) and report["eval_before"]
    assert all(Path(chart).is_file() for chart in report["charts"]) and report["charts"]
    assert (out / "merged" / "config.json").is_file()
    assert [item["question"] for item in report["answers"]] == config["questions"]
    assert f"wenzhen chat {out / 'merged'}" in printed
    assert (out / REPORT_MD).read_text(encoding="utf-8") in printed
