"""Issue #15's training-speed targets in one command per machine: the official recipe, the shipped
`configs/lora.yaml` through the real `wenzhen train` command (automatic performance), the same capped at 24 GiB,
and the best settings; on a host with two GPUs also the plain command on both GPUs against one.

Every wenzhen row is the real command line (`python -m wenzhen train DATA MODEL configs/lora.yaml --output-dir ...
--max-steps N --set training_args.logging_steps=1`) in its own process, so each peak is its own; the rate is the
run's own steady tokens/s (summary.json: steps after the first three, evaluation and saving left out) and the plan
it chose is read from run.json. The official recipe (benchmarks/train_throughput.py's `run_official`: plain
transformers.Trainer, batch 4 padded, gradient checkpointing, LoRA r=8 on q/k/v) runs in the same call on the same
data, timed over the same steps after the same warm-up.

Data: `wenzhen data prepare` on the given Toyhom files (into WORK/data). Model: ChatGLM3-6B shapes with random bf16
weights (`--config`), saved once natively into WORK/model. The 24 GiB cap is
`torch.cuda.set_per_process_memory_fraction` in the training process, which the automatic choice reads.

Writes RESULTS/train_targets-<card>.{json,md}; rows of earlier calls on the same card are kept.

    python benchmarks/train_targets.py --config gpu/chatglm3/chatglm3-6b-config.json \
        --tokenizer gpu/chatglm3/tokenizer.model --corpus gpu/toyhom/内科.txt [--results DIR] [--two-gpus]
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "configs" / "lora.yaml"
CAP_GIB = 24
# The training process of the capped row: the cap first, then the real command line.
CAPPED = (
    "import sys, torch; "
    "torch.cuda.is_available() and "
    "torch.cuda.set_per_process_memory_fraction(min(1.0, {gib} * 2**30 / torch.cuda.mem_get_info(0)[1])); "
    "from wenzhen.cli import main; sys.exit(main(sys.argv[1:]))"
)


def card_name() -> str:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (smoke test)"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def environment(visible: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    return env


def prepare(args: argparse.Namespace) -> tuple[Path, Path]:
    """WORK/data (wenzhen data prepare) and WORK/model (random weights of the official shapes), made once."""
    data, model = args.work / "data", args.work / "model"
    if len(args.corpus) == 1 and (args.corpus[0] / "train.jsonl").is_file():
        data = args.corpus[0]  # already prepared
    elif not (data / "train.jsonl").is_file():
        command = [sys.executable, "-m", "wenzhen", "data", "prepare", *map(str, args.corpus)]
        command += ["--out", str(data), "--force", "--no-progress", "--dev", "50", "--test", "0"]
        subprocess.run(command, check=True, env=environment(None))
    if not (model / "config.json").is_file():
        child = [sys.executable, __file__, "--part", "model", *sys.argv[1:]]
        subprocess.run(child, check=True, env=environment("0" if torch.cuda.is_available() else None))
    return data, model


def build_model(args: argparse.Namespace) -> None:
    """Random bf16 weights of the official shapes, saved natively with the tokenizer (a child process)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from train_throughput import random_model
    from wenzhen.models.chatglm3_tokenizer import build_chatglm3_tokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = random_model(args.config, device=device)
    model.save_pretrained(args.work / "model")
    build_chatglm3_tokenizer(args.tokenizer).save_pretrained(args.work / "model")


