"""Regional compilation finds the decoder layers of plain and peft-wrapped models and keeps their names."""

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from wenzhen.errors import WenzhenError
from wenzhen.train.config import TrainConfig, load_train_config
from wenzhen.train.performance import (
    FOUR_BIT_ACTIVATION_FACTOR,
    Hardware,
    PairLengths,
    compile_decoder_layers,
    describe,
    estimate_peak_gib,
    four_bit_elements,
    plan_performance,
    plan_preference_performance,
    repeated_layers,
)


def test_finds_the_decoder_layers_through_a_peft_wrapper(tiny_glm):
    peft_model = get_peft_model(tiny_glm, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    layers = repeated_layers(peft_model)
    assert layers is tiny_glm.model.layers


def test_compiles_each_layer_in_place_without_renaming_weights(tiny_glm):
    names = list(tiny_glm.state_dict())
    assert compile_decoder_layers(tiny_glm) == 2
    assert all(layer._compiled_call_impl is not None for layer in tiny_glm.model.layers)
    assert list(tiny_glm.state_dict()) == names


def test_with_frozen_embeddings_every_layer_gets_an_input_that_requires_grad(tiny_glm):
    """Otherwise the first layer's input differs from the others' in requires_grad, a guard that makes it compile
    a second pair of graphs (measured with torch's recompile log: two graphs for a LoRA model, one with this)."""
    peft_model = get_peft_model(tiny_glm, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    compile_decoder_layers(peft_model)
    ids = torch.randint(1, 300, (1, 8))
    assert peft_model.get_input_embeddings()(ids).requires_grad


def test_a_model_without_repeated_layers_is_refused_with_the_fix():
    with pytest.raises(WenzhenError, match=r"performance\.compile: false"):
        repeated_layers(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU()))


# --- the automatic choice (`plan_performance`) -------------------------------------------------------------------


REPO = Path(__file__).parents[2]
MEASURED = json.loads((REPO / "benchmarks/results/train_throughput.json").read_text())
CHATGLM3_6B = {"parameters": MEASURED["parameters"], "shape_units": 28 * (4096 + 13696)}


def gpu(total_gib: float) -> Hardware:
    """A card of `total_gib` holding ChatGLM3-6B's bf16 weights, with the planner's own safety margins."""
    return Hardware(
        usable_gib=total_gib * 0.9 - 1.0,
        static_gib=MEASURED["parameters"] * 2 / 2**30,
        can_compile=True,
        **CHATGLM3_6B,
    )


def shipped_lora() -> TrainConfig:
    return load_train_config(REPO / "configs" / "lora.yaml")


@pytest.mark.parametrize(
    ("run", "row_tokens", "checkpointing", "compiled"),
    [
        ("wenzhen flex 8k rows + compile (call 1, official 523 tok/s there)", 8192, False, True),
        ("wenzhen flex 8k rows (call 1, official 523 tok/s there)", 8192, False, False),
        (
            "wenzhen low-mem: 2k rows + checkpointing + compile (call 2, official 528 tok/s there)",
            2048,
            True,
            True,
        ),
        ("wenzhen low-mem: 1k rows + checkpointing + compile", 1024, True, True),
    ],
)
def test_the_memory_model_reproduces_the_measured_peaks(run, row_tokens, checkpointing, compiled):
    measured = MEASURED["runs"][run]["peak_gpu_gib"]
    assert estimate_peak_gib(gpu(80), row_tokens, checkpointing, compiled) == pytest.approx(measured, abs=0.7)


def test_on_cpu_the_recipe_runs_as_written():
    config = TrainConfig.model_validate({"max_input_length": 8, "max_output_length": 8})
    resolved, plan = plan_performance(config, None, [10, 12], 1, packed=True, allow_checkpointing=True)
    assert (plan.row_tokens, plan.compile, plan.gradient_checkpointing) == (None, False, False)
    assert resolved.training_args.per_device_train_batch_size == 8 and "CPU" in plan.reason


def test_a_large_gpu_gets_long_uncheckpointed_compiled_rows_at_the_recipes_step_tokens():
    config = shipped_lora()
    resolved, plan = plan_performance(config, gpu(80), [300] * 100, 1, packed=True, allow_checkpointing=True)
    assert plan.row_tokens == 8192 and not plan.gradient_checkpointing and plan.compile
    step = plan.row_tokens * plan.gradient_accumulation_steps
    assert step == config.performance.step_tokens
    assert plan.estimated_peak_gib is not None and plan.estimated_peak_gib < gpu(80).usable_gib
    assert resolved.performance.row_tokens == 8192 and resolved.training_args.gradient_checkpointing is False


def test_a_24_gib_card_trades_recomputation_for_rows_that_fit():
    _, plan = plan_performance(shipped_lora(), gpu(24), [300] * 100, 1, packed=True, allow_checkpointing=True)
    assert plan.gradient_checkpointing and plan.row_tokens is not None and plan.row_tokens >= 4096
    assert plan.estimated_peak_gib is not None and plan.estimated_peak_gib <= gpu(24).usable_gib


def test_two_gpus_split_the_step_into_one_row_each():
    _, plan = plan_performance(shipped_lora(), gpu(80), [300] * 100, 2, packed=True, allow_checkpointing=True)
    assert (plan.row_tokens, plan.gradient_accumulation_steps) == (8192, 1)


def test_a_recipe_counting_conversations_keeps_its_tokens_per_step():
    config = TrainConfig.model_validate(
        {
            "max_input_length": 256,
            "max_output_length": 512,
            "training_args": {"per_device_train_batch_size": 16, "gradient_accumulation_steps": 4},
        }
    )
    _, plan = plan_performance(config, gpu(80), [400] * 10 + [769], 1, packed=True, allow_checkpointing=True)
    step = plan.row_tokens * plan.gradient_accumulation_steps  # type: ignore[operator]
    assert step == pytest.approx(64 * 436, rel=0.1)
    assert "64 conversations" in plan.reason


def test_explicit_keys_win():
    config = shipped_lora().model_copy(deep=True)
    config.performance.row_tokens = 1024
    config.performance.compile = False
    config.training_args.gradient_checkpointing = True
    resolved, plan = plan_performance(config, gpu(80), [300] * 10, 1, packed=True, allow_checkpointing=True)
    assert (plan.row_tokens, plan.compile, plan.gradient_checkpointing) == (1024, False, True)
    assert (
        resolved.training_args.per_device_train_batch_size == config.training_args.per_device_train_batch_size
    )


def test_methods_without_checkpointing_are_never_given_it():
    _, plan = plan_performance(shipped_lora(), gpu(16), [300] * 10, 1, packed=True, allow_checkpointing=False)
    assert plan.gradient_checkpointing is False


# --- QLoRA: a 4-bit base --------------------------------------------------------------------------------------------

EMBEDDINGS = (
    2 * 65024 * 4096
)  # input embeddings and output layer, kept in fp32 by prepare_model_for_kbit_training


def qlora_gpu(total_gib: float) -> Hardware:
    """ChatGLM3-6B with 4-bit linear weights (half a byte each) and fp32 embeddings, as measure_hardware sees it."""
    linear = MEASURED["parameters"] - EMBEDDINGS
    return Hardware(
        usable_gib=total_gib * 0.9 - 1.0,
        static_gib=(linear / 2 + EMBEDDINGS * 4) / 2**30,
        can_compile=False,
        four_bit=True,
        **CHATGLM3_6B,
    )


def test_a_4bit_base_counts_more_activation_memory_per_token():
    quantized = qlora_gpu(16)
    plain = Hardware(**{**quantized.__dict__, "four_bit": False})
    extra = estimate_peak_gib(quantized, 4096, True, False) - quantized.static_gib
    assert extra == pytest.approx(
        FOUR_BIT_ACTIVATION_FACTOR * (estimate_peak_gib(plain, 4096, True, False) - plain.static_gib)
    )


def test_the_4bit_memory_model_reproduces_the_measured_qlora_peak():
    # H200 capped at 16 GiB, shipped lora.yaml with --method qlora: 4 checkpointed rows of 4096, uncompiled.
    assert estimate_peak_gib(qlora_gpu(16), 4096, True, False) == pytest.approx(9.74, abs=0.5)


def test_qlora_on_a_16_gib_card_gets_uncompiled_checkpointed_rows_within_the_cap():
    config = shipped_lora()
    _, plan = plan_performance(config, qlora_gpu(16), [300] * 100, 1, packed=True, allow_checkpointing=True)
    assert plan.gradient_checkpointing and not plan.compile and "4-bit base" in plan.reason
    assert plan.row_tokens is not None and plan.row_tokens >= 2048
    assert plan.estimated_peak_gib is not None and plan.estimated_peak_gib <= qlora_gpu(16).usable_gib
    step = plan.row_tokens * plan.gradient_accumulation_steps
    assert (
        0 <= step - config.performance.step_tokens < 64 * plan.gradient_accumulation_steps
    )  # rows round up to 64


def test_four_bit_weights_are_found_in_a_quantized_model(tiny_glm, tmp_path):
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    assert four_bit_elements(tiny_glm) == 0
    tiny_glm.save_pretrained(tmp_path)
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16)
    quantized = AutoModelForCausalLM.from_pretrained(
        tmp_path, quantization_config=quantization, device_map="cpu"
    )
    linear = sum(m.weight.numel() for m in tiny_glm.model.layers.modules() if isinstance(m, torch.nn.Linear))
    assert four_bit_elements(quantized) * 2 == linear


