"""Dev loss per training token: the shipped `configs/lora.yaml` (batch counted in tokens, `step_tokens: 16384`,
learning rate 5e-4) against its former recipe (4 x 4 conversations a step, learning rate 2e-4), at equal tokens.

Both train the same model on the same prepared data through `wenzhen.train.train` for the same number of training
tokens (each recipe's `max_steps` set from its tokens per step, so each cosine schedule runs to its end), then the
same dev conversations are scored the same way: the token-weighted cross-entropy over every labelled token
(computed here, one conversation at a time, so both recipes are measured identically). Runs on CPU or GPU.

Writes RESULTS/recipe_batch.{json,md}.

    python benchmarks/recipe_batch.py --data DATA_DIR [--model MODEL_DIR] [--tokens 200000] [--results DIR]
"""

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from wenzhen.io import read_jsonl
from wenzhen.models import load_model
from wenzhen.models.embedded import embedded_model_dir
from wenzhen.train.config import load_train_config
from wenzhen.train.encoding import encode_rows
from wenzhen.train.trainer import train

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "configs" / "lora.yaml"
FORMER = {
    "training_args.per_device_train_batch_size": 4,
    "training_args.gradient_accumulation_steps": 4,
    "training_args.learning_rate": 2e-4,
    "performance.step_tokens": None,
}


def dev_loss(model: Any, samples: list, device: torch.device) -> float:
    """Token-weighted cross-entropy over every labelled dev token."""
    total, count = 0.0, 0
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
    return total / count


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, required=True, help="prepared data folder (train.jsonl, dev.jsonl)"
    )
    parser.add_argument("--model", type=Path, default=None, help="default: the embedded demo model")
    parser.add_argument("--tokens", type=int, default=200_000, help="training tokens per recipe")
    parser.add_argument("--dev", type=int, default=50, help="dev conversations scored")
    parser.add_argument(
        "--train-limit", type=int, default=None, help="use only the first N train conversations"
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/recipe_batch"))
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    model_dir = args.model or embedded_model_dir()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    base = load_model(model_dir, dtype="fp32", device="cpu")
    config = load_train_config(SHIPPED)
    data = args.data
    if args.train_limit is not None:
        # A smaller train file (for slow CPUs), written beside the runs; dev.jsonl is copied as it is.
        data = args.work / "data"
        data.mkdir(parents=True, exist_ok=True)
        lines = (args.data / "train.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
        (data / "train.jsonl").write_text("".join(lines[: args.train_limit]), encoding="utf-8")
        (data / "dev.jsonl").write_text(
            (args.data / "dev.jsonl").read_text(encoding="utf-8"), encoding="utf-8"
        )
    train_samples, _ = encode_rows(
        read_jsonl(data / "train.jsonl"),
        base.family,
        base.tokenizer,
        config.max_length,
        config.truncation,
    )
    dev_samples, _ = encode_rows(
        read_jsonl(args.data / "dev.jsonl"), base.family, base.tokenizer, config.max_length, config.truncation
    )
    dev_samples = dev_samples[: args.dev]
    mean = sum(len(s.input_ids) for s in train_samples) / len(train_samples)
    recipes = {
        "former: 4 x 4 conversations, lr 2e-4": (FORMER, 16 * mean),
        "shipped: step_tokens 16384, lr 5e-4": ({}, 16384),
    }
    report: dict[str, Any] = {
        "model": str(model_dir),
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU",
        "data": str(data),
        "train_conversations": len(train_samples),
        "mean_tokens": mean,
        "token_budget": args.tokens,
        "dev_conversations": len(dev_samples),
        "base_dev_loss": dev_loss(base.model.to(device), dev_samples, device),
        "runs": {},
    }
    del base
    for name, (changes, step_tokens) in recipes.items():
        steps = max(1, math.ceil(args.tokens / step_tokens))
        overrides = {
            **changes,
            "training_args.output_dir": str(args.work / name.split(":")[0]),
            "training_args.max_steps": steps,
            "training_args.save_strategy": "no",
            "training_args.eval_strategy": "no",
            "training_args.logging_steps": 1,
            "data_config.test_file": None,
        }
        config = load_train_config(SHIPPED, overrides)
        started = time.monotonic()
        result = train(data, model_dir, config)
        trained = load_model(result.final_dir, base=model_dir, dtype="fp32", device=device)
        report["runs"][name] = {
            "steps": steps,
            "tokens": result.summary["tokens"],
            "dev_loss": dev_loss(trained.model, dev_samples, device),
            "final_train_loss": result.summary["final_loss"],
            "seconds": round(time.monotonic() - started, 1),
        }
        print(name, json.dumps(report["runs"][name]), flush=True)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "recipe_batch.json").write_text(json.dumps(report, indent=2))
    lines = [
        f"# Former vs shipped lora.yaml batch at equal training tokens — {report['device']}",
        "",
        f"Model {Path(report['model']).name}; {report['train_conversations']} training conversations "
        f"({report['mean_tokens']:.0f} tokens on average) from {report['data']}; budget {args.tokens:,} tokens each; "
        f"dev loss = token-weighted cross-entropy over {report['dev_conversations']} dev conversations "
        f"(before training {report['base_dev_loss']:.4f}).",
        "",
        "| recipe | steps | training tokens | dev loss | last train loss | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in report["runs"].items():
        lines.append(
            f"| {name} | {row['steps']} | {row['tokens']:,} | {row['dev_loss']:.4f} | {row['final_train_loss']} | "
            f"{row['seconds']} |"
        )
    (args.results / "recipe_batch.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
