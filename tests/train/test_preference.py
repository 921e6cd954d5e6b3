"""Preference alignment (`method: dpo` / `orpo` / `kto`) on tiny models: encoding, training through the CLI, continuing an
SFT adapter, and a ChatGLM3 DPO adapter that merges, verifies and answers like an SFT one."""

import json
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from wenzhen.cli import main
from wenzhen.config import validate_config
from wenzhen.generation import ChatEngine, GenerationSettings
from wenzhen.io import read_jsonl, write_jsonl
from wenzhen.models import load_model
from wenzhen.models.chatglm3 import ChatGLM3Family
from wenzhen.runinfo import read_run_info
from wenzhen.serve.api import create_app
from wenzhen.serve.config import ServingConfig
from wenzhen.train.callbacks import read_metrics
from wenzhen.train.config import TrainConfig
from wenzhen.train.encoding import IGNORE, encode_conversation
from wenzhen.train.preference import encode_answer
from wenzhen.train.trainer import train

REPO = Path(__file__).parents[2]
REJECTED = "不知道。"


def pairs(rows: list[dict]) -> list[dict]:
    """Prompt turns (some with a system turn and history) + the doctor's answer over a useless one."""
    return [
        {
            "conversations": row["conversations"][:-1],
            "chosen": row["conversations"][-1]["content"],
            "rejected": REJECTED,
        }
        for row in rows
    ]


