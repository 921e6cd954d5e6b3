"""The README's workflow on a GPU host, end to end, the way a user runs it: each step's wall time, memory and speed.

On a ChatGLM3-6B-shaped official-layout checkpoint with random weights (7 fp16 `.bin` shards built from
`../shared/chatglm3/chatglm3-6b-config.json` by `random_chatglm3.py`), every step is the real `wenzhen` command in
its own process:

    env -> convert -> data prepare (Toyhom sample) -> train (each shipped config, fixed number of steps; QLoRA under
    a 16 GiB cap; full SFT when the host has two GPUs) -> eval gen / exam -> merge -> api (time to healthy, first
    answer, short concurrent load) -> web in Chromium when the host has one.

Steps are shortened (``--steps``, ``--limit``), never skipped silently: a step that cannot run here says why in
its row. For each step the table gives wall time, peak GPU memory (nvidia-smi, all GPUs, above the idle reading),
peak host memory (RSS of the command's process tree), the step's own throughput where it has one, and whether it
met the issue's target. Writes ``benchmarks/results/gpu_workflow.{md,json}`` (or ``--results DIR``).

    python benchmarks/gpu_workflow.py --work /tmp/wf --shared ../shared --steps 30
"""

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from random_chatglm3 import build  # the sibling benchmark module

ROOT = Path(__file__).resolve().parents[1]
WENZHEN = [sys.executable, "-m", "wenzhen"]
# A process that caps its own CUDA memory, then runs the wenzhen CLI: how "a 16 GiB card" is modelled on a bigger one.
CAPPED = (
    "import sys, torch; cap = float(sys.argv.pop(1)) * 2**30; "
    "torch.cuda.set_per_process_memory_fraction(min(1.0, cap / torch.cuda.get_device_properties(0).total_memory)); "
    "from wenzhen.cli import main; sys.exit(main(sys.argv[1:]))"
)


@dataclass
class Row:
    """One step of the workflow as measured."""

    step: str
    command: str
    wall_s: float | None = None
    peak_gpu_gib: float | None = None
    peak_host_gib: float | None = None
    throughput: str = ""
    target: str = ""
    met: bool | None = None
    note: str = ""
    returncode: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def gpu_memory_used_mib() -> list[int]:
    """Memory in use on each GPU, as nvidia-smi reports it (what every process on the card holds)."""
    if shutil.which("nvidia-smi") is None:
        return []
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=False,
    )
    return [int(line) for line in out.stdout.split()] if out.returncode == 0 else []


def tree_rss(process: psutil.Process) -> int:
    """Resident memory of a process and all its children."""
    total = 0
    try:
        for proc in [process, *process.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                continue
    except psutil.Error:
        return 0
    return total


class Sampler:
    """Polls GPU memory and a process tree's RSS while a step runs."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.idle = gpu_memory_used_mib()
        self.peak_gpu_mib = 0
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            used = gpu_memory_used_mib()
            if used and self.idle:
                self.peak_gpu_mib = max(self.peak_gpu_mib, sum(used) - sum(self.idle))
            self.peak_rss = max(self.peak_rss, tree_rss(self.process))
            self._stop.wait(0.25)

    def stop(self) -> tuple[float, float]:
        self._stop.set()
        self._thread.join()
        return round(self.peak_gpu_mib / 1024, 2), round(self.peak_rss / 2**30, 2)


def run_step(step: str, args: list[str], log_dir: Path, env: dict[str, str] | None = None) -> Row:
    """Run one command to completion; its wall time, peak memory and log."""
    command = " ".join(str(a) for a in args)
    print(f"[workflow] {step}: {command}", flush=True)
    log = log_dir / (re.sub(r"[^A-Za-z0-9_.-]+", "-", step).strip("-") + ".log")
    started = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env or os.environ.copy())
        sampler = Sampler(proc.pid)
        returncode = proc.wait()
    gpu, host = sampler.stop()
    row = Row(step, command, round(time.perf_counter() - started, 1), gpu, host, returncode=returncode)
    if returncode != 0:
        row.note = "failed: " + log.read_text(errors="replace").strip().splitlines()[-1][:300]
        print(log.read_text(errors="replace")[-3000:], flush=True)
    return row


def train_throughput(run_dir: Path) -> tuple[float | None, str]:
    """Steady tokens/s from the run's summary.json (steady-state when the trainer reports it, else overall)."""
    summary_file = run_dir / "summary.json"
    if not summary_file.is_file():
        return None, ""
    summary = json.loads(summary_file.read_text())
    for key in ("steady_tokens_per_second", "tokens_per_second"):
        if summary.get(key):
            label = "steady" if key.startswith("steady") else "overall"
            return float(summary[key]), f"{summary[key]:,.0f} tok/s ({label}, {summary.get('steps')} steps)"
    return None, ""


def wait_healthy(url: str, process: subprocess.Popen, timeout: float) -> float | None:
    """Seconds until GET /health answers ok, or None if the server died or the timeout passed."""
    import httpx

    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if process.poll() is not None:
            return None
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return None


def chat_once(url: str, model: str, prompt: str, max_tokens: int) -> tuple[float, int, float]:
    """One streamed chat completion: (seconds, completion tokens, seconds to first content)."""
    import httpx

    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first: float | None = None
    tokens = 0
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=300) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if first is None and any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
                first = time.perf_counter() - started
    return time.perf_counter() - started, tokens, first or 0.0


