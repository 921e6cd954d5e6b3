"""`wenzhen chat`."""

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any

from wenzhen.chat import one_shot, run_repl
from wenzhen.cli_options import add_dtype_option
from wenzhen.config import load_yaml_config, validate_config
from wenzhen.consultation import ConsultationPolicy
from wenzhen.generation import ChatEngine, GenerationSettings, warm_up
from wenzhen.models import load_model
from wenzhen.serve.config import ServingConfig


def register(subparsers: Any) -> None:
    """Add `wenzhen chat`."""
    parser = subparsers.add_parser(
        "chat",
        help="chat with a model in the terminal (streaming, multi-turn), or answer one --prompt",
        description="Chat with MODEL (a model directory, a merged export or an adapter directory) in the terminal. "
        "Answers stream as they are generated; the conversation is kept and its oldest turns are dropped when it "
        "outgrows the context window (the system prompt is always kept). Type /clear to forget the conversation, "
        "/system TEXT to set the system prompt, /history to show it, /exit (or Ctrl-D) to leave; Ctrl-C stops "
        "an answer. Red-flag symptoms get emergency guidance before the answer, from the same consultation policy "
        "as `wenzhen api` and `wenzhen web` (--config takes their serving config). With --prompt, print one "
        "answer and exit.",
    )
    parser.add_argument("model", help="model directory, merged export, or LoRA/prefix adapter directory")
    parser.add_argument("--adapter", help="an adapter directory to apply on MODEL")
    parser.add_argument(
        "--base", help="base model of an adapter given as MODEL (overrides its recorded base)"
    )
    parser.add_argument("--prompt", help="answer this one prompt and exit (no interactive session)")
    parser.add_argument(
        "--config",
        type=Path,
        help="serving config YAML, the one `wenzhen api` / `wenzhen web` read (safety and generation sections)",
    )
    parser.add_argument(
        "--system",
        help="system prompt (default: the config's safety.system_prompt, wenzhen's medical safety prompt; "
        "'' for none)",
    )
    parser.add_argument("--temperature", type=float, help="0 = greedy (default: the config's)")
    parser.add_argument("--top-p", type=float, help="nucleus sampling mass")
    parser.add_argument("--repetition-penalty", type=float, help="1.0 = off")
    parser.add_argument("--max-new-tokens", type=int, help="longest answer in tokens")
    parser.add_argument("--seed", type=int, help="fix sampling for reproducible answers")
    parser.add_argument(
        "--max-context",
        type=int,
        help="context window in tokens (default: the model's); history is trimmed to it",
    )
    add_dtype_option(parser, default="auto", what="compute dtype")
    parser.add_argument(
        "--device", default="auto", help="cuda, cpu, cuda:1, ... (default: cuda if available)"
    )
    parser.add_argument("--no-stats", action="store_true", help="do not print token counts after each answer")
    parser.set_defaults(handler=_chat)


def _chat(args: argparse.Namespace) -> int:
    config = load_yaml_config(ServingConfig, args.config) if args.config else ServingConfig()
    options = {
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "repetition_penalty": args.repetition_penalty,
        "seed": args.seed,
    }
    settings = validate_config(
        GenerationSettings,
        {**config.generation.model_dump(), **{k: v for k, v in options.items() if v is not None}},
        source="sampling options",
    )
    loaded = load_model(
        args.model, dtype=args.dtype, device=args.device, adapter=args.adapter, base=args.base
    )
    engine = ChatEngine(loaded, max_context=args.max_context)
    policy = ConsultationPolicy(engine, config.safety, config.max_tool_rounds)
    system_prompt = (config.safety.system_prompt if args.system is None else args.system) or None
    if args.prompt is not None:
        result = one_shot(policy, engine, args.prompt, settings, system_prompt, sys.stdout, sys.stderr)
        return 0 if result is not None else 130
    with contextlib.suppress(ImportError):  # not on Windows
        import readline  # noqa: F401 - importing it gives input() line editing, CJK-aware erase and recall
    warm_up(engine, 1, sys.stderr)  # one person types: the smallest step, compiled before the first question
    return run_repl(policy, engine, settings, system_prompt, show_stats=not args.no_stats)
