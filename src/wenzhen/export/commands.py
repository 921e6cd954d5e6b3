"""`wenzhen merge` and `wenzhen export`."""

import argparse
from pathlib import Path
from typing import Any

from wenzhen.cli_options import add_dtype_option
from wenzhen.export.formats import EXPORT_FORMATS, SHARD_BYTES
from wenzhen.export.merge import merge


def register(subparsers: Any) -> None:
    """Add `wenzhen merge` and `wenzhen export`."""
    register_export(subparsers)
    parser = subparsers.add_parser(
        "merge",
        help="merge a LoRA adapter into its base model and export a self-contained model directory",
        description="Merge the LoRA adapter in ADAPTER_DIR (made by `wenzhen train` or by the official ChatGLM3 "
        "finetune demo) into its base model, one checkpoint shard at a time (a 6B merges in a few GB of RAM, no "
        "GPU), and write OUT: sharded safetensors, config, generation config with the stop ids, tokenizer with "
        "chat template and a model card. `--format hf` loads with plain AutoModelForCausalLM/AutoTokenizer (no "
        "remote code) and serves in vLLM; `--format chatglm3` writes the official layout (fused query_key_value, "
        "official config, tokenizer.model). Before reporting success the merged model's logits are compared "
        "with base + adapter on probe prompts; beyond tolerance the command fails and writes nothing.",
    )
    parser.add_argument("adapter_dir", type=Path, help="the LoRA adapter folder (with adapter_config.json)")
    parser.add_argument("--out-dir", type=Path, required=True, help="output directory (created atomically)")
    parser.add_argument(
        "--base",
        help="base model directory; overrides the base recorded in run.json or adapter_config.json (needed when "
        "the adapter was made on another machine)",
    )
    add_dtype_option(parser, default="bf16", what="weights dtype of OUT")
    parser.add_argument(
        "--format",
        default="hf",
        choices=EXPORT_FORMATS.names(),
        help="; ".join(f"{name}: {fmt.description}" for name, fmt in EXPORT_FORMATS.items())
        + " (default hf)",
    )
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="skip the logit check (it loads base + adapter and then the merged model, one after the other: "
        "about the model's size in memory, in bf16 when fp32 does not fit)",
    )
    parser.add_argument(
        "--verify-device", help="device for the logit check, e.g. cuda or cpu (default: cuda if any)"
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        help="largest accepted max |logit difference| (default: relative to the logit scale, by dtype: "
        "fp32 1e-4, fp16 1e-2, bf16 5e-2)",
    )
    parser.add_argument(
        "--eval",
        dest="eval_dirs",
        type=Path,
        action="append",
        default=[],
        metavar="EVAL_DIR",
        help="an eval run folder (with report.json) whose scores go into the model card; repeatable",
    )
    parser.add_argument(
        "--max-shard-gb",
        type=float,
        default=SHARD_BYTES / 1024**3,
        help="largest output shard in GiB (default 2)",
    )
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    parser.set_defaults(handler=_merge)


def _merge(args: argparse.Namespace) -> int:
    report = merge(
        args.adapter_dir,
        args.out_dir,
        base=args.base,
        dtype=args.dtype,
        export_format=args.format,
        verify=not args.no_verify,
        verify_device=args.verify_device,
        tolerance=args.tolerance,
        eval_dirs=args.eval_dirs,
        force=args.force,
        max_shard_bytes=int(args.max_shard_gb * 1024**3),
    )
    verdict = _verdict(report.verification)
    print(
        f"wrote {report.out_dir} ({report.format}, {report.dtype}, {report.shards} shard(s), "
        f"{report.merged_weights} weights merged); {verdict}"
    )
    for note in report.notes:
        print(f"note: {note}")
    return 0


def _verdict(check: dict[str, Any] | None) -> str:
    """How a merge or export was verified, for its one-line summary."""
    if not check:
        return "not verified (--no-verify)"
    return f"verified: max |logit diff| {check['max_abs_logit_diff']:.3g} <= {check['tolerance']:.3g}"


def register_export(subparsers: Any) -> None:
    """Add `wenzhen export`."""
    from wenzhen.export.gguf import QUANTS

    parser = subparsers.add_parser(
        "export",
        help="write a merged model (or base + LoRA adapter) as one GGUF file for llama.cpp and Ollama",
        description="Write MODEL (a merged model directory, or a LoRA adapter folder folded into its base on the "
        "way) as one GGUF file with the tokenizer, the chat template and every stop token: ChatGLM3 (llama.cpp's "
        "chatglm) and Llama-family models. Streamed tensor by tensor (no more memory than `wenzhen merge`). Before "
        "the file gets its name it is read back and its logits compared with MODEL's on probe prompts.",
    )
    parser.add_argument("model", type=Path, help="merged model directory, or a LoRA adapter folder")
    parser.add_argument("--format", default="gguf", choices=["gguf"], help="output format (default gguf)")
    parser.add_argument(
        "--quant",
        default="f16",
        choices=list(QUANTS),
        help="weight type: f16, q8_0 (quantised here), q4_k_m (needs llama.cpp's llama-quantize; refused with how)",
    )
    parser.add_argument("--out", type=Path, required=True, help="the .gguf file to write")
    parser.add_argument("--base", help="base model directory when MODEL is an adapter (overrides its record)")
    parser.add_argument(
        "--ollama",
        action="store_true",
        help="also write an Ollama Modelfile beside the GGUF and print `ollama create`",
    )
    parser.add_argument(
        "--no-verify", action="store_true", help="skip reading the GGUF back and comparing logits"
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        help="largest accepted max |logit difference| (default relative to the logit scale: f16 1e-2, q8_0 1e-1)",
    )
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    parser.set_defaults(handler=_export)


def _export(args: argparse.Namespace) -> int:
    from wenzhen.export.gguf import export_gguf
    from wenzhen.export.ollama import create_command

    report = export_gguf(
        args.model,
        args.out,
        base=args.base,
        quant=args.quant,
        ollama=args.ollama,
        verify=not args.no_verify,
        tolerance=args.tolerance,
        force=args.force,
    )
    verdict = _verdict(report.verification)
    print(
        f"wrote {report.out_file} ({report.architecture}, {report.quant}, {report.tensors} tensors, "
        f"{report.bytes / 1024**2:.1f} MiB of weights); {verdict}"
    )
    if report.modelfile is not None:
        print(f"wrote {report.modelfile}; create the Ollama model with:")
        print(f"  {create_command(report.modelfile, report.out_file.stem.lower())}")
    return 0
