"""ChatGLM3-6B's own numbers for the concepts page: parameters, LoRA trainable parameters and adapter sizes, memory.

The 6B model is built from the real `config.json` (`../shared/chatglm3/chatglm3-6b-config.json`) through
`wenzhen.models.chatglm3.glm_config_from_official`, on the meta device (shapes only, no memory), and the adapters
are attached with peft exactly as `wenzhen train` does, so every count is the one training would print. Adapter
sizes are trainable parameters x bytes per value (the safetensors header adds a few KB). Memory figures are
arithmetic on those counts (weights + gradients + AdamW states), excluding activations, which depend on batch
size and sequence length: measured peaks are in the training benchmarks.

Writes `benchmarks/results/lora_numbers.{json,md}`.

    python benchmarks/lora_numbers.py [--config ../shared/chatglm3/chatglm3-6b-config.json]
"""

import argparse
import json
import platform
from pathlib import Path
from typing import Any

import peft
import torch
import transformers
from peft import LoraConfig, PrefixTuningConfig, get_peft_model
from transformers import GlmForCausalLM

from wenzhen.models.chatglm3 import glm_config_from_official, qkv_sizes
from wenzhen.models.family import FAMILIES

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_CONFIG = ROOT.parent / "shared" / "chatglm3" / "chatglm3-6b-config.json"
RANKS = (4, 8, 16, 32, 64)
# The official ChatGLM3 finetune_demo's P-Tuning v2 config trains 128 virtual tokens.
PREFIX_TOKENS = 128
GIB = 2**30
MB = 10**6
# Bytes per trainable parameter under AdamW with fp32 trainable weights: weight 4 + gradient 4 + two moments 8.
ADAMW_FP32_BYTES = 4 + 4 + 8
# bitsandbytes NF4: 4 bits a weight plus one fp32 absmax per 64-weight block (without double quantisation).
NF4_BYTES = 0.5 + 4 / 64


def build_6b(config_file: Path) -> GlmForCausalLM:
    """The ChatGLM3-6B architecture with meta tensors: exact shapes, no storage."""
    config = glm_config_from_official(json.loads(config_file.read_text(encoding="utf-8")))
    with torch.device("meta"):
        return GlmForCausalLM(config)


def count(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def lora_trainable(config_file: Path, rank: int, targets: list[str] | str) -> int:
    """Trainable parameters of a LoRA adapter of rank `rank` on `targets`, counted by peft on the 6B shapes."""
    model = get_peft_model(
        build_6b(config_file), LoraConfig(task_type="CAUSAL_LM", r=rank, target_modules=targets)
    )
    return count(model)[0]


def fused_qkv_row(config_file: Path, rank: int, total: int) -> dict[str, Any]:
    """LoRA on the official fused `query_key_value` (the official finetune_demo), by arithmetic on the config.

    One A (r x hidden) and one B (q+k+v rows x r) per layer, where the native model has three of each; wenzhen
    trains the native split (the official adapters convert into it), so this row is for comparing with the
    official scripts' printout.
    """
    config = glm_config_from_official(json.loads(config_file.read_text(encoding="utf-8")))
    trainable = rank * (config.hidden_size + sum(qkv_sizes(config))) * config.num_hidden_layers
    return {
        "r": rank,
        "targets": "official fused query_key_value",
        "trainable": trainable,
        "percent": 100 * trainable / total,
        "adapter_bf16_bytes": trainable * 2,
        "adapter_fp32_bytes": trainable * 4,
    }


def prefix_trainable(config_file: Path) -> int:
    """Trainable parameters of P-Tuning v2 (peft prefix tuning) with the official number of virtual tokens."""
    config = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=PREFIX_TOKENS)
    return count(get_peft_model(build_6b(config_file), config))[0]


