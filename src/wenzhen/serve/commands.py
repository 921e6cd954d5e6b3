"""`wenzhen web` and `wenzhen api`: parse arguments and start one server each."""

import argparse
import os
from pathlib import Path
from typing import Any

from wenzhen.cli_options import add_dtype_option
from wenzhen.config import load_yaml_config


def _common(parser: argparse.ArgumentParser, default_port: int) -> None:
    parser.add_argument(
        "model",
        help="model directory (official ChatGLM3, converted or any HF chat model) or adapter directory",
    )
    parser.add_argument("--adapter", help="LoRA / P-tuning adapter directory to apply to MODEL")
    parser.add_argument(
        "--base", help="base model of an adapter given as MODEL, overriding the one it records"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)"
    )
    parser.add_argument(
        "--port", type=int, default=default_port, help=f"port to listen on (default {default_port})"
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    add_dtype_option(parser, default="auto", what="compute dtype")
    parser.add_argument(
        "--config", type=Path, help="YAML settings (see docs/serving.md); every key has a default"
    )


def register(subparsers: Any) -> None:
    """Add the `web` and `api` subcommands."""
    web = subparsers.add_parser(
        "web",
        help="Gradio consultation UI in the browser",
        description="Serve a streaming medical consultation chat in the browser: history, stop, regenerate, "
        "sampling sliders, example questions, the safety guard's emergency banner, a compare mode showing two "
        "models side by side (--compare) and a tool-calling mode (drug look-up) for ChatGLM3.",
    )
    _common(web, 7860)
    web.add_argument(
        "--compare", help="second model directory (or adapter directory) for the side-by-side tab"
    )
    web.add_argument("--compare-adapter", help="adapter to apply to the --compare model")
    web.set_defaults(handler=_web)

    api = subparsers.add_parser(
        "api",
        help="OpenAI-compatible HTTP API",
        description="Serve /v1/models and /v1/chat/completions (JSON and SSE streaming, tools) with the safety "
        "guard, request limits and a bounded generation queue. Set the bearer key in $WENZHEN_API_KEY "
        "(or the variable named by api_key_env in --config) to require authentication.",
    )
    _common(api, 8000)
    api.add_argument("--model-name", help="the model id clients send (default: the model folder's name)")
    api.set_defaults(handler=_api)


def _api(args: argparse.Namespace) -> int:
    from wenzhen.serve.api import run_api
    from wenzhen.serve.config import ApiConfig

    config = load_yaml_config(ApiConfig, args.config) if args.config else ApiConfig()
    if args.model_name:
        config.model_name = args.model_name
    run_api(
        args.model,
        config,
        adapter=args.adapter,
        base=args.base,
        host=args.host,
        port=args.port,
        device=args.device,
        dtype=args.dtype,
    )
    return 0


def _web(args: argparse.Namespace) -> int:
    # Gradio reads this when imported; the machines serving this UI often have no internet to report to.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from wenzhen.serve.config import WebConfig
    from wenzhen.serve.web import run_web

    config = load_yaml_config(WebConfig, args.config) if args.config else WebConfig()
    run_web(
        args.model,
        config,
        adapter=args.adapter,
        base=args.base,
        compare=args.compare,
        compare_adapter=args.compare_adapter,
        host=args.host,
        port=args.port,
        device=args.device,
        dtype=args.dtype,
    )
    return 0
