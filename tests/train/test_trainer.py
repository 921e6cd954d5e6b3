"""Training end to end on tiny models: each method trains, saves and reloads; the run leaves its reports."""

import json
import logging
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import TrainerCallback

from wenzhen.cli import main
from wenzhen.errors import WenzhenError
from wenzhen.models import load_model
from wenzhen.runinfo import read_run_info
from wenzhen.train.callbacks import read_metrics
from wenzhen.train.config import TrainConfig
from wenzhen.train.trainer import NonFiniteError, read_split, train

OFFICIAL = Path(__file__).parent / "official_configs"
PROMPT = [{"role": "user", "content": "孩子发烧三十八度半怎么办"}]


def config(out: Path, **changes: Any) -> TrainConfig:
    data: dict[str, Any] = {
        "max_input_length": 48,
        "max_output_length": 48,
        "training_args": {
            "output_dir": str(out),
            "max_steps": 4,
            "learning_rate": 1e-2,
            "per_device_train_batch_size": 4,
            "save_steps": 4,
            "logging_steps": 1,
            "eval_strategy": "steps",
            "eval_steps": 2,
        },
        "peft_config": {"peft_type": "LORA", "r": 4, "lora_alpha": 8},
    }
    for key, value in changes.items():
        section, _, name = key.rpartition("__")
        (data[section] if section else data)[name] = value
    return TrainConfig.model_validate(data)


def logits(model_dir: Path) -> torch.Tensor:
    loaded = load_model(model_dir, dtype="fp32", device="cpu")
    ids = loaded.family.encode_prompt(loaded.tokenizer, PROMPT)
    with torch.no_grad():
        return loaded.model(input_ids=torch.tensor([ids])).logits


