"""docs/config-reference.md is generated from the config models and must match them."""

from pathlib import Path

from wenzhen.config_reference import render, rows
from wenzhen.demo import DemoConfig
from wenzhen.train.config import TrainConfig

PAGE = Path(__file__).resolve().parents[1] / "docs" / "config-reference.md"


def test_committed_page_is_current() -> None:
    assert PAGE.read_text(encoding="utf-8") == render(), (
        "docs/config-reference.md is stale: run `python -m wenzhen.config_reference > docs/config-reference.md`"
    )


def test_nested_keys_are_dotted_and_required_keys_marked() -> None:
    table = {row[0]: row for row in rows(TrainConfig)}
    assert table["training_args.learning_rate"][1] == "float"
    assert table["max_input_length"][2] == "**required**"


def test_a_section_holding_a_documented_config_lists_only_its_changes() -> None:
    table = {row[0]: row for row in rows(DemoConfig)}
    assert table["data"][2] == '{"split": {"dev": 6, "test": 8}}'
    assert not any(key.startswith("data.") for key in table)
