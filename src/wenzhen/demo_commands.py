"""`wenzhen demo`: the whole pipeline on the embedded model and the bundled sample corpus (`make demo`)."""

import argparse
import sys
from pathlib import Path
from typing import Any

from wenzhen.config import load_yaml_config


def register(subparsers: Any) -> None:
    """Add `wenzhen demo`."""
    parser = subparsers.add_parser(
        "demo",
        help="run the whole pipeline offline on the embedded SmolLM2-135M and the bundled sample corpus",
        description="Prepare the bundled sample corpus, evaluate the embedded SmolLM2-135M-Instruct on the held-out "
        "test split, LoRA-fine-tune it for a few minutes on the CPU, evaluate again, compare (Markdown, JSON, PNG "
        "chart), merge the adapter, answer two sample questions with the merged model and print the commands "
        "that open it in the chat, the web UI and the API. Needs no network. Each step writes its own folder "
        "under --out; demo_report.md ties them together. SmolLM2-135M is a small English-first model: the "
        "demo shows the pipeline, not medical skill.",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("runs/demo"),
        help="output folder (default runs/demo; an earlier demo there is replaced)",
    )
    parser.add_argument("--config", type=Path, help="YAML file with a DemoConfig (see configs/demo.yaml)")
    parser.add_argument("--model", help="base model directory instead of the embedded SmolLM2-135M")
    parser.add_argument("--max-steps", type=int, help="training steps (default 40)")
    parser.add_argument("--minutes", type=float, help="training time budget in minutes (default 4)")
    parser.add_argument("--eval-samples", type=int, help="held-out conversations scored before and after (8)")
    parser.add_argument("--force", action="store_true", help="use --out even if something else made it")
    parser.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from wenzhen.demo import REPORT_MD, DemoConfig, run_demo

    config = load_yaml_config(DemoConfig, args.config) if args.config else DemoConfig()
    if args.model is not None:
        config.model = args.model
    if args.max_steps is not None:
        config.train.training_args.max_steps = args.max_steps
    if args.minutes is not None:
        config.train_minutes = args.minutes
    if args.eval_samples is not None:
        config.eval_samples = args.eval_samples
    run_demo(args.out, config, force=args.force, out=sys.stdout)
    print()
    print((args.out / REPORT_MD).read_text(encoding="utf-8"))
    return 0
