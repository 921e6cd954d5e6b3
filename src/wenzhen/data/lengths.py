"""Length measurement for the limits and the report: tokens of a model's tokenizer, or characters.

Token counting is the most expensive step of a large run, so it happens in a separate worker process that
measures one batch while the main process parses and cleans the next (the GIL would serialise a thread). The
worker counts with the model's tokenizer from `wenzhen.models.load_tokenizer`. When the model directory also ships
the SentencePiece model that tokenizer was converted from, the worker checks on the first batch that SentencePiece
gives the same count for every text and then counts with it, because it is several times faster on long Chinese
texts than the converted BPE pipeline (measured in benchmarks/results/data_prepare.md); on any mismatch it stays
with the tokenizer.
"""

import logging
import multiprocessing
import resource
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

from wenzhen.errors import WenzhenError

log = logging.getLogger(__name__)
SENTENCEPIECE_FILE = "tokenizer.model"


class LengthMeter:
    """Measures batches of texts asynchronously; `unit` is 'tokens' or 'chars'."""

    unit = "chars"
    name = "characters"

    def submit(self, texts: list[str]) -> "Future[list[int]]":
        """Start measuring `texts`; the future holds one length per text."""
        future: Future[list[int]] = Future()
        future.set_result([len(text) for text in texts])
        return future

    def describe(self) -> dict[str, Any]:
        """How lengths were measured, for the report."""
        return {"unit": self.unit, "measured_by": self.name}

    def close(self) -> None:
        """Release the worker, if any."""


class TokenMeter(LengthMeter):
    """Token counts from a worker process holding the model's tokenizer."""

    unit = "tokens"

    def __init__(self, model_dir: str | Path) -> None:
        path = Path(model_dir)
        if not path.is_dir():
            raise WenzhenError(
                f"tokenizer directory {path} does not exist; pass a model directory to --tokenizer"
            )
        self.name = str(path)
        self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        self._model_dir = str(path)
        self._counter: str | None = None
        self._worker: dict[str, float] = {}

    def submit(self, texts: list[str]) -> "Future[list[int]]":
        outer: Future[list[int]] = Future()
        inner = self._pool.submit(_measure_in_worker, self._model_dir, texts)

        def unpack(done: "Future[tuple[list[int], str, dict[str, float]]]") -> None:
            try:
                lengths, self._counter, self._worker = done.result()
            except BaseException as exc:
                outer.set_exception(exc)
                return
            outer.set_result(lengths)

        inner.add_done_callback(unpack)
        return outer

    def describe(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "measured_by": self.name,
            "counter": self._counter,
            "worker_peak_rss_mib": round(self._worker.get("peak_rss_mib", 0.0), 1),
            "worker_cpu_seconds": round(self._worker.get("cpu_s", 0.0), 1),
        }

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def char_meter() -> LengthMeter:
    """Lengths in Unicode characters."""
    return LengthMeter()


def token_meter(model_dir: str | Path) -> LengthMeter:
    """Lengths in tokens of the model's own tokenizer."""
    return TokenMeter(model_dir)


# ---------------------------------------------------------------------------------------------- worker side

_WORKER: dict[str, Any] = {}


def _measure_in_worker(model_dir: str, texts: list[str]) -> tuple[list[int], str, dict[str, float]]:
    """Runs in the worker: token counts of `texts`, the counter used, and the worker's peak RSS and CPU time."""
    if "count" not in _WORKER:
        _WORKER.update(_build_counters(model_dir))
    verify = _WORKER.pop("verify", None)
    lengths = _WORKER["count"](texts)
    if verify is not None:
        fast = verify(texts)
        if fast == lengths:
            _WORKER["count"], _WORKER["counter"] = verify, f"sentencepiece (verified on {len(texts)} texts)"
        else:
            log.warning("SentencePiece counts differ from the tokenizer's; counting with the tokenizer")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return (
        lengths,
        _WORKER["counter"],
        {"peak_rss_mib": usage.ru_maxrss / 1024, "cpu_s": usage.ru_utime + usage.ru_stime},
    )


def _build_counters(model_dir: str) -> dict[str, Any]:
    from wenzhen.models import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    counters: dict[str, Any] = {"count": _batch_counter(tokenizer), "counter": type(tokenizer).__name__}
    sentencepiece_model = Path(model_dir) / SENTENCEPIECE_FILE
    if sentencepiece_model.is_file():
        try:
            import sentencepiece

            processor = sentencepiece.SentencePieceProcessor(model_file=str(sentencepiece_model))
        except (ImportError, OSError, RuntimeError):
            return counters
        counters["verify"] = lambda texts: [len(ids) for ids in processor.encode(texts)]
    return counters


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
