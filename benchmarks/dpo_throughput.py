"""Preference-training throughput against the project's own SFT throughput, on one GPU, in one run (issue #17).

The SFT reference is what `wenzhen train DATA MODEL configs/lora.yaml` achieves on the card: the shipped config with
its automatic performance (token-counted step, rows and checkpointing chosen for the memory, compiled layers). The
preference rows are the shipped `configs/dpo.yaml` / `configs/orpo.yaml` with their automatic performance, at the
same optimizer step (`performance.step_tokens` of lora.yaml, 16,384 tokens), and the DPO recipe's own step (16
pairs) as written. Every row goes through the library function the CLI calls (`wenzhen.train.train` on the loaded
shipped YAML with command-line-style overrides), one after the other in this process; the compiled-graph cache is
reset and the GPU memory released between rows, and each row's peak is its own.

ChatGLM3-6B shapes with random bf16 weights (saved once); real Toyhom consultations (`wenzhen data prepare`); pairs
from the same consultations (chosen = the doctor's answer, rejected = another consultation's answer: contents do not
matter for speed, the lengths are real).

Rates are steady (StepClock: the optimizer steps after the first three). SFT: non-padding tokens/s. Preference:
prompt + chosen + rejected tokens/s (each prompt once, the issue's unit) = the steady rate of tokens the model reads
(TRL feeds the prompt once per answer) x the data's exact ratio of the two counts. The ratio DPO / SFT is the
issue's target (>= 0.5). Writes OUT.json and OUT.md after every row.

    python benchmarks/dpo_throughput.py --config gpu/chatglm3/chatglm3-6b-config.json \
        --tokenizer gpu/chatglm3/tokenizer.model --corpus gpu/toyhom/内科.txt --out $OUT/dpo_throughput-h200
"""

import argparse
import gc
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from wenzhen.io import read_jsonl, write_jsonl
from wenzhen.train.config import load_train_config
from wenzhen.train.trainer import train

ROOT = Path(__file__).resolve().parents[1]
STEP_TOKENS = 16384  # configs/lora.yaml's performance.step_tokens
# (row name, shipped config, data file, extra overrides)
ROWS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "sft": ("lora.yaml", "sft.jsonl", {}),
    "dpo": ("dpo.yaml", "pairs.jsonl", {"performance.step_tokens": STEP_TOKENS}),
    "orpo": ("orpo.yaml", "pairs.jsonl", {"performance.step_tokens": STEP_TOKENS}),
    "dpo-recipe-step": ("dpo.yaml", "pairs.jsonl", {}),
    # The breakdown: the same as `dpo` with the reference log-probabilities computed before training (not timed),
    # so its steady rate is the policy's forward + backward alone.
    "dpo-without-reference-pass": (
        "dpo.yaml",
        "pairs.jsonl",
        {"performance.step_tokens": STEP_TOKENS, "preference.precompute_ref_log_probs": True},
    ),
}


def prepare_data(corpus: list[Path], work: Path, seed: int, limit: int) -> Path:
    """WORK/data: `wenzhen data prepare` on the corpus, then sft.jsonl (its first `limit` conversations) and
    pairs.jsonl (from the same conversations)."""
    data = work / "data"
    if not (data / "train.jsonl").is_file():
        command = [sys.executable, "-m", "wenzhen", "data", "prepare", *map(str, corpus), "--out", str(data)]
        subprocess.run([*command, "--force", "--no-progress", "--dev", "50", "--test", "0"], check=True)
    single = [
        row for row in read_jsonl(data / "train.jsonl") if row["conversations"][-1]["role"] == "assistant"
    ]
    answers = [row["conversations"][-1]["content"] for row in single]
    shuffled = answers[:]
    random.Random(seed).shuffle(shuffled)
    pairs = [
        {"conversations": row["conversations"][:-1], "chosen": chosen, "rejected": rejected}
        for row, chosen, rejected in zip(single, answers, shuffled, strict=True)
        if chosen != rejected
    ]
    write_jsonl(data / "sft.jsonl", single)
    write_jsonl(data / "pairs.jsonl", pairs)
    return data


