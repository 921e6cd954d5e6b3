"""A bounded load test of `wenzhen api`: 200 requests, 32 at a time, on loopback, under a time limit."""

import asyncio
import collections
import time
from pathlib import Path

import httpx
import psutil
import yaml

from conftest import free_port, running_server

REQUESTS = 200
CONCURRENCY = 32
TIME_LIMIT_S = 240
RSS_SLACK_BYTES = 16 * 2**20


async def _fire(base: str, count: int, concurrency: int) -> collections.Counter[int]:
    """POST `count` small completions, `concurrency` in flight at once; count the status codes."""
    statuses: collections.Counter[int] = collections.Counter()
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:

        async def one(index: int) -> None:
            async with gate:
                body = {
                    "model": "tiny",
                    "messages": [{"role": "user", "content": f"第{index}个问题：头痛怎么办"}],
                }
                if index % 2:
                    body["stream"] = True
                response = await client.post("/v1/chat/completions", json=body)
                if response.status_code == 200 and index % 2:
                    assert response.text.rstrip().endswith("data: [DONE]")
                statuses[response.status_code] += 1

        await asyncio.gather(*(one(i) for i in range(count)))
    return statuses


def test_load_is_answered_or_refused_with_429_and_memory_returns(tiny_model: Path, tmp_path: Path) -> None:
    config = tmp_path / "api.yaml"
    limits = {"default_max_tokens": 4, "max_concurrent": 1, "max_queue": 8}
    config.write_text(yaml.safe_dump({"limits": limits}), encoding="utf-8")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = ["api", str(tiny_model), "--port", str(port), "--model-name", "tiny", "--config", str(config)]
    with running_server(args, f"{base}/health") as server:
        process = psutil.Process(server.pid)
        rss_idle = process.memory_info().rss
        # Warm-up round of the same shape: first generations allocate caches, thread pools and arenas that
        # stay; the baseline is taken after it, and a leak would show as growth over the measured round.
        asyncio.run(_fire(base, REQUESTS, CONCURRENCY))
        rss_before = process.memory_info().rss
        started = time.monotonic()
        statuses = asyncio.run(asyncio.wait_for(_fire(base, REQUESTS, CONCURRENCY), TIME_LIMIT_S))
        wall = time.monotonic() - started
        health = httpx.get(f"{base}/health", timeout=10).json()
        time.sleep(1)
        rss_after = process.memory_info().rss
    print(
        f"\nload: {REQUESTS} requests, {CONCURRENCY} concurrent, {wall:.1f}s wall; statuses {dict(statuses)}; "
        f"RSS {rss_idle / 2**20:.0f} MiB idle, {rss_before / 2**20:.0f} MiB after warm-up round, "
        f"{rss_after / 2**20:.0f} MiB after measured round"
    )
    assert sum(statuses.values()) == REQUESTS
    assert set(statuses) <= {200, 429}, statuses
    assert statuses[200] > 0 and statuses[429] > 0, "the bounded queue should both serve and refuse"
    assert health["active"] == 0 and health["waiting"] == 0
    assert rss_after <= rss_before + RSS_SLACK_BYTES
