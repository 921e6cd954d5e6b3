"""The `wenzhen` command: parses arguments and hands them to one library function per subcommand.

Each pipeline stage owns a `commands` module with `register(subparsers)`, which adds its subcommands and sets
`handler` to a function taking the parsed namespace. Only stages listed here are exposed.
"""

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from wenzhen import __version__
from wenzhen.errors import WenzhenError

# One line per stage; the order is the order of `wenzhen --help`.
COMMAND_MODULES = [
    "wenzhen.models.commands",
    "wenzhen.data.commands",
    "wenzhen.train.commands",
    "wenzhen.evaluate.commands",
    "wenzhen.export_commands",
    "wenzhen.chat_commands",
    "wenzhen.serve.commands",
    "wenzhen.demo_commands",
]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every stage's subcommands."""
    parser = argparse.ArgumentParser(
        prog="wenzhen",
        description="wenzhen (问诊): prepare medical dialogue data, fine-tune ChatGLM3-6B or any Hugging Face chat "
        "model, evaluate, merge and serve it. Run `wenzhen COMMAND --help` for each command.",
    )
    parser.add_argument("--version", action="version", version=f"wenzhen {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logging and full tracebacks")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `wenzhen` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s", stream=sys.stderr
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        result = args.handler(args)
    except WenzhenError as exc:
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
