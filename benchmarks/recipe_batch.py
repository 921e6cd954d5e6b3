"""Dev loss per training token: the shipped `configs/lora.yaml` (batch counted in tokens, `step_tokens: 16384`,
learning rate 5e-4) against its former recipe (4 x 4 conversations a step, learning rate 2e-4), at equal tokens.

Both train the same model (by default the demo's embedded SmolLM2-135M-Instruct) on the same prepared data through
`wenzhen.train.train` for the same number of training tokens (each recipe's `max_steps` set from its tokens per
step, so each cosine schedule runs to its end). During training, at every quarter of the token budget, the same
dev conversations are scored the same way: the token-weighted cross-entropy over every labelled token (computed
here, one conversation at a time, in fp32), so the curves compare dev loss against training tokens.

The shipped step is 16,384 ChatGLM3 tokens. The demo model's tokenizer spends more tokens on the same Chinese
text, so the step is translated as the same conversations: 16,384 x (demo tokens / ChatGLM3 tokens of the same
conversations), which keeps the ratio of the two recipes' batches what it is on ChatGLM3 (`--reference-tokenizer`,
the ChatGLM3 tokenizer.model; without it the step is 16,384 demo tokens). `--scale S` divides both steps by S
(the former recipe then takes 16 / S conversations a step), so a small CPU budget still runs enough steps for a
curve; the ratio between the recipes, which the learning rates answer to, is unchanged.

Steps are packed as on a GPU: the former recipe concatenates its conversations into one row, the shipped one fills
rows of at most 2,048 tokens. `--shipped-lr` runs the shipped recipe at other learning rates. Runs are added to an
existing RESULTS/recipe_batch.json of the same budget.

    python benchmarks/recipe_batch.py --data DATA_DIR [--model MODEL_DIR] [--reference-tokenizer tokenizer.model] \
        [--scale 8] [--tokens 32768] [--results DIR]
"""

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from wenzhen.io import read_jsonl
from wenzhen.models import load_model
from wenzhen.models.embedded import embedded_model_dir
from wenzhen.train.config import load_train_config
from wenzhen.train.encoding import EncodedSample, encode_rows
from wenzhen.train.trainer import train

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "configs" / "lora.yaml"
FORMER_LR = 2e-4
FORMER_CONVERSATIONS = 16  # 4 x 4
SHIPPED_STEP_TOKENS = 16384
ROW_TOKENS = 2048
CURVE_POINTS = 4


def dev_loss(model: Any, samples: list[EncodedSample], device: torch.device) -> float:
    """Token-weighted cross-entropy over every labelled dev token."""
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for sample in samples:
            ids = torch.tensor([sample.input_ids], device=device)
            labels = torch.tensor([sample.labels], device=device)
            logits = model(input_ids=ids).logits[0, :-1].float()
            target = labels[0, 1:]
            keep = target != -100
            total += torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="sum").item()
            count += int(keep.sum())
    model.train(was_training)
    return total / count


class DevCurve(TrainerCallback):
    """Scores the dev set each time training passes another `1 / CURVE_POINTS` of the token budget."""

    def __init__(self, samples: list[EncodedSample], budget: int, device: torch.device) -> None:
        self.samples, self.budget, self.device = samples, budget, device
        self.points: list[dict[str, float]] = []

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        tokens = int(state.num_input_tokens_seen or 0)
        due = self.budget * (len(self.points) + 1) / CURVE_POINTS
        if tokens >= due or state.global_step >= state.max_steps:
            loss = dev_loss(kwargs["model"], self.samples, self.device)
            self.points.append({"step": state.global_step, "tokens": tokens, "dev_loss": round(loss, 5)})
            print(f"  step {state.global_step}: {tokens:,} tokens, dev loss {loss:.4f}", flush=True)