def linear_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(parameters in the decoder's Linear layers, parameters of lm_head): bitsandbytes quantises the former only."""
    inside = sum(
        module.weight.numel()
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name != "lm_head"
    )
    return inside, model.get_output_embeddings().weight.numel()


def memory_rows(
    total: int, quantisable: int, trainable_lora: int, trainable_prefix: int
) -> list[dict[str, Any]]:
    """Weights + gradients + optimizer states per method, each with the arithmetic that gives it."""
    nf4_base = quantisable * NF4_BYTES + (total - quantisable) * 2
    rows = [
        ("inference (bf16)", total * 2, f"{total:,} x 2 B"),
        (
            "LoRA r=8 q/k/v (bf16 base)",
            total * 2 + trainable_lora * ADAMW_FP32_BYTES,
            f"{total:,} x 2 B + {trainable_lora:,} x 16 B",
        ),
        (
            f"P-Tuning v2 ({PREFIX_TOKENS} tokens, bf16 base)",
            total * 2 + trainable_prefix * ADAMW_FP32_BYTES,
            f"{total:,} x 2 B + {trainable_prefix:,} x 16 B",
        ),
        (
            "QLoRA r=8 q/k/v (NF4 base)",
            nf4_base + trainable_lora * ADAMW_FP32_BYTES,
            f"{quantisable:,} x {NF4_BYTES} B + {total - quantisable:,} x 2 B + {trainable_lora:,} x 16 B",
        ),
        ("full fine-tuning (fp32 AdamW)", total * ADAMW_FP32_BYTES, f"{total:,} x 16 B"),
    ]
    return [{"method": m, "bytes": int(b), "gib": b / GIB, "arithmetic": a} for m, b, a in rows]


def machine() -> str:
    """Where the numbers were computed (they are shape arithmetic, so any machine gives the same ones)."""
    return (
        f"{platform.machine()} CPU, {platform.platform()}; torch {torch.__version__}, "
        f"transformers {transformers.__version__}, peft {peft.__version__}"
    )


def compute(config_file: Path) -> dict[str, Any]:
    """Every number of the report."""
    model = build_6b(config_file)
    _, total = count(model)
    quantisable, lm_head = linear_parameters(model)
    qkv = list(FAMILIES.get("chatglm3").default_lora_targets)
    lora = []
    for rank in RANKS:
        for label, targets in (("q/k/v", qkv), ("all linear", "all-linear")):
            trainable = lora_trainable(config_file, rank, targets)
            lora.append(
                {
                    "r": rank,
                    "targets": label,
                    "trainable": trainable,
                    "percent": 100 * trainable / total,
                    "adapter_bf16_bytes": trainable * 2,
                    "adapter_fp32_bytes": trainable * 4,
                }
            )
        lora.append(fused_qkv_row(config_file, rank, total))
    lora_r8 = next(row["trainable"] for row in lora if row["r"] == 8 and row["targets"] == "q/k/v")
    prefix = prefix_trainable(config_file)
    return {
        "machine": machine(),
        "config": str(config_file),
        "total_parameters": total,
        "decoder_linear_parameters": quantisable,
        "lm_head_parameters": lm_head,
        "lora": lora,
        "ptuning_v2": {"virtual_tokens": PREFIX_TOKENS, "trainable": prefix, "percent": 100 * prefix / total},
        "memory": memory_rows(total, quantisable, lora_r8, prefix),
        "memory_note": "weights + gradients + AdamW states only; activations come on top and are measured separately",
    }


def markdown(report: dict[str, Any]) -> str:
    """The report as the Markdown table the concepts page links to."""
    total = report["total_parameters"]
    lines = [
        "# ChatGLM3-6B: parameters, LoRA adapters, memory (computed by `benchmarks/lora_numbers.py`)",
        "",
        f"Computed from `{Path(report['config']).name}` on the meta device. Machine: {report['machine']}",
        "",
        f"Total parameters: **{total:,}** ({total / 1e9:.2f} B).",
        "",
        "| r | targets | trainable params | % of model | adapter bf16 | adapter fp32 |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["lora"]:
        lines.append(
            f"| {row['r']} | {row['targets']} | {row['trainable']:,} | {row['percent']:.3f}% "
            f"| {row['adapter_bf16_bytes'] / MB:.1f} MB | {row['adapter_fp32_bytes'] / MB:.1f} MB |"
        )
    prefix = report["ptuning_v2"]
    lines += [
        "",
        f"P-Tuning v2 ({prefix['virtual_tokens']} virtual tokens): {prefix['trainable']:,} trainable parameters "
        f"({prefix['percent']:.3f}%).",
        "",
        "Memory for weights + gradients + AdamW states (arithmetic; activations excluded):",
        "",
        "| method | GiB | arithmetic |",
        "|---|---|---|",
    ]
    lines += [f"| {row['method']} | {row['gib']:.1f} | {row['arithmetic']} |" for row in report["memory"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help="official ChatGLM3-6B config.json"
    )
    args = parser.parse_args()
    report = compute(args.config)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "lora_numbers.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (RESULTS / "lora_numbers.md").write_text(markdown(report), encoding="utf-8")
    print(markdown(report))


if __name__ == "__main__":
    main()
