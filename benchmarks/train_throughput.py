"""LoRA training throughput of ChatGLM3-6B (random weights, same shapes) on one GPU: official recipe vs wenzhen.

In one process, on real Toyhom consultations encoded the official way:
- `official` : the official finetune demo's recipe on plain `transformers.Trainer` (LoRA r=8, alpha 32, dropout
  0.1 on q/k/v, batch 4 padded to the longest sample, no packing, gradient checkpointing, bf16), and the same
  without gradient checkpointing;
- `wenzhen-*`: `wenzhen.train.train` itself with `performance` settings (fixed-length packed rows with per-sample
  attention, the attention kernel, logits only at labelled positions, chunked fp32 cross-entropy, regional
  torch.compile, gradient checkpointing).
Each runs `--warmup` steps, then `--steps` timed steps (then, with `--profile`, two profiled steps). Reported:
effective tokens/s (non-padding input tokens), MFU in the 6N and 4N conventions against the datasheet peak
(989 TFLOP/s dense bf16, H100 SXM) and against a measured bf16 matmul rate, peak GPU memory (allocated), and the
loss of the first official batch computed both ways. Variants can run in separate processes (`--only`) so each
peak is measured clean; their rows are merged into `benchmarks/results/train_throughput.{json,md}`.
"""

import argparse
import gc
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import DataCollatorForSeq2Seq, GlmForCausalLM, Trainer, TrainerCallback, TrainingArguments

from wenzhen.config import validate_config
from wenzhen.io import read_jsonl
from wenzhen.models.chatglm3 import ChatGLM3Family, glm_config_from_official
from wenzhen.models.chatglm3_tokenizer import build_chatglm3_tokenizer
from wenzhen.train.config import PerformanceConfig, TrainConfig
from wenzhen.train.encoding import encode_rows
from wenzhen.train.loss import sparse_logits_loss
from wenzhen.train.packing import pack_rows
from wenzhen.train.trainer import train

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from profiling import format_profile, summarise  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DATASHEET_TFLOPS = 989.0
DEVICE = "cuda"


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else 0.0


def reset_peak() -> None:
    gc.collect()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


