"""`wenzhen chat`."""

import argparse
import contextlib
import sys
from typing import Any

from wenzhen import safety
from wenzhen.chat import one_shot, run_repl
from wenzhen.cli_options import add_dtype_option
from wenzhen.config import validate_config
from wenzhen.generation import ChatEngine, GenerationSettings, warm_up
from wenzhen.models import load_model


def register(subparsers: Any) -> None:
    """Add `wenzhen chat`."""
    defaults = GenerationSettings()
    parser = subparsers.add_parser(
        "chat",
        help="chat with a model in the terminal (streaming, multi-turn), or answer one --prompt",
        description="Chat with MODEL (a model directory, a merged export or an adapter directory) in the terminal. "
        "Answers stream as they are generated; the conversation is kept and its oldest turns are dropped when it "
        "outgrows the context window (the system prompt is always kept). Type /clear to forget the conversation, "
        "/system TEXT to set the system prompt, /history to show it, /exit (or Ctrl-D) to leave; Ctrl-C stops "
        "an answer. Red-flag symptoms get emergency guidance before the answer. With --prompt, print one "
        "answer and exit.",
    )
    parser.add_argument("model", help="model directory, merged export, or LoRA/prefix adapter directory")
    parser.add_argument("--adapter", help="an adapter directory to apply on MODEL")
    parser.add_argument(
        "--base", help="base model of an adapter given as MODEL (overrides its recorded base)"
    )
    parser.add_argument("--prompt", help="answer this one prompt and exit (no interactive session)")
    parser.add_argument(
        "--system",
        default=safety.SYSTEM_PROMPT,
        help="system prompt (default: wenzhen's medical safety prompt; '' for none)",
    )
    parser.add_argument("--temperature", type=float, default=defaults.temperature, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=defaults.top_p, help="nucleus sampling mass")
    parser.add_argument(
        "--repetition-penalty", type=float, default=defaults.repetition_penalty, help="1.0 = off"
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=defaults.max_new_tokens, help="longest answer in tokens"
    )
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
    settings = validate_config(
        GenerationSettings,
        {
            "max_new_tokens": args.max_new_tokens,
            "temperature": args.temperature,
            "top_p": args.top_p,
            "repetition_penalty": args.repetition_penalty,
            "seed": args.seed,
        },
        source="sampling options",
    )
    loaded = load_model(
        args.model, dtype=args.dtype, device=args.device, adapter=args.adapter, base=args.base
    )
    engine = ChatEngine(loaded, max_context=args.max_context)
    system_prompt = args.system or None
    if args.prompt is not None:
        result = one_shot(engine, args.prompt, settings, system_prompt, sys.stdout, sys.stderr)
        return 0 if result is not None else 130
    with contextlib.suppress(ImportError):  # not on Windows
        import readline  # noqa: F401 - importing it gives input() line editing, CJK-aware erase and recall
    warm_up(engine, 1, sys.stderr)  # one person types: the batch-1 step, compiled before the first question
    return run_repl(engine, settings, system_prompt, show_stats=not args.no_stats)
