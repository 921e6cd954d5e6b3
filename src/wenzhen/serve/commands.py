"""`wenzhen web` and `wenzhen api`: parse arguments and start one server each."""

import argparse
import os
from pathlib import Path
from typing import Any

from wenzhen.cli_options import add_dtype_option
from wenzhen.config import load_yaml_config, validate_config
from wenzhen.errors import WenzhenError


def _common(parser: argparse.ArgumentParser, default_port: int, model_optional: bool = False) -> None:
    parser.add_argument(
        "model",
        nargs="?" if model_optional else None,
        help="model directory (official ChatGLM3, converted or any HF chat model) or adapter directory"
        + (" (not with --upstream)" if model_optional else ""),
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
        "--config",
        type=Path,
        help="serving config YAML, shared with `wenzhen chat/eval safety --config` (see docs/serving.md)",
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
        "(or the variable named by api_key_env in --config) to require authentication. With --upstream, "
        "answers come from an OpenAI-compatible engine (vLLM, SGLang, LMDeploy, Ollama, another wenzhen api) "
        "and this server keeps the consultation policy, authentication, limits and model naming in front of it.",
    )
    _common(api, 8000, model_optional=True)
    api.add_argument("--model-name", help="the model id clients send (default: the model folder's name)")
    api.add_argument(
        "--upstream",
        metavar="URL",
        help="base URL of an OpenAI-compatible engine, e.g. http://127.0.0.1:8001/v1",
    )
    api.add_argument("--upstream-model", help="the model name the engine serves (default: its first model)")
    api.add_argument(
        "--upstream-key-env",
        metavar="VAR",
        help="environment variable holding the engine's bearer key (a variable, so the key is not in `ps`)",
    )
    api.set_defaults(handler=_api)


def _api(args: argparse.Namespace) -> int:
    from wenzhen.serve.api import run_api
    from wenzhen.serve.config import ServingConfig, UpstreamConfig

    config = load_yaml_config(ServingConfig, args.config) if args.config else ServingConfig()
    if args.model_name:
        config.model_name = args.model_name
    if args.upstream:
        options = {"url": args.upstream, "model": args.upstream_model, "api_key_env": args.upstream_key_env}
        config.upstream = validate_config(UpstreamConfig, options, source="--upstream options")
    elif args.upstream_model or args.upstream_key_env:
        raise WenzhenError("--upstream-model and --upstream-key-env need --upstream URL")
    if config.upstream is not None and args.model:
        raise WenzhenError(
            "give either MODEL or an upstream engine (--upstream URL or `upstream:`), not both"
        )
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
    from wenzhen.serve.config import ServingConfig
    from wenzhen.serve.web import run_web

    config = load_yaml_config(ServingConfig, args.config) if args.config else ServingConfig()
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