class StepTimer(TrainerCallback):
    """Wall time and non-padding tokens between the end of warm-up and the last step."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup = warmup
        self.last = warmup + steps
        self.start: tuple[float, int] | None = None
        self.end: tuple[float, int] | None = None

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step in (self.warmup, self.last):
            sync()
            mark = (time.perf_counter(), int(state.num_input_tokens_seen))
            if state.global_step == self.warmup:
                self.start = mark
            else:
                self.end = mark

    def tokens_per_second(self) -> float:
        assert self.start and self.end
        return (self.end[1] - self.start[1]) / (self.end[0] - self.start[0])


class ProfileSteps(TrainerCallback):
    """Profiles the `count` steps after step `after` (the timed ones stay unprofiled)."""

    def __init__(self, after: int, count: int = 2) -> None:
        self.after, self.count = after, count
        self.profiler: Any = None
        self.summary: dict | None = None

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.after:
            sync()
            self.profiler = torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
            )
            self.profiler.__enter__()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.profiler is not None and state.global_step == self.after + self.count:
            sync()
            self.profiler.__exit__(None, None, None)
            self.summary = summarise(self.profiler)
            self.profiler = None


def matmul_tflops() -> float:
    size = 8192 if DEVICE == "cuda" else 512
    a = torch.randn(size, size, device=DEVICE, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=DEVICE, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync()
    start = time.perf_counter()
    for _ in range(20):
        a @ b
    sync()
    return 2 * size**3 * 20 / (time.perf_counter() - start) / 1e12


def random_model(config_path: Path, device: str | None = None) -> GlmForCausalLM:
    config = glm_config_from_official(json.loads(config_path.read_text()))
    torch.manual_seed(0)
    with torch.device(device or DEVICE):
        model = GlmForCausalLM(config).to(torch.bfloat16)
    model.config.use_cache = False
    return model


def official_lora(model: GlmForCausalLM) -> Any:
    lora = LoraConfig(
        task_type="CAUSAL_LM",
        r=8,
        lora_alpha=32,
        lora_dropout=0.1,
        target_modules=["q_proj", "k_proj", "v_proj"],
    )
    return get_peft_model(model, lora)


def run_official(
    model: Any, tokenizer: Any, samples: list, args: argparse.Namespace, checkpointing: bool, work: Path
) -> dict:
    """The official finetune_hf.py recipe on plain transformers.Trainer."""
    if checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    else:
        model.gradient_checkpointing_disable()
    tokenizer.padding_side = "right"
    dataset = [{"input_ids": s.input_ids, "labels": s.labels} for s in samples]
    timer = StepTimer(args.warmup, args.steps)
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(work / "official"),
            per_device_train_batch_size=4,
            max_steps=args.warmup + args.steps,
            bf16=True,
            use_cpu=DEVICE == "cpu",
            learning_rate=5e-5,
            logging_steps=1000,
            save_strategy="no",
            report_to="none",
            remove_unused_columns=False,
            include_num_input_tokens_seen="non_padding",
            dataloader_num_workers=0,
        ),
        train_dataset=dataset,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100),
        callbacks=[timer],
    )
    reset_peak()
    trainer.train()
    return {
        "tokens_per_second": timer.tokens_per_second(),
        "peak_gpu_gib": peak_gib(),
    }


def run_wenzhen(
    model_dir: Path,
    data_dir: Path,
    overrides: dict,
    args: argparse.Namespace,
    work: Path,
    name: str,
    profile: bool,
) -> dict:
    """`wenzhen.train.train` with a LoRA config like the official one plus `overrides`."""
    config = {
        "data_config": {"train_file": "toyhom_train.jsonl", "val_file": None},
        "max_input_length": 256,
        "max_output_length": 512,
        "training_args": {
            "output_dir": str(work / name),
            "max_steps": args.warmup + args.steps + (2 if profile else 0),
            "learning_rate": 5e-5,
            "per_device_train_batch_size": 1,
            "save_strategy": "no",
            "logging_steps": 1000,
            "bf16": True,
        },
        "peft_config": {"peft_type": "LORA", "r": 8, "lora_alpha": 32, "lora_dropout": 0.1},
    }
    for dotted, value in overrides.items():
        node = config
        *sections, key = dotted.split(".")
        for section in sections:
            node = node.setdefault(section, {})
        node[key] = value
    timer = StepTimer(args.warmup, args.steps)
    profiler = ProfileSteps(args.warmup + args.steps)
    callbacks: list[TrainerCallback] = [timer, profiler] if profile else [timer]
    reset_peak()
    train(data_dir, model_dir, validate_config(TrainConfig, config), callbacks=callbacks)
    row: dict[str, Any] = {"tokens_per_second": timer.tokens_per_second(), "peak_gpu_gib": peak_gib()}
    if profiler.summary is not None:
        row["profile"] = profiler.summary
    return row


def first_batch_losses(model: Any, tokenizer: Any, samples: list) -> dict:
    """The first official batch (4 samples, padded, SDPA) vs the same samples as one packed flex-attention row."""
    batch = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100)(
        [{"input_ids": s.input_ids, "labels": s.labels} for s in samples[:4]]
    )
    batch = {k: v.to(DEVICE) for k, v in batch.items()}
    row_tokens = sum(len(s.input_ids) for s in samples[:4])
    row = pack_rows(samples[:4], row_tokens, seed=0, pad_id=0)[0]
    packed = {k: torch.tensor([v], device=DEVICE) for k, v in row.items()}
    model.eval()
    with torch.no_grad(), torch.autocast(DEVICE, dtype=torch.bfloat16):
        padded_loss = model(**batch).loss.item()
        base = model.get_base_model()
        base.set_attn_implementation("flex_attention")
        packed_loss = sparse_logits_loss(model, packed, chunk=PerformanceConfig().loss_chunk).item()
        base.set_attn_implementation("sdpa")
    model.train()
    return {
        "official_padded_loss": padded_loss,
        "wenzhen_packed_loss": packed_loss,
        "abs_diff": abs(padded_loss - packed_loss),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, required=True, help="official chatglm3-6b config.json")
    parser.add_argument("--tokenizer", type=Path, required=True, help="ChatGLM3 tokenizer.model")
    parser.add_argument(
        "--data", type=Path, required=True, help="JSONL conversations (wenzhen data prepare output)"
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/throughput"))
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--only", nargs="*", default=None, help="run only these variants")
    parser.add_argument("--profile", nargs="*", default=[], help="also profile two steps of these variants")
    parser.add_argument("--skip-loss-check", action="store_true", help="no first-batch loss comparison")
    parser.add_argument("--device", default="cuda", help="cpu only for a smoke test of the script")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    args.work.mkdir(parents=True, exist_ok=True)
    tokenizer = build_chatglm3_tokenizer(args.tokenizer)
    family = ChatGLM3Family()
    samples, _ = encode_rows(read_jsonl(args.data), family, tokenizer, 256 + 512 + 1, "official")
    mean_tokens = sum(len(s.input_ids) for s in samples) / len(samples)
    measured = matmul_tflops()
    report: dict[str, Any] = {
        "card": torch.cuda.get_device_name(0) if DEVICE == "cuda" else "CPU (smoke test)",
        "torch": torch.__version__,
        "samples": len(samples),
        "mean_tokens_per_sample": mean_tokens,
        "measured_bf16_matmul_tflops": measured,
        "runs": {},
    }

    native = args.work / "model"
    selected = args.only or ["official"]
    needs_model = (
        not args.skip_loss_check
        or any(name.startswith("official") for name in selected)
        or not (native / "config.json").is_file()
    )
    # A process that runs only wenzhen variants never builds the in-process model, so its peak is its own.
    model = random_model(args.config) if needs_model else random_model(args.config, device="meta")
    params = sum(p.numel() for p in model.parameters())
    report["parameters"] = params
    if not (native / "config.json").is_file():
        model.save_pretrained(native)
        tokenizer.save_pretrained(native)
    peft_model = official_lora(model) if needs_model else None
    variants: dict[str, Any] = {
        "official (grad. checkpointing)": lambda: run_official(
            peft_model, tokenizer, samples, args, True, args.work
        ),
        "official, no checkpointing": lambda: run_official(
            peft_model, tokenizer, samples, args, False, args.work
        ),
    }
    data_dir = args.data.parent
    flex = {"performance.attention": "flex_attention"}
    wenzhen_variants = {
        "wenzhen sdpa 8k rows": {"performance.row_tokens": 8192, "performance.attention": "sdpa"},
        "wenzhen flex 8k rows": {**flex, "performance.row_tokens": 8192},
        "wenzhen flex 8k rows + compile": {
            **flex,
            "performance.row_tokens": 8192,
            "performance.compile": True,
        },
        "wenzhen flex 16k rows + compile": {
            **flex,
            "performance.row_tokens": 16384,
            "performance.compile": True,
        },
        "wenzhen low-mem: 1k rows + checkpointing + compile": {
            **flex,
            "performance.row_tokens": 1024,
            "performance.compile": True,
            "training_args.gradient_checkpointing": True,
        },
        "wenzhen low-mem: 2k rows + checkpointing + compile": {
            **flex,
            "performance.row_tokens": 2048,
            "performance.compile": True,
            "training_args.gradient_checkpointing": True,
        },
    }
    for index, (name, overrides) in enumerate(wenzhen_variants.items()):
        variants[name] = lambda o=overrides, i=index, n=name: run_wenzhen(
            native, data_dir, o, args, args.work, f"wenzhen-{i}", n in args.profile
        )
    unknown = set(args.only or []) - set(variants)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; known: {sorted(variants)}")
    if not args.skip_loss_check:
        try:
            report["first_batch"] = first_batch_losses(peft_model, tokenizer, samples)
            print(json.dumps(report["first_batch"]), flush=True)
        except Exception:
            traceback.print_exc()
    for name, run in variants.items():
        if args.only and name not in args.only:
            continue
        if name.startswith("wenzhen") and peft_model is not None:
            peft_model = model = None  # free the in-process copy before the library loads its own
            reset_peak()
        try:
            row = run()
        except Exception as exc:
            traceback.print_exc()
            row = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        if "tokens_per_second" in row:
            tps = row["tokens_per_second"]
            row["mfu_6n_datasheet"] = 6 * params * tps / (DATASHEET_TFLOPS * 1e12)
            row["mfu_4n_datasheet"] = 4 * params * tps / (DATASHEET_TFLOPS * 1e12)
            row["mfu_6n_measured"] = 6 * params * tps / (measured * 1e12)
            row["mfu_4n_measured"] = 4 * params * tps / (measured * 1e12)
        report["runs"][name] = row
        print(name, json.dumps(row), flush=True)
        write_report(report)  # after every run, so a time limit still leaves the finished ones
    write_report(report)


def merged_with_earlier(report: dict) -> dict:
    """Rows of earlier processes on the same card (variants run with `--only`) plus this process's rows."""
    path = RESULTS / "train_throughput.json"
    if not path.is_file():
        return report
    earlier = json.loads(path.read_text())
    if earlier.get("card") != report["card"] or earlier.get("torch") != report["torch"]:
        return report
    merged = {**earlier, **{k: v for k, v in report.items() if k != "runs"}}
    merged["runs"] = {**earlier.get("runs", {}), **report["runs"]}
    if "first_batch" not in report and "first_batch" in earlier:
        merged["first_batch"] = earlier["first_batch"]
    return merged


