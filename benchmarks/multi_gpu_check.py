"""Multi-GPU check: a 2-GPU run of `wenzhen train` follows the 1-GPU loss curve at the same global batch.

Runs the real command under `torchrun` (the launch a user types) for each pair below, on a small model, and
compares the per-step training loss from each run's `metrics.jsonl`:

* LoRA, 1 GPU with batch B vs DDP on 2 GPUs with batch B/2 each;
* full fine-tuning, 1 GPU vs FSDP (`full_shard auto_wrap`) on 2 GPUs;
* full fine-tuning, 1 GPU vs DeepSpeed ZeRO-2 on 2 GPUs, where deepspeed is installed.

Both runs of a pair see the same samples at every step (the Trainer's seeded sampler hands consecutive per-device
batches to the ranks), and the loss is averaged over all label tokens of the global batch, so the curves should
agree to float tolerance (bf16 autocast on GPU, so about 1e-2 rather than 1e-6).

Without `--model` the script builds a small Llama (4 layers, hidden 256) with a locally trained byte-level BPE
tokenizer and a ChatML template, so it needs nothing from a model hub or `../shared`.

Writes `benchmarks/results/multi_gpu_check.{json,md}` (`multi_gpu_check_cpu.*` with `--cpu`, which runs the same
pairs as 2 CPU processes over gloo: the distributed code paths without GPUs, in fp32).

    python benchmarks/multi_gpu_check.py [--model DIR] [--steps 30] [--global-batch 8] [--work /tmp/mgpu] [--cpu]
"""

import argparse
import importlib.util
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SYMPTOMS = ["发烧", "咳嗽", "头痛", "胃痛", "失眠", "腹泻", "皮疹", "腰痛", "胸闷", "耳鸣", "乏力", "鼻塞"]
ADVICE = ["多喝水，注意休息", "建议到医院检查", "按时服药并复诊", "清淡饮食，规律作息", "症状加重请及时就医"]


def build_small_model(folder: Path) -> Path:
    """A small Llama with a ChatML template, trained tokenizer included; random weights."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = [*SYMPTOMS, *ADVICE, "system user assistant 医生 患者 几天了 怎么办"]
    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=CHATML
    )
    tokenizer.save_pretrained(folder)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def write_data(folder: Path, count: int) -> Path:
    """`count` synthetic one- and two-turn consultations of varied length (train.json), 8 for dev.json."""
    rng = random.Random(0)

    def conversation() -> dict[str, Any]:
        symptom = "、".join(rng.sample(SYMPTOMS, rng.randint(1, 4)))
        days = rng.randint(1, 14)
        turns = [
            {"role": "user", "content": f"我{symptom}已经{days}天了，怎么办？"},
            {"role": "assistant", "content": "，".join(rng.sample(ADVICE, rng.randint(1, 4))) + "。"},
        ]
        if rng.random() < 0.4:
            turns += [
                {"role": "user", "content": "还需要注意什么？"},
                {"role": "assistant", "content": "按时复诊。"},
            ]
        return {"conversations": turns}

    folder.mkdir(parents=True, exist_ok=True)
    for name, size in (("train.json", count), ("dev.json", 8)):
        rows = [conversation() for _ in range(size)]
        (folder / name).write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
        )
    return folder


def write_config(path: Path, steps: int) -> Path:
    """LoRA without dropout (dropout masks differ between ranks), constant learning rate, loss every step."""
    path.write_text(
        f"""data_config:
  train_file: train.json
  val_file: null
max_input_length: 128
max_output_length: 128
training_args:
  max_steps: {steps}
  learning_rate: 1e-3
  lr_scheduler_type: constant
  logging_steps: 1
  save_steps: {steps}
  seed: 42
peft_config:
  peft_type: LORA
  r: 8
  lora_alpha: 16
  lora_dropout: 0.0
