"""Command-line options generated from the config models: the flags users rely on still set the same keys, and
type, choices, help and default come from the fields."""

import argparse
from pathlib import Path

import pytest
from pydantic import Field

from wenzhen.cli import build_parser
from wenzhen.config import StrictModel
from wenzhen.config_options import ConfigOption, add_config_options, config_overrides, field_at
from wenzhen.data.commands import config_from_args
from wenzhen.errors import ConfigError
from wenzhen.train.commands import TRAIN_OPTIONS, overrides_from
from wenzhen.train.config import TrainConfig, load_train_config

REPO = Path(__file__).parents[1]
TRAIN = ["train", "DATA", "MODEL", "configs/lora.yaml"]


def train_overrides(*options: str) -> dict:
    return overrides_from(build_parser(TRAIN).parse_args([*TRAIN, *options]))


def test_the_documented_train_flags_set_the_same_keys_as_before():
    overrides = train_overrides(
        "--output-dir", "runs/a", "--method", "qlora", "--max-steps", "5", "--learning-rate", "1e-4",
        "--batch-size", "2", "--save-steps", "50", "--save-total-limit", "2", "--eval-steps", "10",
        "--fsdp", "full_shard auto_wrap", "--no-gradient-checkpointing", "--no-packing",
        "--truncation", "official", "--seed", "7", "--cpu",
    )  # fmt: skip
    assert overrides == {
        "training_args.output_dir": "runs/a",
        "method": "qlora",
        "training_args.max_steps": 5,
        "training_args.learning_rate": 1e-4,
        "training_args.per_device_train_batch_size": 2,
        "training_args.save_steps": 50,
        "training_args.save_total_limit": 2,
        "training_args.eval_steps": 10,
        "training_args.eval_strategy": "steps",
        "training_args.fsdp": "full_shard auto_wrap",
        "training_args.gradient_checkpointing": False,
        "packing": False,
        "truncation": "official",
        "training_args.seed": 7,
        "training_args.use_cpu": True,
    }
    assert train_overrides() == {}


def test_set_wins_over_an_option_and_a_deepspeed_path_is_made_absolute():
    overrides = train_overrides(
        "--max-steps", "5", "--set", "training_args.max_steps=9", "--deepspeed", "ds.json"
    )
    assert overrides["training_args.max_steps"] == 9
    assert overrides["training_args.deepspeed"] == str(Path("ds.json").resolve())


def test_mixed_types_are_read_as_yaml_and_validated_with_the_config():
    overrides = train_overrides("--row-tokens", "8192", "--compile", "false", "--fused-loss", "auto")
    config = load_train_config(REPO / "configs" / "lora.yaml", overrides)
    assert (config.performance.row_tokens, config.performance.compile) == (8192, False)
    with pytest.raises(ConfigError, match=r"performance\.row_tokens"):
        load_train_config(REPO / "configs" / "lora.yaml", train_overrides("--row-tokens", "banana"))


def test_choices_and_help_come_from_the_field():
    parser = build_parser(TRAIN)
    with pytest.raises(SystemExit):
        parser.parse_args([*TRAIN, "--truncation", "middle"])
    train = next(action for action in parser._subparsers._group_actions[0].choices.values())  # type: ignore[union-attr]
    texts = {
        action.option_strings[0]: action.help or "" for action in train._actions if action.option_strings
    }
    description = field_at(TrainConfig, "performance.step_tokens").description or ""
    assert (
        texts["--step-tokens"].startswith(description) and "performance.step_tokens" in texts["--step-tokens"]
    )
    assert "training_args.per_device_train_batch_size; default 8" in texts["--batch-size"]
    for option in TRAIN_OPTIONS:
        assert field_at(TrainConfig, option.key) is not None


class Example(StrictModel):
    flag: bool = Field(default=True, description="a switch")
    mode: str = "x"


def test_a_key_the_model_lacks_is_a_programming_error_at_parser_build():
    with pytest.raises(KeyError, match="no key missing"):
        add_config_options(argparse.ArgumentParser(), Example, [ConfigOption("missing")])


def test_booleans_get_both_spellings_and_only_given_options_override():
    parser = argparse.ArgumentParser()
    add_config_options(parser, Example, [ConfigOption("flag"), ConfigOption("mode")])
    assert config_overrides(parser.parse_args(["--no-flag"])) == {"flag": False}
    assert config_overrides(parser.parse_args([])) == {}


def test_data_prepare_options_lay_over_the_config(tmp_path):
    config_file = tmp_path / "data.yaml"
    config_file.write_text("split:\n  stratify: false\nseed: 1\n", encoding="utf-8")
    command = ["data", "prepare", "in.csv", "--out", "out", "--config", str(config_file)]
    args = build_parser(command).parse_args(
        [*command, "--dev", "40", "--test", "0.1", "--seed", "3", "--no-progress", "--format", "toyhom-csv"]
    )
    config = config_from_args(args)
    assert (config.split.dev, config.split.test, config.split.stratify) == (40, 0.1, False)
    assert (config.seed, config.progress, config.format) == (3, False, "toyhom-csv")
