"""Streaming clients over loopback HTTP through `wenzhen api`: aggregate tokens/s, time to first token, errors, memory.

Starts `wenzhen api MODEL` as its own process (the way a user does), times how long it takes to answer /health
(loading and warm-up), then how long the first 128-token answer takes after /health says ok, then runs rounds of
1, 8 and 32 concurrent streaming clients (`--clients`), each asking for `--new-tokens` tokens (greedy) with a prompt
of a few hundred tokens. Per round: aggregate completion tokens/s (all clients' tokens over the round's wall time),
time to first token p50/p95, 5xx and other failures, and the server's host (RSS) and GPU memory before and after.
Writes `serve_load{--suffix}.{json,md}` into `--results` with the machine or card it ran on.

For ChatGLM3-6B shapes on a GPU host, write a random-weight checkpoint first (benchmarks/random_chatglm3.py, the
official layout) and pass its folder.
"""

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TINY = ROOT.parent / "shared" / "chatglm3" / "tiny-chatglm3"
MODEL_ID = "bench"
STARTUP_TIMEOUT_S = 600
# A consultation of a few hundred tokens; each client's prompt starts differently.
COMPLAINT = "最近三天头痛，伴有低烧和咳嗽，夜间加重，吃了布洛芬稍有缓解，但是第二天又开始痛。"


def machine() -> str:
    """The card (or CPU) the server runs on, for the results file."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"{platform.machine()} CPU ({os.cpu_count()} cores), torch {torch.__version__}"


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def prompt(index: int, repeats: int) -> list[dict[str, str]]:
    """Client `index`'s question: a distinct opening, then the complaint `repeats` times."""
    return [{"role": "user", "content": f"第{index}位患者：" + COMPLAINT * repeats + "请问该怎么办？"}]


def gpu_memory_mib() -> float | None:
    """Memory in use on GPU 0 as nvidia-smi reports it (the server's allocations included), or None."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return float(out.strip().splitlines()[0])


async def one_request(
    client: httpx.AsyncClient, messages: list[dict[str, str]], max_tokens: int
) -> dict[str, Any]:
    """Stream one answer; its status, time to first token, completion tokens and end time."""
    body = {
        "model": MODEL_ID,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    started = time.perf_counter()
    outcome: dict[str, Any] = {"status": 0, "ttft_s": None, "tokens": 0, "prompt_tokens": 0, "done": False}
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            outcome["status"] = response.status_code
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: ") :]
                if data == "[DONE]":
                    outcome["done"] = True
                    break
                chunk = json.loads(data)
                if chunk.get("usage"):
                    outcome["tokens"] = chunk["usage"]["completion_tokens"]
                    outcome["prompt_tokens"] = chunk["usage"]["prompt_tokens"]
                elif (
                    outcome["ttft_s"] is None
                    and chunk["choices"]
                    and chunk["choices"][0]["delta"].get("content")
                ):
                    outcome["ttft_s"] = time.perf_counter() - started
    except httpx.HTTPError as exc:
        outcome["error"] = f"{type(exc).__name__}: {exc}"
    outcome["end"] = time.perf_counter()
    outcome["seconds"] = outcome["end"] - started
    return outcome


async def load_round(base: str, clients: int, max_tokens: int, repeats: int) -> dict[str, Any]:
    """`clients` concurrent streaming requests, all sent at once; the round's figures."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as client:
        started = time.perf_counter()
        outcomes = await asyncio.gather(
            *(one_request(client, prompt(i, repeats), max_tokens) for i in range(clients))
        )
    wall = max(o["end"] for o in outcomes) - started
    ttfts = sorted(o["ttft_s"] for o in outcomes if o["ttft_s"] is not None)
    tokens = sum(o["tokens"] for o in outcomes)
    return {
        "clients": clients,
        "wall_s": wall,
        "completion_tokens": tokens,
        "prompt_tokens_mean": statistics.mean(o["prompt_tokens"] for o in outcomes),
        "aggregate_tok_s": tokens / wall,
        "per_client_tok_s": statistics.mean(o["tokens"] / o["seconds"] for o in outcomes),
        "ttft_p50_ms": 1000 * percentile(ttfts, 50) if ttfts else None,
        "ttft_p95_ms": 1000 * percentile(ttfts, 95) if ttfts else None,
        "status_5xx": sum(o["status"] >= 500 for o in outcomes),
        "failed": sum(o["status"] != 200 or not o["done"] for o in outcomes),
        "errors": sorted({o["error"] for o in outcomes if "error" in o})[:3],
    }


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile by linear interpolation between closest ranks."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