def write_report(report: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = merged_with_earlier(report)
    (RESULTS / "train_throughput.json").write_text(json.dumps(report, indent=2))
    base = report["runs"].get("official (grad. checkpointing)", {}).get("tokens_per_second")
    lines = [
        f"# LoRA training throughput, ChatGLM3-6B shapes (random bf16 weights) — {report['card']}, torch {report['torch']}",
        "",
        f"{report['samples']} Toyhom consultations, {report['mean_tokens_per_sample']:.0f} tokens each on average; "
        f"measured bf16 matmul {report['measured_bf16_matmul_tflops']:.0f} TFLOP/s (datasheet {DATASHEET_TFLOPS:.0f}).",
        "",
        "| run | effective tokens/s | vs official | MFU 6N (datasheet / measured) | MFU 4N (datasheet / measured) | peak GPU GiB |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in report["runs"].items():
        if "error" in row:
            lines.append(f"| {name} | failed: {row['error'][:80]} | | | | |")
            continue
        ratio = f"{row['tokens_per_second'] / base:.1f}x" if base else ""
        lines.append(
            f"| {name} | {row['tokens_per_second']:,.0f} | {ratio} | {100 * row['mfu_6n_datasheet']:.1f}% / "
            f"{100 * row['mfu_6n_measured']:.1f}% | {100 * row['mfu_4n_datasheet']:.1f}% / {100 * row['mfu_4n_measured']:.1f}% "
            f"| {row['peak_gpu_gib']:.1f} |"
        )
    if "first_batch" in report:
        fb = report["first_batch"]
        lines += [
            "",
            f"First official batch: padded SDPA loss {fb['official_padded_loss']:.5f}, same samples packed "
            f"(flex attention, labelled-position logits) {fb['wenzhen_packed_loss']:.5f}, |diff| {fb['abs_diff']:.2e}.",
        ]
    for name, row in report["runs"].items():
        if "profile" in row:
            lines += ["", format_profile(f"{name}, two steps after the timed ones", row["profile"])]
    (RESULTS / "train_throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
