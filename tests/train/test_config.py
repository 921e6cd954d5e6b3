"""Training configs: official files load unchanged, ours load, and mistakes read as one clear line each."""

import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from wenzhen.errors import ConfigError
from wenzhen.train.commands import parse_override
from wenzhen.train.config import TrainConfig, load_train_config

HERE = Path(__file__).parent
REPO = HERE.parents[1]


@pytest.mark.parametrize(
    ("name", "method"), [("lora", "lora"), ("ptuning_v2", "ptuning_v2"), ("sft", "full")]
)
def test_official_configs_load_unchanged(name: str, method: str, caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.WARNING):
        config = load_train_config(HERE / "official_configs" / f"{name}.yaml")
    assert config.method_name == method
    assert config.max_length == 256 + 512 + 1
    assert config.training_args.eval_strategy == "steps"
    assert config.training_args.learning_rate == pytest.approx(3e-4)
    assert "evaluation_strategy is now called eval_strategy" in caplog.text


@pytest.mark.parametrize("name", ["lora", "ptuning_v2", "sft", "dpo", "orpo", "kto"])
def test_shipped_configs_load(name: str):
    config = load_train_config(REPO / "configs" / f"{name}.yaml")
    methods = {
        "lora": "lora",
        "ptuning_v2": "ptuning_v2",
        "sft": "full",
        "dpo": "lora",
        "orpo": "lora",
        "kto": "lora",
    }
    assert config.method_name == methods[name]
    assert config.objective == (name if name in ("dpo", "orpo", "kto") else "sft")
    assert config.truncation == "keep_eos"


def test_every_shipped_training_config_is_covered():
    shipped = {path.stem for path in (REPO / "configs").glob("*.yaml")} - {"data", "demo"}
    assert shipped == {"lora", "ptuning_v2", "sft", "dpo", "orpo", "kto"}


def test_preference_settings_are_checked_against_the_method():
    base = {"max_input_length": 8, "max_output_length": 8}
    with pytest.raises(ValidationError, match="preference settings apply to method dpo, orpo or kto"):
        TrainConfig.model_validate({**base, "preference": {"beta": 0.2}})
    with pytest.raises(ValidationError, match="trains LoRA or full weights"):
        TrainConfig.model_validate({**base, "method": "dpo", "peft_config": {"peft_type": "PREFIX_TUNING"}})
    with pytest.raises(ValidationError, match="beta"):
        TrainConfig.model_validate({**base, "method": "dpo", "preference": {"beta": 0}})
    full = TrainConfig.model_validate({**base, "method": "kto"})
    assert (full.method_name, full.objective) == ("full", "kto")
    qlora = TrainConfig.model_validate({**base, "method": "dpo", "preference": {"tuning": "qlora"}})
    assert qlora.method_name == "qlora"
    with pytest.raises(ValidationError, match=r"preference\.loss_type do not apply to method orpo"):
        TrainConfig.model_validate({**base, "method": "orpo", "preference": {"loss_type": "ipo"}})
    # A dumped config (run.json) carries every key at its default: that loads back.
    dumped = TrainConfig.model_validate({**base, "method": "orpo"}).model_dump(mode="json")
    assert TrainConfig.model_validate(dumped).objective == "orpo"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_unknown_key_names_its_path_and_the_likely_key(tmp_path: Path):
    path = write(
        tmp_path, "max_input_length: 8\nmax_output_length: 8\ntraining_args:\n  learning_rat: 1e-4\n"
    )
    with pytest.raises(
        ConfigError, match=r"training_args\.learning_rat: unknown key; did you mean 'learning_rate'"
    ):
        load_train_config(path)


def test_wrong_type_names_its_path(tmp_path: Path):
    path = write(tmp_path, "max_input_length: long\nmax_output_length: 8\n")
    with pytest.raises(ConfigError, match=r"max_input_length: .*integer.*'long'"):
        load_train_config(path)


def test_lora_key_under_prefix_tuning_is_refused(tmp_path: Path):
    path = write(
        tmp_path,
        "max_input_length: 8\nmax_output_length: 8\npeft_config:\n  peft_type: PREFIX_TUNING\n  r: 8\n",
    )
    with pytest.raises(ConfigError, match=r"peft_config: .*r do not apply to peft_type PREFIX_TUNING"):
        load_train_config(path)


def test_old_and_new_name_together_is_refused(tmp_path: Path):
    path = write(
        tmp_path,
        "max_input_length: 8\nmax_output_length: 8\ntraining_args:\n  evaluation_strategy: steps\n"
        "  eval_strategy: steps\n",
    )
    with pytest.raises(ConfigError, match="keep only 'eval_strategy'"):
        load_train_config(path)


def test_method_and_peft_type_must_agree():
    with pytest.raises(ValueError, match="method full trains every weight"):
        TrainConfig.model_validate(
            {
                "max_input_length": 8,
                "max_output_length": 8,
                "method": "full",
                "peft_config": {"peft_type": "LORA"},
            }
        )
    qlora = TrainConfig.model_validate(
        {
            "max_input_length": 8,
            "max_output_length": 8,
            "method": "qlora",
            "peft_config": {"peft_type": "lora"},
        }
    )
    assert qlora.method_name == "qlora"


def test_command_line_overrides_are_validated_too(tmp_path: Path):
    path = HERE / "official_configs" / "lora.yaml"
    config = load_train_config(path, {"training_args.max_steps": 5, "peft_config.r": 4})
    assert (
        config.training_args.max_steps == 5 and config.peft_config is not None and config.peft_config.r == 4
    )
    with pytest.raises(ConfigError, match=r"peft_config\.rr: unknown key; did you mean 'r'"):
        load_train_config(path, dict([parse_override("peft_config.rr=4")]))


@pytest.mark.parametrize("key", ["save_strategy", "eval_strategy", "logging_strategy"])
def test_yaml_no_is_the_strategy_no(tmp_path: Path, key: str):
    path = write(tmp_path, f"max_input_length: 8\nmax_output_length: 8\ntraining_args:\n  {key}: no\n")
    assert getattr(load_train_config(path).training_args, key) == "no"
    override = dict([parse_override(f"training_args.{key}=no")])
    config = load_train_config(write(tmp_path, "max_input_length: 8\nmax_output_length: 8\n"), override)
    assert getattr(config.training_args, key) == "no"