def test_the_fused_loss_is_chosen_where_liger_kernel_is_installed_and_refused_with_the_fix_elsewhere():
    config = shipped_lora()
    with_liger = Hardware(**{**gpu(80).__dict__, "can_fuse_loss": True})
    resolved, plan = plan_performance(
        config, with_liger, [300] * 10, 1, packed=True, allow_checkpointing=True
    )
    assert plan.fused_loss and resolved.performance.fused_loss is True and "fused" in describe(plan, "sdpa")
    _, plan = plan_performance(config, gpu(80), [300] * 10, 1, packed=True, allow_checkpointing=True)
    assert plan.fused_loss is False
    _, plan = plan_performance(config, None, [300] * 10, 1, packed=True, allow_checkpointing=True)
    assert plan.fused_loss is False
    forced = config.model_copy(deep=True)
    forced.performance.fused_loss = True
    with pytest.raises(WenzhenError, match=r"needs liger-kernel .*set it to auto or false"):
        plan_performance(forced, gpu(80), [300] * 10, 1, packed=True, allow_checkpointing=True)
    with pytest.raises(WenzhenError, match=r"needs a CUDA GPU"):
        plan_performance(forced, None, [300] * 10, 1, packed=True, allow_checkpointing=True)


# --- preference pairs (`plan_preference_performance`) ------------------------------------------------------------


