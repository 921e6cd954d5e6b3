"""`wenzhen data prepare`: the command line of the data stage."""

import argparse
from pathlib import Path

from wenzhen.config import load_yaml_config
from wenzhen.config_options import ConfigOption, add_config_options, config_overrides, with_overrides
from wenzhen.data.config import DataConfig
from wenzhen.data.prepare import prepare
from wenzhen.data.readers import READERS
from wenzhen.data.report import format_report


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `data prepare`."""
    data = subparsers.add_parser(
        "data", help="prepare training data from raw medical corpora; build preference pairs"
    )
    commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    formats = "; ".join(f"{name}: {reader.description}" for name, reader in READERS.items())
    parser = commands.add_parser(
        "prepare",
        help="clean, de-duplicate and split raw corpora into train/dev/test.jsonl",
        description="Read raw medical corpora (formats detected per file), clean them (each rule switchable in "
        "--config), drop exact duplicates, and write OUT/train.jsonl, dev.jsonl, test.jsonl in the ChatGLM3 "
        "conversations format, plus rejects.jsonl (every rejected record with its reason), duplicates.jsonl and "
        "report.json.",
        epilog=f"Formats: {formats}.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="corpus files or folders of them")
    parser.add_argument(
        "--out", required=True, type=Path, help="output directory (must not exist unless --force)"
    )
    parser.add_argument("--config", type=Path, help="YAML file with a DataConfig (see configs/data.yaml)")
    add_config_options(parser, DataConfig, prepare_options())
    parser.add_argument("--force", action="store_true", help="replace an existing output directory")
    parser.set_defaults(handler=run_prepare)
    register_pairs(commands)


def register_pairs(commands: argparse._SubParsersAction) -> None:
    """Add `data pairs`."""
    parser = commands.add_parser(
        "pairs",
        help="build preference pairs (for method dpo / orpo / kto) from an SFT set and the model's own answers",
        description="For each conversation of SFT_DIR's train/dev/test.jsonl, MODEL answers the last question; "
        "an answer pair prefers the doctor's answer to the model's, and a safety pair (questions the guard "
        "flags) prefers the model's answer led by the emergency guidance to the same answer without it. Writes "
        "OUT/train.jsonl, dev.jsonl, test.jsonl (pairs), rejects.jsonl and report.json.",
    )
    parser.add_argument(
        "sft_dir", metavar="SFT_DIR", type=Path, help="folder written by `wenzhen data prepare`"
    )
    parser.add_argument(
        "model", metavar="MODEL", help="model or adapter directory whose answers are rejected"
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="output directory (must not exist unless --force)"
    )
    parser.add_argument(
        "--config", type=Path, help="YAML file with a PairsConfig (see docs/config-reference.md)"
    )
    parser.add_argument("--batch-size", type=int, help="questions answered per batch")
    parser.add_argument("--max-new-tokens", type=int, help="length of the model's answers")
    parser.add_argument("--limit", type=int, help="at most this many conversations per split")
    parser.add_argument("--no-answers", action="store_true", help="safety pairs only")
    parser.add_argument("--no-safety", action="store_true", help="answer pairs only")
    parser.add_argument("--device", help="cpu, cuda, ... (default: the GPU when present)")
    parser.add_argument("--force", action="store_true", help="replace an existing output directory")
    parser.set_defaults(handler=run_pairs)


def run_pairs(args: argparse.Namespace) -> int:
    from wenzhen.data.pairs import PairsConfig, build_pairs, format_pairs_report

    config = load_yaml_config(PairsConfig, args.config) if args.config else PairsConfig()
    for option, value in (
        ("batch_size", args.batch_size),
        ("max_new_tokens", args.max_new_tokens),
        ("limit", args.limit),
        ("device", args.device),
    ):
        if value is not None:
            setattr(config, option, value)
    if args.no_answers:
        config.answers = False
    if args.no_safety:
        config.safety = False
    report = build_pairs(args.sft_dir, args.model, args.out, config, force=args.force)
    print(format_pairs_report(report))
    print(f"wrote {args.out}/train.jsonl, dev.jsonl, test.jsonl, rejects.jsonl, report.json")
    return 0


def prepare_options() -> list[ConfigOption]:
    """The DataConfig keys `wenzhen data prepare` offers as options (type and help from the fields)."""
    return [
        ConfigOption("format", help="read every input with this reader", choices=READERS.names()),
        ConfigOption("length.tokenizer", help="model directory whose tokenizer measures lengths"),
        ConfigOption("seed"),
        ConfigOption("split.dev"),
        ConfigOption("split.test"),
        ConfigOption("system_prompt"),
        ConfigOption("progress", "--no-progress", sets=False, help="hide the progress bar"),
    ]


def config_from_args(args: argparse.Namespace) -> DataConfig:
    """The YAML config (or defaults) with the command-line options laid over it."""
    config = load_yaml_config(DataConfig, args.config) if args.config else DataConfig()
    return with_overrides(config, config_overrides(args), str(args.config or "data prepare defaults"))


def run_prepare(args: argparse.Namespace) -> int:
    report = prepare(args.inputs, args.out, config_from_args(args), force=args.force)
    print(format_report(report))
    print(
        f"wrote {args.out}/train.jsonl, dev.jsonl, test.jsonl, rejects.jsonl, duplicates.jsonl, report.json"
    )
    return 0