def test_overfitting_sixteen_conversations_halves_the_loss_and_leaves_the_reports(
    data_dir: Path, tiny_llama_dir: Path, tmp_path: Path
):
    out = tmp_path / "run"
    result = train(
        data_dir,
        tiny_llama_dir,
        config(
            out,
            training_args__max_steps=40,
            training_args__learning_rate=1e-2,
            training_args__lr_scheduler_type="constant",
            training_args__save_steps=20,
            training_args__eval_steps=20,
            method="full",
            peft_config=None,
        ),
    )
    rows = read_metrics(out / "metrics.jsonl")
    losses = [row["loss"] for row in rows if "loss" in row]
    print(f"overfit: loss {losses[0]:.4f} -> {losses[-1]:.4f} ({losses[-1] / losses[0]:.2%})")
    assert losses[-1] <= losses[0] / 2
    assert [row["step"] for row in rows if "eval_loss" in row] == [20, 40]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 40 and summary["tokens"] > 0 and summary["trainable_parameters"] > 0
    assert summary["peak_memory_bytes"] > 0 and summary["packing"] is True
    png = (out / "training_curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (800, 600)
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    info = read_run_info(out)
    assert info is not None and info.chat_format == "hf" and info.base_model == str(tiny_llama_dir.resolve())
    assert info.config["training_args"]["max_steps"] == 40
    # Steady tokens/s (after warm-up, without evaluation) beside the wall time, in summary.json and run.json.
    assert summary["steady_tokens_per_second"] > 0 and summary["train_seconds"] > 0
    assert info.extra["speed"]["steady_tokens_per_second"] == summary["steady_tokens_per_second"]
    assert info.extra["performance_plan"]["row_tokens"] is None  # CPU: the recipe as written
    assert json.loads((out / "encoding.json").read_text())["train"]["kept"] == 16
    # Full fine-tuning saves a whole model that the one loader reads back like any model directory.
    assert torch.allclose(logits(result.final_dir), logits(out / "checkpoint-40"))
    assert not torch.allclose(logits(result.final_dir), logits(tiny_llama_dir))


@pytest.mark.parametrize(
    ("method", "peft_config"),
    [
        ("lora", {"peft_type": "LORA", "r": 4, "lora_alpha": 8}),
        ("ptuning_v2", {"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 4}),
    ],
)
def test_adapter_methods_train_save_and_reload(
    method: str, peft_config: dict, data_dir: Path, tiny_llama_dir: Path, tmp_path: Path
):
    out = tmp_path / method
    result = train(
        data_dir,
        tiny_llama_dir,
        config(
            out,
            method=method,
            peft_config=peft_config,
            training_args__gradient_checkpointing=method == "lora",
        ),
    )
    checkpoint = out / "checkpoint-4"
    assert sorted(path.name for path in checkpoint.glob("adapter_*")) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert not list(checkpoint.glob("model*.safetensors"))  # adapter only
    assert result.summary["packing"] is (method == "lora")
    # The adapter finds its base through run.json and changes the model's output.
    assert torch.allclose(logits(result.final_dir), logits(checkpoint))
    assert not torch.allclose(logits(result.final_dir), logits(tiny_llama_dir))


def test_official_lora_config_through_the_cli_on_tiny_chatglm3(
    chatglm3_dir: Path, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)  # the official output_dir is ./output
    model_dir = chatglm3_dir / "tiny-chatglm3"
    code = main(
        [
            "train",
            str(data_dir),
            str(model_dir),
            str(OFFICIAL / "lora.yaml"),
            "--max-steps",
            "2",
            "--save-steps",
            "2",
            "--set",
            "training_args.dataloader_num_workers=0",
            "--set",
            "training_args.generation_config.max_new_tokens=8",  # the tiny model's context is 512 tokens
            "--learning-rate",
            "0.05",
        ]
    )
    assert code == 0
    final = tmp_path / "output" / "final"
    config = json.loads((final / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["k_proj", "q_proj", "v_proj"] and config["r"] == 32
    assert read_run_info(tmp_path / "output").chat_format == "chatglm3"
    assert not torch.allclose(logits(final), logits(model_dir))


def test_no_dev_file_trains_without_evaluation(data_dir: Path, tiny_llama_dir: Path, tmp_path: Path):
    out = tmp_path / "run"
    cfg = config(
        out, training_args__max_steps=3, training_args__save_steps=1, training_args__save_total_limit=1
    )
    cfg.data_config.val_file = "missing.json"
    train(data_dir, tiny_llama_dir, cfg)
    assert not [row for row in read_metrics(out / "metrics.jsonl") if "eval_loss" in row]
    assert [path.name for path in out.glob("checkpoint-*")] == [
        "checkpoint-3"
    ]  # save_total_limit keeps the newest


class PoisonWeights(TrainerCallback):
    """Sets one weight to NaN after step 2, as an overflowing update would."""

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if state.global_step == 2:
            with torch.no_grad():
                next(p for p in model.parameters() if p.requires_grad).fill_(float("nan"))


def test_a_non_finite_loss_stops_the_run_naming_the_step_and_the_last_good_checkpoint(
    data_dir: Path, tiny_llama_dir: Path, tmp_path: Path
):
    out = tmp_path / "run"
    cfg = config(out, training_args__save_steps=2, training_args__eval_strategy="no")
    with pytest.raises(
        NonFiniteError, match=r"step 3: the loss is nan; the last good checkpoint is .*checkpoint-2"
    ):
        train(data_dir, tiny_llama_dir, cfg, callbacks=[PoisonWeights()])


def test_qlora_without_a_gpu_says_what_it_needs(data_dir: Path, tiny_llama_dir: Path, tmp_path: Path):
    cfg = config(tmp_path / "run", method="qlora")
    with pytest.raises(WenzhenError, match="QLoRA needs a CUDA GPU"):
        train(data_dir, tiny_llama_dir, cfg)


def test_missing_train_file_is_a_clear_error(tiny_llama_dir: Path, tmp_path: Path):
    (tmp_path / "data").mkdir()
    with pytest.raises(WenzhenError, match=r"train\.jsonl does not exist"):
        train(tmp_path / "data", tiny_llama_dir, config(tmp_path / "run"))


def test_an_output_dir_inside_the_data_or_model_dir_is_refused(tiny_llama_dir: Path, tmp_path: Path):
    with pytest.raises(WenzhenError, match="lies inside the input"):
        train(tmp_path, tiny_llama_dir, config(tmp_path / "run"))
    with pytest.raises(WenzhenError, match="is or contains the input"):
        train(tmp_path / "data", tiny_llama_dir, config(tiny_llama_dir))


def test_predict_with_generate_scores_dev_answers_even_when_they_are_empty(
    data_dir: Path, tiny_llama_dir: Path, tmp_path: Path
):
    out = tmp_path / "run"
    cfg = config(
        out,
        training_args__max_steps=2,
        training_args__save_steps=2,
        training_args__predict_with_generate=True,
    )
    cfg.training_args.generation_config.max_new_tokens = 4
    train(data_dir, tiny_llama_dir, cfg)
    scored = [row for row in read_metrics(out / "metrics.jsonl") if "eval_n_samples" in row]
    assert [row["step"] for row in scored] == [2]
    assert scored[0]["eval_n_samples"] == 4 and "eval_rouge-l" in scored[0]
    assert 0 <= scored[0]["eval_empty_predictions"] <= 4


def test_official_json_names_find_the_jsonl_files_data_prepare_writes(tmp_path: Path, caplog):
    (tmp_path / "train.jsonl").write_text('{"conversations": []}\n', encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        assert read_split(tmp_path, "train.json", "train", required=True) == [{"conversations": []}]
    assert "train.json not found; reading train.jsonl" in caplog.text
    assert read_split(tmp_path, "dev.json", "dev", required=False) is None
