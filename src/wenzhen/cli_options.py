"""Command-line options shared by several commands, declared once so every command spells and reads them alike.

Kept free of torch imports: `wenzhen data ...` builds its parser without paying for torch.
"""

import argparse

# Short name of each accepted dtype spelling; `resolve_dtype` (models/loading.py) maps the short names to torch.
DTYPE_SPELLINGS = {
    "auto": "auto",
    "bf16": "bf16",
    "bfloat16": "bf16",
    "fp16": "fp16",
    "float16": "fp16",
    "half": "fp16",
    "fp32": "fp32",
    "float32": "fp32",
    "float": "fp32",
}
AUTO_HELP = "auto: bf16 on a GPU that supports it, fp16 on older GPUs, fp32 on CPU"
SOURCE_HELP = "source: the dtype the model is stored in (no rounding)"


def add_dtype_option(parser: argparse.ArgumentParser, *, default: str, what: str) -> None:
    """`--dtype` with one vocabulary for every command: auto, bf16, fp16, fp32 (long torch names accepted), and
    `source` where `default` is `source` (commands that write weights)."""
    spellings = dict(DTYPE_SPELLINGS)
    if default == "source":
        spellings["source"] = "source"

    def short_name(text: str) -> str:
        name = spellings.get(text.strip().lower())
        if name is None:
            choices = ", ".join(dict.fromkeys(spellings.values()))
            raise argparse.ArgumentTypeError(f"unknown dtype {text!r}; use one of {choices}")
        return name

    explained = SOURCE_HELP if default == "source" else AUTO_HELP
    parser.add_argument(
        "--dtype",
        type=short_name,
        default=default,
        metavar="{" + ",".join(dict.fromkeys(spellings.values())) + "}",
        help=f"{what} (default {default}; {explained})",
    )
