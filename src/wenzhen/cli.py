"""The `wenzhen` command: parses arguments and hands them to one library function per subcommand.

Each pipeline stage owns a `commands` module with `register(subparsers)`, which adds its subcommands and sets
`handler` to a function taking the parsed namespace. Only stages listed here are exposed. A command line naming one
subcommand imports only the module that owns it, so `wenzhen data prepare` never pays for importing torch.
"""

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from wenzhen import __version__
from wenzhen.errors import WenzhenError
from wenzhen.io import describe_no_room, is_no_room

# One line per stage with the subcommands its module registers; the order is the order of `wenzhen --help`.
COMMAND_MODULES = {
    "wenzhen.models.commands": ("convert", "env"),
    "wenzhen.data.commands": ("data",),
    "wenzhen.train.commands": ("train",),
    "wenzhen.evaluate.commands": ("eval",),
    "wenzhen.export.commands": ("merge", "export"),
    "wenzhen.chat_commands": ("chat",),
    "wenzhen.serve.commands": ("web", "api"),
    "wenzhen.demo_commands": ("demo",),
}


def modules_for(argv: Sequence[str]) -> list[str]:
    """The module owning the subcommand named in `argv`, or every module (for --help or a typo)."""
    named = next((arg for arg in argv if not arg.startswith("-")), None)
    owners = [module for module, commands in COMMAND_MODULES.items() if named in commands]
    return owners or list(COMMAND_MODULES)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser: every stage's subcommands, or only those of the stage `argv` names."""
    parser = argparse.ArgumentParser(
        prog="wenzhen",
        description="wenzhen (问诊): prepare medical dialogue data, fine-tune ChatGLM3-6B or any Hugging Face chat "
        "model, evaluate, merge and serve it. Run `wenzhen COMMAND --help` for each command.",
    )
    parser.add_argument("--version", action="version", version=f"wenzhen {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logging and full tracebacks")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in modules_for(argv) if argv is not None else COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `wenzhen` console script."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(arguments)
    args = parser.parse_args(arguments)
    args.command_line = arguments  # for a command that restarts itself in worker processes (`wenzhen train`)
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
    except OSError as exc:
        # A full disk, a file-size limit or a read-only folder is the environment, not a bug: one sentence.
        if args.verbose or not is_no_room(exc):
            raise
        print(f"error: {describe_no_room(exc)}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