def subset(data: Path, work: Path, limit: int | None) -> Path:
    """`data`, or a copy with only the first `limit` training conversations (dev.jsonl as it is)."""
    if limit is None:
        return data
    smaller = work / "data"
    smaller.mkdir(parents=True, exist_ok=True)
    lines = (data / "train.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (smaller / "train.jsonl").write_text("".join(lines[:limit]), encoding="utf-8")
    (smaller / "dev.jsonl").write_text((data / "dev.jsonl").read_text(encoding="utf-8"), encoding="utf-8")
    return smaller


def recipes(
    step_tokens: int, scale: int, shipped_lrs: list[float], former: bool
) -> dict[str, tuple[dict[str, Any], int | None]]:
    """name -> (config overrides, tokens per step; None: counted in conversations)."""
    chosen: dict[str, tuple[dict[str, Any], int | None]] = {}
    conversations = max(1, FORMER_CONVERSATIONS // scale)
    if former:
        chosen[f"former: {conversations} conversations a step, lr {FORMER_LR:g}"] = (
            {
                "training_args.per_device_train_batch_size": conversations,
                "training_args.gradient_accumulation_steps": 1,
                "training_args.learning_rate": FORMER_LR,
                "performance.step_tokens": None,
            },
            None,
        )
    rows = math.ceil(step_tokens / ROW_TOKENS)
    for lr in shipped_lrs:
        changes = {
            "performance.row_tokens": round_up(math.ceil(step_tokens / rows), 64),
            "training_args.per_device_train_batch_size": 1,
            "training_args.gradient_accumulation_steps": rows,
            "training_args.learning_rate": lr,
        }
        chosen[f"shipped: {step_tokens:,} tokens a step, lr {lr:g}"] = (changes, step_tokens)
    return chosen


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def mean_tokens(samples: list[EncodedSample]) -> float:
    return sum(len(s.input_ids) for s in samples) / len(samples)


def reference_mean(tokenizer_model: Path, data: Path, config: Any) -> float:
    """Mean ChatGLM3 tokens of the training conversations, encoded as `wenzhen train` encodes them."""
    from wenzhen.models.chatglm3 import ChatGLM3Family
    from wenzhen.models.chatglm3_tokenizer import build_chatglm3_tokenizer

    tokenizer = build_chatglm3_tokenizer(tokenizer_model)
    rows = read_jsonl(data / "train.jsonl")
    samples, _ = encode_rows(rows, ChatGLM3Family(), tokenizer, config.max_length, config.truncation)
    return mean_tokens(samples)


def write_results(report: dict[str, Any], results: Path) -> None:
    """recipe_batch.json (merged with earlier runs) and recipe_batch.md."""
    results.mkdir(parents=True, exist_ok=True)
    path = results / "recipe_batch.json"
    if path.is_file():
        earlier = json.loads(path.read_text())
        if earlier.get("token_budget") == report["token_budget"] and earlier.get("model") == report["model"]:
            report = {**report, "runs": {**earlier.get("runs", {}), **report["runs"]}}
    path.write_text(json.dumps(report, indent=2))
    lines = [
        f"# Former vs shipped lora.yaml batch at equal training tokens — {report['device']}",
        "",
        f"Model {Path(report['model']).name}; {report['train_conversations']} training conversations "
        f"({report['mean_tokens']:.0f} tokens on average; {report['chatglm3_mean_tokens'] or 0:.0f} ChatGLM3 "
        f"tokens); both steps divided by {report['scale']} (module docstring); budget "
        f"{report['token_budget']:,} training tokens per recipe; dev loss = token-weighted cross-entropy over "
        f"{report['dev_conversations']} dev conversations (before training {report['base_dev_loss']:.4f}), "
        "scored at each quarter of the budget.",
        "",
        "| recipe | steps | training tokens | dev loss at 1/4, 1/2, 3/4, end | last train loss | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in report["runs"].items():
        curve = ", ".join(
            f"{point['dev_loss']:.4f} ({point['tokens'] / 1000:.0f}k)" for point in row["curve"]
        )
        lines.append(
            f"| {name} | {row['steps']} | {row['tokens']:,} | {curve} | {row['final_train_loss']} | "
            f"{row['seconds']} |"
        )
    lines += [f"\n{note}" for note in report.get("notes", [])]
    (results / "recipe_batch.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, required=True, help="prepared data folder (train.jsonl, dev.jsonl)"
    )
    parser.add_argument("--model", type=Path, default=None, help="default: the embedded demo model")
    parser.add_argument("--tokens", type=int, default=32_768, help="training tokens per recipe")
    parser.add_argument("--scale", type=int, default=8, help="divide both recipes' steps by this")
    parser.add_argument(
        "--reference-tokenizer", type=Path, default=None, help="ChatGLM3 tokenizer.model (see above)"
    )
    parser.add_argument("--dev", type=int, default=12, help="dev conversations scored")
    parser.add_argument(
        "--train-limit", type=int, default=None, help="use only the first N train conversations"
    )
    parser.add_argument(
        "--shipped-lr", type=float, nargs="+", default=[5e-4], help="learning rates of the shipped recipe"
    )
    parser.add_argument("--no-former", action="store_true", help="skip the former recipe (already measured)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/recipe_batch"))
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    model_dir = args.model or embedded_model_dir()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    base = load_model(model_dir, dtype="fp32", device="cpu")
    config = load_train_config(SHIPPED)
    data = subset(args.data, args.work, args.train_limit)
    encode = [base.family, base.tokenizer, config.max_length, config.truncation]
    train_samples, _ = encode_rows(read_jsonl(data / "train.jsonl"), *encode)  # type: ignore[arg-type]
    dev_samples, _ = encode_rows(read_jsonl(data / "dev.jsonl"), *encode)  # type: ignore[arg-type]
    dev_samples = dev_samples[: args.dev]
    mean = mean_tokens(train_samples)
    glm_mean = reference_mean(args.reference_tokenizer, data, config) if args.reference_tokenizer else None
    step_tokens = round(SHIPPED_STEP_TOKENS * (mean / glm_mean if glm_mean else 1.0) / args.scale)
    report: dict[str, Any] = {
        "model": str(model_dir),
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU",
        "train_conversations": len(train_samples),
        "mean_tokens": mean,
        "chatglm3_mean_tokens": glm_mean,
        "scale": args.scale,
        "token_budget": args.tokens,
        "dev_conversations": len(dev_samples),
        "base_dev_loss": dev_loss(base.model.to(device), dev_samples, device),
        "runs": {},
    }
    del base
    chosen = recipes(step_tokens, args.scale, args.shipped_lr, not args.no_former)
    for name, (changes, tokens_per_step) in chosen.items():
        conversations = changes["training_args.per_device_train_batch_size"]
        steps = max(1, math.ceil(args.tokens / (tokens_per_step or conversations * mean)))
        overrides = {
            **changes,
            "training_args.output_dir": str(args.work / f"run-{len(report['runs'])}-{steps}"),
            "training_args.max_steps": steps,
            "training_args.save_strategy": "no",
            "training_args.eval_strategy": "no",
            "training_args.logging_steps": 1,
            "data_config.test_file": None,
        }
        config = load_train_config(SHIPPED, overrides)
        curve = DevCurve(dev_samples, args.tokens, device)
        started = time.monotonic()
        result = train(data, model_dir, config, callbacks=[curve])
        report["runs"][name] = {
            "steps": steps,
            "tokens": result.summary["tokens"],
            "curve": curve.points,
            "dev_loss": curve.points[-1]["dev_loss"],
            "final_train_loss": result.summary["final_loss"],
            "seconds": round(time.monotonic() - started, 1),
        }
        print(name, json.dumps(report["runs"][name]), flush=True)
        write_results(report, args.results)


if __name__ == "__main__":
    main()