def shipped_dpo(**performance: int) -> TrainConfig:
    overrides = {f"performance.{key}": value for key, value in performance.items()}
    return load_train_config(REPO / "configs" / "dpo.yaml", overrides)


PAIRS = [PairLengths(pair_tokens=230, longest_sequence=190)] * 50 + [PairLengths(400, 320)]


def test_dpo_on_a_large_gpu_keeps_the_step_in_few_uncheckpointed_compiled_micro_batches():
    resolved, plan = plan_preference_performance(shipped_dpo(step_tokens=16384), gpu(141), PAIRS, 1, True)
    pairs_per_step = plan.per_device_train_batch_size * plan.gradient_accumulation_steps
    assert pairs_per_step == pytest.approx(16384 / (sum(p.pair_tokens for p in PAIRS) / len(PAIRS)), abs=2)
    assert plan.per_device_train_batch_size >= 24 and not plan.gradient_checkpointing and plan.compile
    assert plan.length_grouped and plan.estimated_peak_gib is not None
    # The worst micro-batch (every pair padded to the longest sequence, 320 -> 320 tokens) fits the memory.
    worst = 2 * plan.per_device_train_batch_size * 320
    assert estimate_peak_gib(gpu(141), worst, False, True) <= gpu(141).usable_gib
    assert resolved.training_args.per_device_train_batch_size == plan.per_device_train_batch_size


def test_dpo_keeps_the_recipes_pairs_per_step_and_checkpoints_only_on_a_small_card():
    _, large = plan_preference_performance(shipped_dpo(), gpu(80), PAIRS, 1, True)
    assert (large.per_device_train_batch_size, large.gradient_accumulation_steps) == (16, 1)
    _, small = plan_preference_performance(shipped_dpo(), gpu(16), PAIRS, 1, True)
    assert small.per_device_train_batch_size * small.gradient_accumulation_steps >= 16
    assert small.gradient_checkpointing and small.per_device_train_batch_size < 16


def test_full_logits_leave_room_for_fewer_pairs_per_micro_batch():
    config = shipped_dpo(step_tokens=16384)
    _, plain = plan_preference_performance(config, gpu(80), PAIRS, 1, True)
    _, logits = plan_preference_performance(config, gpu(80), PAIRS, 1, True, 65024 * 12)
    assert logits.per_device_train_batch_size < plain.per_device_train_batch_size


def test_preference_on_cpu_and_kto_run_as_written():
    config = shipped_dpo()
    _, cpu = plan_preference_performance(config, None, PAIRS, 1, True)
    assert (cpu.per_device_train_batch_size, cpu.gradient_accumulation_steps, cpu.compile) == (2, 8, False)
    assert cpu.length_grouped
    _, kto = plan_preference_performance(config, gpu(80), PAIRS, 1, False)
    assert (kto.per_device_train_batch_size, kto.length_grouped) == (2, False)
