"""Tuning methods: the registry, LoRA targets, gradient checkpointing that is really on or refused clearly."""

import logging
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from wenzhen.errors import WenzhenError
from wenzhen.models import detect_family
from wenzhen.train.config import LoraSettings, PeftConfig, TrainConfig
from wenzhen.train.methods import (
    METHODS,
    count_parameters,
    enable_gradient_checkpointing,
    expandable_segments,
    lora_targets,
)


def test_registry_holds_the_four_methods():
    assert METHODS.names() == ["lora", "ptuning_v2", "full", "qlora"]
    with pytest.raises(WenzhenError, match="choose one of"):
        METHODS.get("adapter")


def test_official_fused_target_becomes_the_native_projections(tiny_llama_dir: Path, caplog):
    family = detect_family(tiny_llama_dir)
    with caplog.at_level(logging.WARNING):
        targets = lora_targets(
            PeftConfig(peft_type="LORA", target_modules=["query_key_value", "o_proj"]), family
        )
    assert targets == ["o_proj", "q_proj", "k_proj", "v_proj"]
    assert "official fused projection" in caplog.text
    assert lora_targets(LoraSettings(), family) == ["q_proj", "k_proj", "v_proj"]
    assert lora_targets(PeftConfig(peft_type="LORA", target_modules="all-linear"), family) == "all-linear"


def test_each_method_trains_exactly_its_weights(tiny_llama_dir: Path):
    family = detect_family(tiny_llama_dir)
    counts = {}
    for name, peft in (
        ("lora", {"peft_type": "LORA", "r": 2}),
        ("ptuning_v2", {"peft_type": "PREFIX_TUNING"}),
    ):
        config = TrainConfig.model_validate(
            {"max_input_length": 8, "max_output_length": 8, "peft_config": peft}
        )
        model = METHODS.get(name).prepare(
            AutoModelForCausalLM.from_pretrained(tiny_llama_dir), config, family
        )
        counts[name] = count_parameters(model)
    full = TrainConfig.model_validate({"max_input_length": 8, "max_output_length": 8})
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).requires_grad_(False)
    counts["full"] = count_parameters(METHODS.get("full").prepare(base, full, family))
    hidden, kv_dim, layers, r = 32, 16, 2, 2
    per_layer = (r * hidden + hidden * r) + 2 * (
        r * hidden + kv_dim * r
    )  # A and B of q (32->32), k and v (32->16)
    assert counts["lora"][0] == layers * per_layer
    assert (
        counts["ptuning_v2"][0] == 128 * layers * 2 * 16
    )  # 128 virtual tokens x layers x (key, value) x kv dim
    assert counts["full"][0] == counts["full"][1]


def test_gradient_checkpointing_is_really_on(tiny_llama_dir: Path):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    enable_gradient_checkpointing(model)
    assert model.model.gradient_checkpointing
    ids = torch.randint(3, 100, (1, 12))
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    assert model.lm_head.weight.grad is not None


def test_prefix_tuning_with_gradient_checkpointing_is_refused(
    data_dir: Path, tiny_llama_dir: Path, tmp_path: Path
):
    from wenzhen.train.trainer import train

    config = TrainConfig.model_validate(
        {
            "max_input_length": 8,
            "max_output_length": 8,
            "training_args": {"output_dir": str(tmp_path), "gradient_checkpointing": True},
            "peft_config": {"peft_type": "PREFIX_TUNING"},
        }
    )
    with pytest.raises(WenzhenError, match="ptuning_v2 cannot use gradient checkpointing"):
        train(data_dir, tiny_llama_dir, config)


def test_qlora_asks_for_expandable_allocator_segments_unless_the_user_chose(monkeypatch, caplog):
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:False")
    with caplog.at_level(logging.INFO, logger="wenzhen.train.methods"):
        expandable_segments()
    assert "expandable" not in caplog.text  # the user's setting stands
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF")
    with caplog.at_level(logging.INFO, logger="wenzhen.train.methods"):
        expandable_segments()
    assert "segments are expandable" in caplog.text or "unavailable" in caplog.text