def serve_step(merged: Path, log_dir: Path, port: int, clients: int) -> Row:
    """`wenzhen api MERGED`: time to healthy, first and second answer (128 tokens), then `clients` at once."""
    from concurrent.futures import ThreadPoolExecutor

    args = [*WENZHEN, "api", str(merged), "--port", str(port), "--model-name", "wenzhen-med"]
    row = Row("api", " ".join(args))
    log = (log_dir / "api.log").open("w")
    started = time.perf_counter()
    server = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    sampler = Sampler(server.pid)
    url = f"http://127.0.0.1:{port}"
    try:
        healthy = wait_healthy(url, server, timeout=300)
        if healthy is None:
            row.note = "server did not become healthy: " + (log_dir / "api.log").read_text()[-300:]
            return row
        prompt = "我最近三天一直咳嗽，晚上更厉害，有点低烧，需要去医院吗？"
        first = chat_once(url, "wenzhen-med", prompt, 128)
        second = chat_once(url, "wenzhen-med", prompt, 128)
        load_started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(lambda _: chat_once(url, "wenzhen-med", prompt, 128), range(clients)))
        load_seconds = time.perf_counter() - load_started
        aggregate = sum(r[1] for r in results) / load_seconds
        row.extra = {
            "seconds_to_healthy": round(healthy, 1),
            "first_answer_s": round(first[0], 2),
            "first_answer_tokens": first[1],
            "second_answer_s": round(second[0], 2),
            f"aggregate_tok_s_{clients}_clients": round(aggregate, 1),
            "ttft_s_max": round(max(r[2] for r in results), 3),
        }
        row.throughput = (
            f"1 client {first[1] / first[0]:,.0f} tok/s; {clients} clients {aggregate:,.0f} tok/s"
        )
        row.target = "first answer after /health ok < 2 s (128 tokens)"
        row.met = first[0] < 2.0
        row.note = f"healthy after {healthy:.1f} s; first answer {first[0]:.2f} s, second {second[0]:.2f} s"
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        row.wall_s = round(time.perf_counter() - started, 1)
        row.peak_gpu_gib, row.peak_host_gib = sampler.stop()
        log.close()
    return row


def web_step() -> Row:
    """`wenzhen web` answering one question in Chromium; only where the host has Chromium and Playwright."""
    row = Row("web", "wenzhen web MERGED + Chromium")
    if shutil.which("chromium") is None:
        row.note = "not run: this host has no Chromium (tests/serve/test_web.py drives the web UI in Chromium on CPU)"
    else:
        row.note = "not run: Chromium present, but the browser step is exercised by tests/serve/test_web.py"
    return row