def official(args: argparse.Namespace) -> None:
    """The official recipe on the prepared data (a child process); prints one JSON row."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import train_throughput
    from wenzhen.io import read_jsonl
    from wenzhen.models.chatglm3 import ChatGLM3Family
    from wenzhen.models.chatglm3_tokenizer import build_chatglm3_tokenizer
    from wenzhen.train.encoding import encode_rows

    train_throughput.DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = build_chatglm3_tokenizer(args.tokenizer)
    prepared = args.corpus[0] if (args.corpus[0] / "train.jsonl").is_file() else args.work / "data"
    rows = read_jsonl(prepared / "train.jsonl")
    samples, _ = encode_rows(rows, ChatGLM3Family(), tokenizer, 256 + 512 + 1, "official")
    model = train_throughput.official_lora(train_throughput.random_model(args.config))
    timing = argparse.Namespace(warmup=args.warmup, steps=args.official_steps or args.steps)
    row = train_throughput.run_official(model, tokenizer, samples, timing, True, args.work)
    print("ROW " + json.dumps(row), flush=True)


def wenzhen_row(
    args: argparse.Namespace,
    data: Path,
    model: Path,
    name: str,
    extra: list[str],
    visible: str | None,
    cap: bool,
) -> dict[str, Any]:
    """`wenzhen train DATA MODEL configs/lora.yaml` (+ `extra`) in its own process; its summary and plan."""
    out = args.work / "runs" / slug(name)
    command = ["train", str(data), str(model), str(SHIPPED), "--output-dir", str(out)]
    command += [
        "--max-steps",
        str(args.warmup + args.steps),
        "--set",
        "training_args.logging_steps=1",
        *extra,
    ]
    command += [part for pair in args.set for part in ("--set", pair)]
    if cap:
        launcher = [sys.executable, "-c", CAPPED.format(gib=CAP_GIB)]
    else:
        launcher = [sys.executable, "-m", "wenzhen"]
    started = time.monotonic()
    # Beside the results, so a call stopped by its time limit still returns the log of the row it stopped in.
    log = args.results / "logs" / f"{slug(name)}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as handle:
        done = subprocess.run([*launcher, *command], env=environment(visible), stdout=handle, stderr=handle)
    if done.returncode != 0:
        return {
            "error": f"exit {done.returncode}; last lines: {' | '.join(log.read_text().splitlines()[-3:])}"
        }
    summary = json.loads((out / "summary.json").read_text())
    info = json.loads((out / "run.json").read_text())
    losses = [row["loss"] for row in map(json.loads, (out / "metrics.jsonl").open()) if "loss" in row]
    return {
        "command": "wenzhen " + " ".join(command),
        "tokens_per_second": summary["steady_tokens_per_second"],
        "overall_tokens_per_second": summary["tokens_per_second"],
        "train_seconds": summary["train_seconds"],
        "first_step_seconds": summary.get("first_step_seconds"),
        "process_seconds": round(time.monotonic() - started, 1),
        "peak_gpu_gib": summary["peak_memory_bytes"] / 2**30,
        "world_size": summary["world_size"],
        "plan": info["extra"]["performance_plan"],
        "losses": losses,
    }


def run_part(args: argparse.Namespace, part: str) -> dict[str, Any]:
    """A child process of this script for `part`; its JSON row."""
    child = [sys.executable, __file__, "--part", part, *sys.argv[1:]]
    done = subprocess.run(
        child, env=environment("0" if torch.cuda.is_available() else None), capture_output=True, text=True
    )
    rows = [line[4:] for line in done.stdout.splitlines() if line.startswith("ROW ")]
    if done.returncode != 0 or not rows:
        return {"error": f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"}
    return json.loads(rows[-1])


def results_path(args: argparse.Namespace, card: str, suffix: str) -> Path:
    return args.results / f"train_targets-{slug(card)}.{suffix}"


def write_report(args: argparse.Namespace, report: dict[str, Any]) -> None:
    """JSON and Markdown, merged with earlier calls on the same card."""
    args.results.mkdir(parents=True, exist_ok=True)
    path = results_path(args, report["card"], "json")
    if path.is_file():
        earlier = json.loads(path.read_text())
        report = {**earlier, **report, "runs": {**earlier.get("runs", {}), **report["runs"]}}
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    runs = report["runs"]
    base = runs.get("official recipe (1 GPU)", {}).get("tokens_per_second")
    lines = [
        f"# Training-speed targets (issue #15) — {report['card']}, torch {report['torch']}",
        "",
        f"ChatGLM3-6B shapes, random bf16 weights; Toyhom consultations via `wenzhen data prepare`; "
        f"{args.warmup} warm-up + {args.steps} timed steps; steady tokens/s (non-padding input tokens, all GPUs).",
        "",
        "| run | steady tokens/s | vs official | peak GPU GiB | first step s | plan (rows x per step, checkpointing, "
        "compile, loss) |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in runs.items():
        if "error" in row:
            lines.append(f"| {name} | failed: {row['error'][:160]} | | | | |")
            continue
        rate = row["tokens_per_second"] or 0.0
        ratio = f"{rate / base:.1f}x" if base else ""
        plan = row.get("plan")
        described = (
            f"{plan['row_tokens']} x {plan['gradient_accumulation_steps']}, "
            f"{'on' if plan['gradient_checkpointing'] else 'off'}, {'on' if plan['compile'] else 'off'}, "
            f"{'fused' if plan.get('fused_loss') else 'chunked'}"
            if plan
            else "batch 4 padded, on, off, transformers' loss"
        )
        first = row.get("first_step_seconds")
        first_text = f"{first:.0f}" if first is not None else ""
        lines.append(
            f"| {name} | {rate:,.0f} | {ratio} | {row['peak_gpu_gib']:.1f} | {first_text} | {described} |"
        )
    one, two = (
        runs.get("shipped lora.yaml, 1 GPU (CUDA_VISIBLE_DEVICES=0)"),
        runs.get("shipped lora.yaml, 2 GPUs"),
    )
    if one and two and "error" not in one and "error" not in two:
        gap = max(abs(a - b) for a, b in zip(one["losses"], two["losses"], strict=False))
        lines += [
            "",
            f"2 GPUs / 1 GPU: {two['tokens_per_second'] / one['tokens_per_second']:.2f}x; largest per-step training "
            f"loss difference over {min(len(one['losses']), len(two['losses']))} steps: {gap:.4f} "
            "(LoRA dropout draws differ per process).",
        ]
    first_losses = {
        name: row["losses"][0]
        for name, row in runs.items()
        if name.startswith("best: 16k") and row.get("losses")
    }
    if len(first_losses) == 2:
        lines += [
            "",
            "First-step training loss, same rows and seed: "
            + "; ".join(f"{name.split(',')[1].strip()} {loss:.5f}" for name, loss in first_losses.items())
            + ".",
        ]
    lines += [f"\n{note}" for note in report.get("notes", [])]
    results_path(args, report["card"], "md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, required=True, help="official chatglm3-6b config.json")
    parser.add_argument("--tokenizer", type=Path, required=True, help="ChatGLM3 tokenizer.model")
    parser.add_argument(
        "--corpus",
        type=Path,
        nargs="+",
        required=True,
        help="Toyhom files for data prepare, or a prepared folder",
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/train_targets"))
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument(
        "--warmup", type=int, default=3, help="steps before timing (the run's own warm-up is 3)"
    )
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument(
        "--official-steps",
        type=int,
        default=None,
        help="timed steps of the official recipe (default --steps)",
    )
    parser.add_argument("--two-gpus", action="store_true", help="also the plain command on two GPUs")
    parser.add_argument("--only", nargs="*", default=None, help="run only the rows whose names contain these")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        help="extra KEY=VALUE for every wenzhen row (CPU smoke tests only)",
    )
    parser.add_argument("--part", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.part == "model":
        return build_model(args)
    if args.part == "official":
        return official(args)
    data, model = prepare(args)
    # The best settings: one long row a step, no recomputation, compiled layers; logged every 10 steps as the
    # shipped config is (logging waits for the GPU; the steps between do not, see trainer.HostReadings).
    best = ["--batch-size", "1", "--set", "training_args.gradient_checkpointing=false"]
    best += ["--set", "performance.compile=true", "--set", "training_args.logging_steps=10"]
    fused, chunked = ["--set", "performance.fused_loss=true"], ["--set", "performance.fused_loss=false"]

    def best_row(rows: int, loss: list[str]) -> Any:
        name = f"best-{rows // 1024}k-{loss[-1].split('=')[1]}"
        extra = [*best, *loss, "--set", f"performance.row_tokens={rows}"]
        return lambda: wenzhen_row(args, data, model, name, extra, "0", cap=False)

    rows: dict[str, Any] = {
        "official recipe (1 GPU)": lambda: run_part(args, "official"),
        "best: 16k rows, fused loss (liger), compile, no checkpointing (1 GPU)": best_row(16384, fused),
        "best: 16k rows, chunked loss, compile, no checkpointing (1 GPU)": best_row(16384, chunked),
        "best: 24k rows, fused loss (liger), compile, no checkpointing (1 GPU)": best_row(24576, fused),
        "best: 32k rows, fused loss (liger), compile, no checkpointing (1 GPU)": best_row(32768, fused),
        "shipped lora.yaml, 1 GPU (CUDA_VISIBLE_DEVICES=0)": lambda: wenzhen_row(
            args, data, model, "shipped-1gpu", [], "0", cap=False
        ),
        f"shipped lora.yaml, 1 GPU capped at {CAP_GIB} GiB": lambda: wenzhen_row(
            args, data, model, "shipped-capped", [], "0", cap=True
        ),
    }
    if args.two_gpus:
        rows["shipped lora.yaml, 2 GPUs"] = lambda: wenzhen_row(
            args, data, model, "shipped-2gpu", [], None, cap=False
        )
    report: dict[str, Any] = {"card": card_name(), "torch": torch.__version__, "runs": {}}
    for name, run in rows.items():
        if args.only is not None and not any(word in name for word in args.only):
            continue
        started = time.monotonic()
        report["runs"][name] = run()
        print(
            f"{name}: {json.dumps(report['runs'][name])[:400]} ({time.monotonic() - started:.0f} s)",
            flush=True,
        )
        write_report(args, report)


if __name__ == "__main__":
    main()