@pytest.fixture(scope="module")
def pairs_dir(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 training pairs from the SFT fixture's conversations; dev: 6 of their prompts."""
    folder = tmp_path_factory.mktemp("pairs")
    train_pairs = pairs(read_jsonl(data_dir / "train.json"))
    write_jsonl(folder / "train.jsonl", train_pairs)
    write_jsonl(folder / "dev.jsonl", train_pairs[2:8])
    return folder


def cli_overrides(out: Path, steps: int) -> list[str]:
    settings = {
        "training_args.output_dir": out,
        "max_input_length": 64,
        "max_output_length": 48,
        "training_args.learning_rate": 5e-3,
        "training_args.warmup_steps": 0,
        "training_args.per_device_train_batch_size": 4,
        "training_args.gradient_accumulation_steps": 1,
        "training_args.logging_steps": 1,
        "training_args.eval_steps": steps,
        "training_args.save_steps": 1000,
    }
    return ["--max-steps", str(steps), "--cpu"] + [
        arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")
    ]


def test_chatglm3_pairs_tokenize_exactly_like_sft_samples(chatglm3_dir: Path) -> None:
    family = ChatGLM3Family()
    tokenizer = family.load_tokenizer(chatglm3_dir / "tiny-chatglm3")
    prompt = [
        {"role": "system", "content": "你是一名耐心的医生。"},
        {"role": "user", "content": "孩子发烧三十八度半怎么办"},
        {"role": "assistant", "content": "先物理降温。"},
        {"role": "user", "content": "还需要注意什么"},
    ]
    for answer in ("多喝水，超过三十九度请就医。", REJECTED):
        prompt_ids, answer_ids = encode_answer(family, tokenizer, prompt, answer, 256, 256)
        sample = encode_conversation(family, tokenizer, [*prompt, {"role": "assistant", "content": answer}])
        assert prompt_ids + answer_ids == sample.input_ids
        # The answer is exactly the SFT sample's last labelled span, its closing eos included.
        assert sample.labels[len(prompt_ids) :] == answer_ids
        assert sample.labels[len(prompt_ids) - 1] == IGNORE and answer_ids[-1] == tokenizer.eos_token_id
    long_ids = encode_answer(family, tokenizer, prompt, "很长的回答" * 50, 256, 8)[1]
    assert len(long_ids) == 9 and long_ids[-1] == tokenizer.eos_token_id


def test_dpo_through_the_cli_with_the_shipped_config_raises_held_out_accuracy(
    pairs_dir: Path, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "dpo"
    code = main(
        [
            "train",
            str(pairs_dir),
            str(tiny_llama_dir),
            str(REPO / "configs" / "dpo.yaml"),
            *cli_overrides(out, 8),
        ]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    before, after = summary["dev_preference_before"], summary["dev_preference_after"]
    assert before["pairs"] == after["pairs"] == 6
    assert before["reward_accuracy"] == 0.5  # the untrained policy equals its reference: every pair a tie
    assert after["reward_accuracy"] >= 0.8 and after["reward_margin"] > 0
    evals = [row for row in read_metrics(out / "metrics.jsonl") if "eval_rewards/accuracies" in row]
    assert evals and "eval_rewards/margins" in evals[-1]
    assert (out / "training_curve.png").is_file()
    assert read_run_info(out).extra["objective"] == "dpo"
    assert (out / "final" / "adapter_config.json").is_file()


def test_kto_trains_on_pairs_split_into_labelled_answers(
    pairs_dir: Path, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "kto"
    code = main(
        [
            "train",
            str(pairs_dir),
            str(tiny_llama_dir),
            str(REPO / "configs" / "kto.yaml"),
            *cli_overrides(out, 4),
        ]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["objective"] == "kto" and summary["steps"] == 4
    assert summary["first_loss"] is not None and summary["dev_preference_after"]["pairs"] == 6
    encoded = json.loads((out / "preference.json").read_text())
    assert encoded["train"]["kept"] + encoded["train"]["skipped"] == 16 and encoded["train"]["kept"] >= 12


def test_dpo_continues_an_sft_adapter_with_it_as_the_reference(
    pairs_dir: Path, data_dir: Path, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    base = {
        "max_input_length": 64,
        "max_output_length": 48,
        "training_args": {
            "max_steps": 3,
            "learning_rate": 1e-2,
            "per_device_train_batch_size": 4,
            "save_strategy": "no",
        },
        "peft_config": {"peft_type": "LORA", "r": 4, "lora_alpha": 8},
    }
    sft_config = validate_config(
        TrainConfig, {**base, "training_args": {**base["training_args"], "output_dir": str(tmp_path / "sft")}}
    )
    sft = train(data_dir, tiny_llama_dir, sft_config)
    dpo_config = validate_config(
        TrainConfig,
        {
            **base,
            "method": "dpo",
            "training_args": {
                **base["training_args"],
                "output_dir": str(tmp_path / "dpo"),
                "learning_rate": 5e-3,
            },
        },
    )
    result = train(pairs_dir, sft.final_dir, dpo_config)
    before = result.summary["dev_preference_before"]
    assert (
        before["reward_accuracy"] == 0.5
    )  # the policy starts as the SFT adapter, which is also the reference
    final = result.final_dir
    assert not (final / "ref").exists()  # the frozen reference copy is not part of the result
    assert json.loads((final / "adapter_config.json").read_text())["r"] == 4
    assert read_run_info(tmp_path / "dpo").base_model == str(tiny_llama_dir.resolve())
    sft_weights = load_model(sft.final_dir, device="cpu", dtype="fp32").model.state_dict()
    dpo_weights = load_model(final, device="cpu", dtype="fp32").model.state_dict()
    lora_keys = [key for key in sft_weights if "lora_B" in key]
    assert lora_keys and any(not torch.equal(sft_weights[k], dpo_weights[k]) for k in lora_keys)


@pytest.mark.slow
def test_chatglm3_dpo_adapter_merges_verifies_and_answers(chatglm3_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "pairs"
    folder.mkdir()
    short = [
        {
            "conversations": [{"role": "user", "content": question}],
            "chosen": answer[:12],
            "rejected": REJECTED,
        }
        for question, answer in (
            ("孩子发烧怎么办", "先物理降温，多喝水。"),
            ("头痛怎么办", "注意休息。"),
            ("失眠", "规律作息。"),
            ("咳嗽", "多喝水。"),
        )
    ]
    write_jsonl(folder / "train.jsonl", short)
    write_jsonl(folder / "dev.jsonl", short[:2])
    out = tmp_path / "dpo"
    overrides = [*cli_overrides(out, 2), "--set", "training_args.gradient_checkpointing=false"]
    model_dir = chatglm3_dir / "tiny-chatglm3"
    assert main(["train", str(folder), str(model_dir), str(REPO / "configs" / "dpo.yaml"), *overrides]) == 0
    assert read_run_info(out).chat_format == "chatglm3"
    merged = tmp_path / "merged"
    assert (
        main(
            [
                "merge",
                str(out / "final"),
                "--out-dir",
                str(merged),
                "--dtype",
                "fp32",
                "--verify-device",
                "cpu",
            ]
        )
        == 0
    )
    engine = ChatEngine(load_model(merged, device="cpu", dtype="fp32"))
    answer = engine.generate_batch(
        [[{"role": "user", "content": "孩子发烧怎么办"}]], GenerationSettings(max_new_tokens=4, temperature=0)
    )[0]
    assert answer.text is not None
    # Served as an SFT adapter is: the adapter folder itself (its run.json names the base) behind the API.
    served = ChatEngine(load_model(out / "final", device="cpu", dtype="fp32"))
    config = ServingConfig.model_validate(
        {"limits": {"default_max_tokens": 4}, "generation": {"temperature": 0}}
    )
    app = create_app(served, config, "wenzhen-dpo", None)
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:  # a local client, as the API admits
        messages = [{"role": "user", "content": "孩子发烧怎么办"}]
        reply = client.post("/v1/chat/completions", json={"model": "wenzhen-dpo", "messages": messages})
    assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["role"] == "assistant"


def test_orpo_through_the_cli_with_the_shipped_config_prefers_the_chosen_answers(
    pairs_dir: Path, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "orpo"
    code = main(
        [
            "train",
            str(pairs_dir),
            str(tiny_llama_dir),
            str(REPO / "configs" / "orpo.yaml"),
            *cli_overrides(out, 8),
            # a strong odds-ratio term, so 8 steps of a tiny model move the preference visibly
            *("--set", "preference.beta=1.0"),
        ]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["objective"] == "orpo" and summary["steps"] == 8
    before, after = summary["dev_preference_before"], summary["dev_preference_after"]
    # No reference: the reward is beta x the answer's mean log-probability, so "before" is the model's own taste
    # (on 6 pairs of a random tiny model it may already prefer the chosen answers); the margin must grow.
    assert after["pairs"] == 6 and after["reward_accuracy"] >= 0.8
    assert after["reward_margin"] > max(before["reward_margin"], 0)
    evals = [row for row in read_metrics(out / "metrics.jsonl") if "eval_log_odds_ratio" in row]
    assert evals and "eval_rewards/accuracies" in evals[-1]
    assert read_run_info(out).extra["objective"] == "orpo"
    assert (out / "final" / "adapter_config.json").is_file()
