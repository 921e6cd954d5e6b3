"""Length measurement for the limits and the report: tokens of a model's tokenizer, or characters.

Texts are measured in batches: the fast tokenizer's Rust `encode_batch` runs outside the GIL, so a batch can be
measured on one core while the main thread parses and cleans the next one on the other.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

from wenzhen.errors import WenzhenError


class LengthMeter:
    """Measures lists of texts; `unit` is 'tokens' or 'chars'."""

    def __init__(self, unit: str, measure: Callable[[list[str]], list[int]], name: str) -> None:
        self.unit = unit
        self.measure = measure
        self.name = name


def char_meter() -> LengthMeter:
    """Lengths in Unicode characters."""
    return LengthMeter("chars", lambda texts: [len(text) for text in texts], "characters")


def token_meter(model_dir: str | Path) -> LengthMeter:
    """Lengths in tokens of the model's own tokenizer (loaded by the one loader, `wenzhen.models`)."""
    from wenzhen.models import load_tokenizer

    if not Path(model_dir).exists():
        raise WenzhenError(
            f"tokenizer directory {model_dir} does not exist; pass a model directory to --tokenizer"
        )
    tokenizer = load_tokenizer(model_dir)
    return LengthMeter("tokens", _batch_counter(tokenizer), str(model_dir))


def _batch_counter(tokenizer: Any) -> Callable[[list[str]], list[int]]:
    """The fastest exact batch token counter the tokenizer offers, without special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        encode = getattr(backend, "encode_batch_fast", None) or backend.encode_batch

        def count_backend(texts: list[str]) -> list[int]:
            return [len(encoding.ids) for encoding in encode(texts, add_special_tokens=False)]

        return count_backend

    def count_slow(texts: list[str]) -> list[int]:
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    return count_slow