def build_model(config: Path, tokenizer: Path, folder: Path, device: str) -> None:
    """Random bf16 weights of the official shapes, saved natively with the tokenizer (once; train_targets.py saves
    the same model, so `--model` can reuse its folder)."""
    if (folder / "config.json").is_file():
        return
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from train_throughput import random_model
    from wenzhen.models.chatglm3_tokenizer import build_chatglm3_tokenizer

    model = random_model(config, device=device)
    model.save_pretrained(folder)
    build_chatglm3_tokenizer(tokenizer).save_pretrained(folder)
    del model
    release(device)


def release(device: str) -> None:
    """Free what the previous row left: compiled graphs, Python objects, cached GPU blocks; zero the peak."""
    torch._dynamo.reset()
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def run_row(name: str, data: Path, model: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One shipped config through `wenzhen.train.train`; its steady rate, plan and peak."""
    config_name, train_file, extra = ROWS[name]
    out = args.work / "runs" / name
    overrides: dict[str, Any] = {
        "training_args.output_dir": str(out),
        "training_args.max_steps": 3 + args.steps,
        "training_args.save_strategy": "no",
        "training_args.eval_strategy": "no",
        "training_args.logging_steps": 1,
        "data_config.train_file": train_file,
        "data_config.val_file": None,
        "data_config.test_file": None,
        **extra,
    }
    if args.device == "cpu":
        overrides["training_args.use_cpu"] = True
    config = load_train_config(ROOT / "configs" / config_name, overrides)
    release(args.device)
    started = time.monotonic()
    summary = train(data, model, config).summary
    info = json.loads((out / "run.json").read_text())
    plan = info.get("performance_plan") or info.get("extra", {}).get("performance_plan")
    row = {
        "config": f"configs/{config_name}" + "".join(f" --set {k}={v}" for k, v in extra.items()),
        "steps": summary["steps"],
        "wall_seconds": round(time.monotonic() - started, 1),
        "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if args.device == "cuda"
        else None,
        "plan": plan,
        "losses": [row["loss"] for row in map(json.loads, (out / "metrics.jsonl").open()) if "loss" in row],
    }
    if name == "sft":
        row["tokens_per_second"] = summary["steady_tokens_per_second"]
    else:
        row["tokens_per_second"] = summary["steady_pair_tokens_per_second"]
        row["sequence_tokens_per_second"] = summary["steady_tokens_per_second"]
        encoded = json.loads((out / "preference.json").read_text())["train"]
        row["pairs"] = encoded["kept"]
    return row


def sft_from_file(path: Path, name: str | None) -> dict[str, Any]:
    """The SFT row of benchmarks/train_targets.py's results written earlier in the same device call: `name`, or the
    shipped lora.yaml on one GPU."""
    runs = json.loads(path.read_text())["runs"]
    if name is None:
        name = next((key for key in runs if key.startswith("shipped lora.yaml, 1 GPU (")), None)
    if name not in runs or "error" in runs[name]:
        raise SystemExit(f"{path} has no usable row {name!r}; rows: {', '.join(runs)}")
    row = runs[name]
    return {
        "config": f"{name} (benchmarks/train_targets.py, same device call: {path.name})",
        "steps": 1,
        "wall_seconds": row.get("process_seconds") or 0.0,
        "peak_gpu_gib": round(row["peak_gpu_gib"], 2),
        "plan": row.get("plan"),
        "tokens_per_second": row["tokens_per_second"],
    }


def write_report(report: dict[str, Any], out: Path) -> None:
    """OUT.json and OUT.md (rewritten after every row)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    runs = report["runs"]
    sft = (runs.get("sft") or {}).get("tokens_per_second")
    lines = [
        f"# Preference vs SFT LoRA throughput ({report['card']}, torch {report['torch']})",
        "",
        "`benchmarks/dpo_throughput.py`: ChatGLM3-6B shapes, random bf16 weights; Toyhom consultations; shipped "
        f"configs with automatic performance; 3 warm-up + {report['timed_steps']} timed steps; steady rates.",
        "",
        "| row | config | tokens/s | / SFT | s/step | peak GPU GiB | plan |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in runs.items():
        if "error" in row:
            lines.append(f"| {name} | failed: {row['error'][:200]} | | | | | |")
            continue
        rate = row["tokens_per_second"] or 0.0
        ratio = f"{rate / sft:.3f}" if sft and name != "sft" else ""
        plan = row["plan"] or {}
        described = (
            f"{plan.get('row_tokens') or ''} batch {plan.get('per_device_train_batch_size')} x "
            f"{plan.get('gradient_accumulation_steps')}, checkpointing {plan.get('gradient_checkpointing')}, "
            f"compile {plan.get('compile')}"
        )
        unit = "" if name == "sft" else " (prompt+chosen+rejected)"
        seconds = row["wall_seconds"] / max(row["steps"], 1)
        lines.append(
            f"| {name} | `{row['config']}` | {rate:,.0f}{unit} | {ratio} | {seconds:.2f} (wall incl. load, "
            "compile) | "
            f"{row['peak_gpu_gib']} | {described} |"
        )
    dpo = runs.get("dpo") or {}
    if dpo.get("tokens_per_second") and dpo.get("sequence_tokens_per_second"):
        share = dpo["tokens_per_second"] / dpo["sequence_tokens_per_second"]
        lines += [
            "",
            f"Breakdown: TRL reads each prompt once per answer, so prompt+chosen+rejected tokens are {share:.3f} of the "
            "tokens the model reads; per token read, DPO runs the policy forward + backward (as SFT: 4N FLOPs with "
            "frozen base weights) plus the reference forward (2N), 1.5x SFT's arithmetic. At SFT's efficiency the "
            f"ceiling is {share:.3f} x 2/3 = {share * 2 / 3:.3f} of the SFT rate. `dpo-without-reference-pass` is "
            "the loop with the reference log-probabilities computed before training (that pass not timed).",
        ]
    lines += ["", "Plans:", ""] + [
        f"- {name}: {(row.get('plan') or {}).get('reason', '')}"
        for name, row in runs.items()
        if "plan" in row
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config", type=Path, required=True, help="official chatglm3 config.json (6B shapes)"
    )
    parser.add_argument("--tokenizer", type=Path, required=True, help="ChatGLM3 tokenizer.model")
    parser.add_argument("--corpus", type=Path, nargs="+", required=True, help="Toyhom files for data prepare")
    parser.add_argument("--work", type=Path, default=Path("/tmp/dpo-throughput"))
    parser.add_argument("--steps", type=int, default=5, help="timed steps after the 3 warm-up steps")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument(
        "--limit",
        type=int,
        default=1200,
        help="conversations (and pairs) encoded: enough for the timed steps",
    )
    parser.add_argument("--device", default="cuda", help="cpu only for a smoke test at tiny size")
    parser.add_argument(
        "--model", type=Path, help="an already saved random 6B model (e.g. train_targets.py's WORK/model)"
    )
    parser.add_argument(
        "--sft-from",
        type=Path,
        help="take the SFT row from train_targets.py's results JSON written earlier in the same device call",
    )
    parser.add_argument("--sft-row", help="that file's row name (default: the shipped lora.yaml on 1 GPU)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "dpo_throughput")
    args = parser.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    data = prepare_data(args.corpus, args.work, seed=0, limit=args.limit)
    model = args.model if args.model and (args.model / "config.json").is_file() else args.work / "model"
    build_model(args.config, args.tokenizer, model, args.device)
    report: dict[str, Any] = {
        "card": torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU (smoke test, tiny model)",
        "torch": torch.__version__,
        "timed_steps": args.steps,
        "runs": {},
    }
    if args.sft_from is not None:
        report["runs"]["sft"] = sft_from_file(args.sft_from, args.sft_row)
        write_report(report, args.out)
    for name in args.rows:
        try:
            report["runs"][name] = run_row(name, data, model, args)
        except Exception as exc:  # one failed row (say, out of memory) must not lose the others
            report["runs"][name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        print(name, json.dumps(report["runs"][name]), file=sys.stderr, flush=True)
        write_report(report, args.out)
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
