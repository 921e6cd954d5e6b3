"""Held-out preference accuracy of a trained preference adapter on any pairs file, against its reference.

The metric of summary.json's `dev_preference_after` (`wenzhen.train.preference.preference_metrics`): for each
pair, whether the implicit reward beta * log(pi / pi_ref) prefers the chosen answer (ties half), the mean margin
and the log-prob accuracy, overall and per kind (`answer` / `safety` pairs of `wenzhen data pairs`). Training scores
only its own dev split; this scores a finished adapter on other pairs, e.g. safety pairs built from red-flag
questions the training never saw. The policy is ADAPTER (on the base its run.json names); the reference is
`--reference` (the SFT adapter the preference run started from) or that base alone. Pairs are encoded as training
encodes them (the model family's chat format, `--max-input-length` / `--max-output-length`).

    python benchmarks/preference_accuracy.py runs/dpo/final --reference runs/demo/train/final \
        --pairs runs/safety-pairs/dev.jsonl --max-output-length 48 --out benchmarks/results/preference_accuracy
"""

import argparse
import json
import time
from pathlib import Path

import torch

from wenzhen.config import validate_config
from wenzhen.io import read_jsonl
from wenzhen.models import load_model
from wenzhen.models.loading import resolve_base
from wenzhen.train.config import TrainConfig
from wenzhen.train.preference import encode_examples, preference_metrics, read_examples


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("adapter", type=Path, help="the preference run's final adapter")
    parser.add_argument("--reference", type=Path, help="reference adapter (default: the base alone)")
    parser.add_argument("--pairs", type=Path, required=True, help="JSONL pairs (`wenzhen data pairs` output)")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--max-input-length", type=int, default=512)
    parser.add_argument("--max-output-length", type=int, default=512)
    parser.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    args = parser.parse_args()

    started = time.monotonic()
    policy = load_model(args.adapter, dtype=torch.float32, device="cpu")
    reference = load_model(
        args.reference or resolve_base(args.adapter, None), dtype=torch.float32, device="cpu"
    )
    config = validate_config(
        TrainConfig, {"max_input_length": args.max_input_length, "max_output_length": args.max_output_length}
    )
    examples, problems = read_examples(read_jsonl(args.pairs), args.pairs.name)
    rows, report = encode_examples(examples, policy, config, True, args.pairs.name)
    metrics = preference_metrics(policy.model, reference.model.eval(), rows, report.kinds, args.beta)
    result = {
        "adapter": str(args.adapter),
        "reference": str(args.reference or "base"),
        "pairs": str(args.pairs),
        "kept": report.kept,
        "skipped": report.skipped + len(problems),
        "beta": args.beta,
        "seconds": round(time.monotonic() - started, 1),
        "metrics": metrics,
    }
    print(json.dumps(result, indent=2, ensure_ascii=False))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        lines = [
            f"# Held-out preference accuracy: `{args.adapter}` against `{result['reference']}`",
            "",
            f"Pairs: `{args.pairs}` ({report.kept} scored, {result['skipped']} skipped), beta {args.beta}, CPU.",
            "",
            "| pairs | n | reward accuracy | reward margin | log-prob accuracy |",
            "|---|---|---|---|---|",
        ]
        for kind, row in [("all", metrics), *metrics.get("by_kind", {}).items()]:
            lines.append(
                f"| {kind} | {row['pairs']} | {row['reward_accuracy']} | {row['reward_margin']} | "
                f"{row['logp_accuracy']} |"
            )
        args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
