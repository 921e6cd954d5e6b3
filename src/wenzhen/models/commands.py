"""`wenzhen convert` and `wenzhen env`."""

import argparse
from typing import Any

import torch

from wenzhen.cli_options import add_dtype_option
from wenzhen.models.convert import convert_model
from wenzhen.models.inspect import env_json, environment_report, format_report, inspect_download, memory_fit


def register(subparsers: Any) -> None:
    """Add the model-layer subcommands."""
    convert = subparsers.add_parser(
        "convert",
        help="write a model (e.g. an official ChatGLM3 download) in transformers' native layout",
        description="Load SRC (official ChatGLM3 download, converted or HF directory) with no remote code and "
        "write OUT: sharded safetensors, config, tokenizer with chat template and a generation config with the "
        "stop ids. OUT loads with plain AutoModelForCausalLM/AutoTokenizer and serves in vLLM.",
    )
    convert.add_argument("src", help="model directory to read")
    convert.add_argument("out", help="output directory (created atomically)")
    add_dtype_option(
        convert, default="source", what="weights dtype of OUT; any other than the source's rounds"
    )
    convert.add_argument("--force", action="store_true", help="replace OUT if it exists")
    convert.set_defaults(handler=_convert)

    env = subparsers.add_parser(
        "env",
        help="check Python/torch/CUDA/GPUs and, given MODEL_DIR, check a download without loading it",
        description="Report Python, torch and CUDA versions, GPUs with free memory, bf16 support and key package "
        "versions. With MODEL_DIR: check the download (shards present, Git LFS pointers, index completeness, "
        "sizes, sha256 where recorded) and estimate whether it fits for inference, LoRA and full fine-tuning.",
    )
    env.add_argument("model_dir", nargs="?", help="a model directory to check")
    env.add_argument("--json", action="store_true", help="print JSON instead of text")
    env.add_argument("--no-checksums", action="store_true", help="skip sha256 verification (faster)")
    env.set_defaults(handler=_env)


def _convert(args: argparse.Namespace) -> int:
    out = convert_model(args.src, args.out, dtype=args.dtype, force=args.force)
    print(f"wrote {out}")
    return 0


def _env(args: argparse.Namespace) -> int:
    environment = environment_report()
    download = (
        inspect_download(args.model_dir, verify_checksums=not args.no_checksums) if args.model_dir else None
    )
    fit = None
    if download is not None and download.parameters:
        free = torch.cuda.mem_get_info(0)[0] if torch.cuda.is_available() else None
        fit = memory_fit(download.parameters, free)
    print(env_json(environment, download, fit) if args.json else format_report(environment, download, fit))
    return 0 if download is None or download.ok else 1