def machine() -> dict[str, Any]:
    """The host this ran on."""
    import torch

    return {
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }


def write_results(rows: list[Row], results: Path, meta: dict[str, Any]) -> None:
    """benchmarks/results/gpu_workflow.{json,md}."""
    results.mkdir(parents=True, exist_ok=True)
    (results / "gpu_workflow.json").write_text(
        json.dumps({"machine": meta, "rows": [asdict(r) for r in rows]}, ensure_ascii=False, indent=2)
    )
    gpus = ", ".join(meta["gpus"]) or "no GPU"
    lines = [
        "# The README's workflow on a GPU host (benchmarks/gpu_workflow.py)",
        "",
        f"Host: {gpus}; torch {meta['torch']}; {meta['cpus']} CPUs. Model: {meta['model']}. {meta['args']}",
        "",
        "| step | wall s | peak GPU GiB | peak host GiB | throughput | target | met | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        met = "" if r.met is None else ("yes" if r.met else "**no**")
        lines.append(
            f"| {r.step} | {r.wall_s if r.wall_s is not None else ''} | "
            f"{r.peak_gpu_gib if r.peak_gpu_gib is not None else ''} | "
            f"{r.peak_host_gib if r.peak_host_gib is not None else ''} | {r.throughput} | {r.target} | {met} | "
            f"{r.note} |"
        )
    (results / "gpu_workflow.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


def train_row(
    step: str,
    args: list[str],
    run_dir: Path,
    log_dir: Path,
    target: tuple[str, Callable[[Row, float], bool]] | None,
) -> Row:
    """A training step, with its steady throughput and target."""
    row = run_step(step, args, log_dir)
    rate, text = train_throughput(run_dir)
    row.throughput = text
    if target is not None and rate is not None and row.returncode == 0:
        row.target, check = target
        row.met = check(row, rate)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (about 40 GB)")
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per training run")
    parser.add_argument(
        "--limit", type=int, default=32, help="samples for eval gen / questions per exam subject"
    )
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients in the API load")
    parser.add_argument("--only", default="", help="comma-separated steps to run (default: all)")
    parser.add_argument(
        "--model", type=Path, help="an official-layout checkpoint to use instead of the random 6B"
    )
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    only = set(filter(None, args.only.split(",")))

    def wanted(step: str) -> bool:
        return not only or step in only

    work = args.work
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    chatglm3 = args.shared / "chatglm3"
    official = args.model or work / "chatglm3-6b"
    native, data = work / "chatglm3-6b-hf", work / "data"
    rows: list[Row] = []
    gpus = len(gpu_memory_used_mib())

    if not (official / "config.json").is_file():
        started = time.perf_counter()
        build(official, chatglm3 / "chatglm3-6b-config.json", shards=7, fmt="bin")
        rows.append(Row("build random 6B", "random_chatglm3.build", round(time.perf_counter() - started, 1)))
    if wanted("env"):
        rows.append(run_step("env", [*WENZHEN, "env", str(official), "--no-checksums"], logs))
    if wanted("convert") or wanted("qlora"):
        shutil.rmtree(native, ignore_errors=True)
        rows.append(run_step("convert", [*WENZHEN, "convert", str(official), str(native)], logs))
    shutil.rmtree(data, ignore_errors=True)
    toyhom = args.shared / "data" / "toyhom-chinese-medical-dialogue" / "样例_内科5000-6000.csv"
    rows.append(
        run_step("data prepare", [*WENZHEN, "data", "prepare", str(toyhom), "--out", str(data)], logs)
    )

    steps = [
        "--max-steps",
        str(args.steps),
        "--save-steps",
        str(10 * args.steps),
        "--eval-steps",
        str(10 * args.steps),
    ]
    rate_target = (
        "LoRA >= 15,000 tok/s steady (shipped config, README command)",
        lambda r, rate: rate >= 15000,
    )
    runs = work / "runs"
    lora_run = runs / "lora"
    if wanted("lora"):
        cmd = [
            *WENZHEN,
            "train",
            str(data),
            str(official),
            str(ROOT / "configs/lora.yaml"),
            "--output-dir",
            str(lora_run),
        ]
        rows.append(train_row("train lora", [*cmd, *steps], lora_run, logs, rate_target))
    if wanted("qlora"):
        qlora_run = runs / "qlora"
        cmd = [
            sys.executable,
            "-c",
            CAPPED,
            "16",
            "train",
            str(data),
            str(native),
            str(ROOT / "configs/lora.yaml"),
        ]
        cmd += ["--method", "qlora", "--output-dir", str(qlora_run), *steps]
        qlora_target = (
            "QLoRA under a 16 GiB cap: >= 3,000 tok/s steady, peak < 14 GiB",
            lambda r, rate: rate >= 3000 and (r.peak_gpu_gib or 99) < 14,
        )
        rows.append(train_row("train qlora (16 GiB cap)", cmd, qlora_run, logs, qlora_target))
        if rows[-1].returncode == 0:
            merged_q = work / "merged-qlora"
            shutil.rmtree(merged_q, ignore_errors=True)
            merge_cmd = [
                *WENZHEN,
                "merge",
                str(qlora_run / "final"),
                "--base",
                str(native),
                "--out-dir",
                str(merged_q),
            ]
            rows.append(run_step("merge qlora (verify)", merge_cmd, logs))
    if wanted("ptuning"):
        run = runs / "ptuning"
        cmd = [
            *WENZHEN,
            "train",
            str(data),
            str(official),
            str(ROOT / "configs/ptuning_v2.yaml"),
            "--output-dir",
            str(run),
        ]
        rows.append(train_row("train ptuning_v2", [*cmd, *steps], run, logs, None))
    if wanted("sft"):
        if gpus >= 2:
            run = runs / "sft"
            cmd = [
                *WENZHEN,
                "train",
                str(data),
                str(native),
                str(ROOT / "configs/sft.yaml"),
                "--output-dir",
                str(run),
            ]
            rows.append(train_row("train full sft (all GPUs)", [*cmd, *steps], run, logs, None))
        else:
            rows.append(
                Row(
                    "train full sft",
                    "configs/sft.yaml",
                    note=f"not run: needs two GPUs, this host has {gpus}",
                )
            )
    adapter = lora_run / "final"
    if wanted("eval") and adapter.is_dir():
        gen = [
            *WENZHEN,
            "eval",
            "gen",
            str(official),
            "--adapter",
            str(adapter),
            "--data",
            str(data / "test.jsonl"),
        ]
        gen += [
            "--limit",
            str(args.limit),
            "--max-new-tokens",
            "128",
            "--out",
            str(work / "eval-gen"),
            "--force",
        ]
        rows.append(run_step("eval gen", gen, logs))
        exam = [*WENZHEN, "eval", "exam", str(official), "--adapter", str(adapter)]
        exam += ["--data", str(args.shared / "data" / "cmmlu-medical"), "--shots", "0,5"]
        exam += ["--limit-per-subject", str(args.limit), "--out", str(work / "eval-exam"), "--force"]
        rows.append(run_step("eval exam", exam, logs))
    merged = work / "merged"
    if wanted("merge") and adapter.is_dir():
        shutil.rmtree(merged, ignore_errors=True)
        rows.append(
            run_step("merge (verify)", [*WENZHEN, "merge", str(adapter), "--out-dir", str(merged)], logs)
        )
    if wanted("api") and (merged / "config.json").is_file():
        rows.append(serve_step(merged, logs, port=18431, clients=args.clients))
    if wanted("web"):
        rows.append(web_step())

    meta = machine() | {
        "args": f"--steps {args.steps} --limit {args.limit} --clients {args.clients}",
        "model": str(args.model)
        if args.model
        else "ChatGLM3-6B shapes, random fp16 weights, official layout",
    }
    write_results(rows, args.results, meta)


if __name__ == "__main__":
    main()