""",
        encoding="utf-8",
    )
    return path


def deepspeed_config(path: Path) -> Path:
    """ZeRO stage 2 with bf16; batch sizes come from the Trainer ("auto")."""
    config = {
        "bf16": {"enabled": "auto"},
        "zero_optimization": {"stage": 2},
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
    }
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return path


def run(
    name: str,
    gpus: int,
    batch: int,
    extra: list[str],
    model: Path,
    data: Path,
    config: Path,
    work: Path,
    cpu: bool = False,
) -> dict[str, Any]:
    """One `torchrun ... -m wenzhen train` and its per-step losses."""
    out = work / "runs" / name
    shutil.rmtree(out, ignore_errors=True)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
        "-m", "wenzhen", "train", str(data), str(model), str(config),
        "--output-dir", str(out), "--batch-size", str(batch), *extra, *(["--cpu"] if cpu else []),
    ]  # fmt: skip
    environment = {**os.environ}
    if not cpu:
        environment["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(gpus))
    started = time.monotonic()
    finished = subprocess.run(command, env=environment, capture_output=True, text=True)
    seconds = time.monotonic() - started
    result: dict[str, Any] = {"name": name, "gpus": gpus, "per_device_batch": batch, "args": extra}
    result |= {"returncode": finished.returncode, "wall_seconds": round(seconds, 1)}
    if finished.returncode != 0:
        result["error"] = finished.stderr[-3000:]
        print(f"{name}: FAILED\n{finished.stderr[-3000:]}", file=sys.stderr)
        return result
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    result["loss"] = {row["step"]: row["loss"] for row in rows if "loss" in row}
    result["summary"] = json.loads((out / "summary.json").read_text())
    print(f"{name}: {seconds:.1f} s, final loss {list(result['loss'].values())[-1]:.4f}")
    return result


def compare(single: dict[str, Any], multi: dict[str, Any]) -> dict[str, Any]:
    """Step-by-step loss difference between two runs."""
    if "loss" not in single or "loss" not in multi:
        return {"pair": f"{single['name']} vs {multi['name']}", "error": "a run failed"}
    steps = sorted(set(single["loss"]) & set(multi["loss"]))
    diffs = [abs(single["loss"][s] - multi["loss"][s]) for s in steps]
    return {
        "pair": f"{single['name']} vs {multi['name']}",
        "steps": len(steps),
        "max_abs_diff": max(diffs),
        "mean_abs_diff": sum(diffs) / len(diffs),
        "first_loss": [single["loss"][steps[0]], multi["loss"][steps[0]]],
        "last_loss": [single["loss"][steps[-1]], multi["loss"][steps[-1]]],
    }


def machine(cpu: bool) -> str:
    """GPU names (or CPU cores) and software versions."""
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    device = f"CPU processes over gloo on {os.cpu_count()} cores" if cpu else f"{len(names)} x {names[0]}"
    return (
        f"{device}; {platform.platform()}; torch {torch.__version__}, transformers {transformers.__version__}"
    )


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Multi-GPU check (`benchmarks/multi_gpu_check.py`)",
        "",
        f"Machine: {report['machine']}. Model: {report['model']}. Global batch {report['global_batch']} "
        f"conversations, {report['steps']} steps, packing on.",
        "",
        "| pair | steps | max abs loss diff | mean abs diff | first loss (1 / 2 workers) | last loss |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["comparisons"]:
        if "error" in row:
            lines.append(f"| {row['pair']} | failed | | | | |")
            continue
        first, last = row["first_loss"], row["last_loss"]
        lines.append(
            f"| {row['pair']} | {row['steps']} | {row['max_abs_diff']:.2e} | {row['mean_abs_diff']:.2e} | "
            f"{first[0]:.4f} / {first[1]:.4f} | {last[0]:.4f} / {last[1]:.4f} |"
        )
    lines += [
        "",
        "| run | workers | per-device batch | wall s | tokens/s | peak memory GiB |",
        "|---|---|---|---|---|---|",
    ]
    for run_result in report["runs"]:
        summary = run_result.get("summary", {})
        memory = summary.get("peak_memory_bytes", 0) / 2**30
        lines.append(
            f"| {run_result['name']} | {run_result['gpus']} | {run_result['per_device_batch']} | "
            f"{run_result['wall_seconds']} | {summary.get('tokens_per_second', 'failed')} | {memory:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="model directory (default: build a small Llama)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--work", type=Path, default=Path("/tmp/wenzhen-multi-gpu"))
    parser.add_argument("--cpu", action="store_true", help="2 CPU processes (gloo) instead of 2 GPUs")
    args = parser.parse_args()
    if not args.cpu and torch.cuda.device_count() < 2:
        sys.exit("this check needs 2 GPUs (or --cpu)")
    args.work.mkdir(parents=True, exist_ok=True)
    model = args.model or build_small_model(args.work / "model")
    data = write_data(args.work / "data", count=args.steps * args.global_batch)
    config = write_config(args.work / "config.yaml", args.steps)
    half = args.global_batch // 2
    full = ["--method", "full", "--set", "peft_config=null", "--learning-rate", "1e-4"]
    pairs = [
        (("lora-1gpu", 1, args.global_batch, []), ("lora-ddp-2gpu", 2, half, [])),
        (
            ("full-1gpu", 1, args.global_batch, full),
            ("full-fsdp-2gpu", 2, half, [*full, "--fsdp", "full_shard auto_wrap"]),
        ),
    ]
    if importlib.util.find_spec("deepspeed") is not None:
        zero2 = ["--deepspeed", str(deepspeed_config(args.work / "ds_zero2.json"))]
        pairs.append(
            (("full-1gpu", 1, args.global_batch, full), ("full-zero2-2gpu", 2, half, [*full, *zero2]))
        )
    runs: dict[str, dict[str, Any]] = {}
    comparisons = []
    for single, multi in pairs:
        for spec in (single, multi):
            if spec[0] not in runs:
                runs[spec[0]] = run(
                    *spec, model=model, data=data, config=config, work=args.work, cpu=args.cpu
                )
        comparisons.append(compare(runs[single[0]], runs[multi[0]]))
        print(json.dumps(comparisons[-1]))
    report = {
        "machine": machine(args.cpu),
        "model": str(args.model) if args.model else "small Llama (4 layers, hidden 256, random weights)",
        "steps": args.steps,
        "global_batch": args.global_batch,
        "comparisons": comparisons,
        "runs": list(runs.values()),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "multi_gpu_check_cpu" if args.cpu else "multi_gpu_check"
    (RESULTS / f"{stem}.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