@contextlib.contextmanager
def api_server(
    model: Path, port: int, max_tokens: int, log_path: Path, config: Path, extra: list[str]
) -> Any:
    """`wenzhen api MODEL` in its own process group (its limits written to `config`), stopped afterwards."""
    limits = {"max_tokens": max_tokens, "default_max_tokens": max_tokens, "max_queue": 256}
    config.write_text(yaml.safe_dump({"limits": limits}), encoding="utf-8")
    args = ["api", str(model), "--port", str(port), "--model-name", MODEL_ID, "--config", str(config), *extra]
    path = os.pathsep.join([str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": path}
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "wenzhen", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_until_healthy(base: str, process: subprocess.Popen, log_path: Path) -> float:
    """Seconds from now until /health answers ok; the server's log on failure."""
    started = time.perf_counter()
    while time.perf_counter() - started < STARTUP_TIMEOUT_S:
        if process.poll() is not None:
            sys.exit(f"the server exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/health", timeout=2).json().get("status") == "ok":
                return time.perf_counter() - started
        time.sleep(0.2)
    sys.exit(
        f"the server did not answer /health within {STARTUP_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}"
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the server, measure readiness, the first answer and every load round (the results files are
    rewritten after each step, so a run cut short keeps what it measured)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    extra = [
        item for pair in (("--device", args.device), ("--dtype", args.dtype)) if pair[1] for item in pair
    ]
    with tempfile.TemporaryDirectory(prefix="wenzhen-serve-load-") as folder:
        log_path = args.server_log or Path(folder) / "server.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        config = Path(folder) / "api.yaml"
        with api_server(args.model, port, max(args.new_tokens, 128), log_path, config, extra) as server:
            ready_s = wait_until_healthy(base, server, log_path)
            process = psutil.Process(server.pid)
            first = asyncio.run(load_round(base, 1, 128, args.prompt_repeats))
            warm = re.search(
                r"warmed up in ([\d.]+) s", log_path.read_text(encoding="utf-8", errors="replace")
            )
            report: dict[str, Any] = {
                "machine": machine(),
                "model": str(args.model),
                "new_tokens": args.new_tokens,
                "seconds_to_healthy": ready_s,
                "warm_up_s": float(warm.group(1)) if warm else None,
                "first_answer_128_tokens_s": first["wall_s"],
                "first_answer_ttft_ms": first["ttft_p50_ms"],
                "rounds": [],
                "server_rss_mib_before": process.memory_info().rss / 2**20,
                "server_rss_mib_after": None,
                "gpu_mib_before": gpu_memory_mib(),
                "gpu_mib_after": None,
                "idle_after": None,
            }
            write(report, args.results, args.suffix)
            for clients in args.clients:
                report["rounds"].append(
                    asyncio.run(load_round(base, clients, args.new_tokens, args.prompt_repeats))
                )
                print(json.dumps(report["rounds"][-1]), flush=True)
                write(report, args.results, args.suffix)
            time.sleep(1)
            health = httpx.get(f"{base}/health", timeout=10).json()
            report |= {
                "server_rss_mib_after": process.memory_info().rss / 2**20,
                "gpu_mib_after": gpu_memory_mib(),
                "idle_after": health["active"] == 0 and health["waiting"] == 0,
            }
    return report


def write(report: dict[str, Any], results: Path, suffix: str) -> str:
    """The JSON and the markdown table; returns the markdown."""
    results.mkdir(parents=True, exist_ok=True)
    (results / f"serve_load{suffix}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    rounds = report["rounds"]
    one = rounds[0]["aggregate_tok_s"] if rounds and rounds[0]["clients"] == 1 else None
    lines = [
        f"# `wenzhen api` under streaming load — {report['machine']}",
        "",
        f"Model `{report['model']}`; {report['new_tokens']} new tokens per answer, greedy; clients stream over "
        "loopback HTTP, all of a round sent at once.",
        "",
        f"- /health ok {report['seconds_to_healthy']:.1f} s after start (warm-up {report['warm_up_s']} s of it)",
        f"- first 128-token answer after /health ok: {report['first_answer_128_tokens_s']:.2f} s "
        f"(first token {report['first_answer_ttft_ms']:.0f} ms)",
        f"- server RSS {report['server_rss_mib_before']:.0f} MiB before the rounds, "
        f"{report['server_rss_mib_after'] or 0:.0f} MiB after; GPU {report['gpu_mib_before']} MiB before, "
        f"{report['gpu_mib_after']} MiB after; idle after: {report['idle_after']}",
        "",
        "| clients | prompt tokens | tokens | wall s | aggregate tok/s | x one client | per-client tok/s "
        "| TTFT p50 ms | TTFT p95 ms | 5xx | failed |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rounds"]:
        if r["ttft_p50_ms"] is None:  # no client got a first token
            r = {**r, "ttft_p50_ms": float("nan"), "ttft_p95_ms": float("nan")}
        ratio = f"{r['aggregate_tok_s'] / one:.1f}" if one else "-"
        lines.append(
            f"| {r['clients']} | {r['prompt_tokens_mean']:.0f} | {r['completion_tokens']} | {r['wall_s']:.2f} | "
            f"{r['aggregate_tok_s']:.1f} | {ratio} | {r['per_client_tok_s']:.1f} | {r['ttft_p50_ms']:.0f} | "
            f"{r['ttft_p95_ms']:.0f} | {r['status_5xx']} | {r['failed']} |"
        )
    text = "\n".join(lines) + "\n"
    (results / f"serve_load{suffix}.md").write_text(text, encoding="utf-8")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "model", type=Path, nargs="?", default=TINY, help="model folder (default: the tiny one)"
    )
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument(
        "--prompt-repeats", type=int, default=8, help="complaint repeats (8: about 300 tokens)"
    )
    parser.add_argument("--device", help="passed to wenzhen api")
    parser.add_argument("--dtype", help="passed to wenzhen api")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--server-log", type=Path, help="also keep the server's output in this file")
    parser.add_argument("--suffix", default="", help="results file name suffix, e.g. -cpu")
    args = parser.parse_args()
    # Stopped by a time limit (`timeout`): exit through the context managers, so the server goes down with us.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("serve_load: stopped by SIGTERM"))
    print(write(run(args), args.results, args.suffix))


if __name__ == "__main__":
    main()
