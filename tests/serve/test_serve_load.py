"""The load benchmark's client against `wenzhen api` on CPU: concurrent streams raise aggregate throughput (the
engine batches them) and every answer arrives whole."""

import asyncio
import sys
from pathlib import Path

import pytest
import yaml

from conftest import free_port, running_server

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from serve_load import MODEL_ID, load_round

NEW_TOKENS = 48


@pytest.mark.slow
def test_concurrent_streams_share_the_batch_and_nothing_is_lost(tiny_model: Path, tmp_path: Path) -> None:
    config = tmp_path / "api.yaml"
    config.write_text(
        yaml.safe_dump({"limits": {"max_tokens": NEW_TOKENS, "max_queue": 32}}), encoding="utf-8"
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = ["api", str(tiny_model), "--port", str(port), "--model-name", MODEL_ID, "--config", str(config)]
    with running_server(args, f"{base}/health"):
        asyncio.run(load_round(base, 2, NEW_TOKENS, 2))  # first requests allocate what stays
        one = asyncio.run(load_round(base, 1, NEW_TOKENS, 2))
        eight = asyncio.run(load_round(base, 8, NEW_TOKENS, 2))
    for round_ in (one, eight):
        assert round_["failed"] == 0 and round_["status_5xx"] == 0, round_
        assert round_["completion_tokens"] == NEW_TOKENS * round_["clients"], round_
    # One at a time, eight answers would take eight times as long; batched, well under that.
    assert eight["aggregate_tok_s"] > 1.5 * one["aggregate_tok_s"], (one, eight)
