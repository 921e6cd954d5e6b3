"""The README's workflow on a GPU host, end to end, the way a user runs it, within one time budget.

On a ChatGLM3-6B-shaped official-layout checkpoint with random weights (fp16 safetensors shards built from
`../shared/chatglm3/chatglm3-6b-config.json` by `random_chatglm3.py`), every step is the real `wenzhen` command in
its own process:

    build -> env -> convert -> data prepare (Toyhom sample) -> train lora / qlora (16 GiB cap) / ptuning_v2 / full
    SFT (two GPUs) -> merge (the QLoRA adapter into the bf16 base, verified) -> eval gen / exam -> api (time to
    healthy, first answer, short concurrent load) -> web in Chromium when the host has one.

The 12 GB checkpoint is converted once and every later step loads the converted one (safetensors, native layout):
the on-the-fly conversion of the official layout is paid once, in `convert`.

Budget: `--budget SECONDS` bounds the whole script. Each step has a planned share (PLANNED_SECONDS, scaled to the
budget); its timeout is what is left of the budget minus the planned shares of the steps after it, so a slow step
may use time earlier steps left over but never the time of later ones, and a hang costs only its own share. The
table is rewritten after every step, so a killed run still leaves one. Steps are shortened (`--steps`, `--limit`),
never skipped silently: a step that cannot run here says why in its row.

For each step: wall time, peak GPU memory (nvidia-smi, all GPUs, above the reading before the step; for training
also the process's own peak allocated), peak host memory (RSS of the command's process tree), the step's own
throughput where it has one, and whether it met the issue's target. Writes
``gpu_workflow-<card>.{md,json}`` into ``--results`` (default benchmarks/results).

    python benchmarks/gpu_workflow.py --work /tmp/wf --shared ../shared --budget 560 --results $OUT
"""

import argparse
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
WENZHEN = [sys.executable, "-m", "wenzhen"]
# A process that caps its own CUDA memory, then runs the wenzhen CLI: how "a 16 GiB card" is modelled on a bigger one.
CAPPED = (
    "import sys, torch; cap = float(sys.argv.pop(1)) * 2**30; "
    "torch.cuda.set_per_process_memory_fraction(min(1.0, cap / torch.cuda.get_device_properties(0).total_memory)); "
    "from wenzhen.cli import main; sys.exit(main(sys.argv[1:]))"
)
QLORA_CAP_GIB = 16
# Planned seconds of each step on one H200 (from gpu_workflow_runs/ and train_targets-nvidia-h200.md: loading the
# 6B takes seconds, QLoRA took 79 s in all; LoRA's first compiled step 64-204 s, the api's warm-up 165 s; the web
# share is small because GPU hosts rarely have Chromium, and as the last step it gets whatever is left). Only the
# ratios matter: the shares are scaled to --budget over the steps selected.
PLANNED_SECONDS = {
    "build": 25,
    "env": 8,
    "convert": 30,
    "data": 4,
    "lora": 200,
    "qlora": 80,
    "qlora-compile": 80,
    "ptuning": 25,
    "sft": 90,
    "merge": 38,
    "eval-gen": 20,
    "eval-exam": 15,
    "api": 100,
    "web": 5,
}
# Run only when --only names them: QLoRA with its layers compiled, which the planner does not do for a 4-bit base
# (measured slower on an H200: gpu_workflow_runs/h200-qlora-trial.md); kept to measure it again.
OPTIONAL = {"qlora-compile"}
PROMPT = "我最近三天一直咳嗽，晚上更厉害，有点低烧，需要去医院吗？"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


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
    timeout_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def add_note(self, text: str) -> None:
        self.note = "; ".join(part for part in (self.note, text) if part)


class Budget:
    """The script's time: each step's timeout leaves the planned shares of the steps after it untouched."""

    def __init__(self, seconds: float, steps: list[str]) -> None:
        self.deadline = time.monotonic() + seconds
        planned = sum(PLANNED_SECONDS[s] for s in steps) or 1
        self.share = {s: PLANNED_SECONDS[s] * seconds / planned for s in steps}
        self.pending = list(steps)

    def start(self, step: str) -> float:
        """Seconds `step` may take; marks it started."""
        if step in self.pending:
            self.pending.remove(step)
        later = sum(self.share[s] for s in self.pending)
        return max(5.0, self.deadline - time.monotonic() - later)

    def left(self) -> float:
        """Seconds until the budget is spent."""
        return self.deadline - time.monotonic()

    def skip(self, step: str) -> None:
        """A step that will not run gives its share to the ones after it."""
        if step in self.pending:
            self.pending.remove(step)


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


def gpu_names() -> list[str]:
    """Each GPU's name as nvidia-smi reports it (this process itself stays off the GPU)."""
    if shutil.which("nvidia-smi") is None:
        return []
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        check=False,
    )
    return [name.strip() for name in out.stdout.strip().splitlines()] if out.returncode == 0 else []


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

    def stop(self) -> tuple[float | None, float]:
        self._stop.set()
        self._thread.join()
        gpu = round(self.peak_gpu_mib / 1024, 2) if self.idle else None
        return gpu, round(self.peak_rss / 2**30, 2)


def log_path(log_dir: Path, step: str) -> Path:
    return log_dir / (re.sub(r"[^A-Za-z0-9_.-]+", "-", step).strip("-") + ".log")


def last_line(log: Path) -> str:
    """The last non-empty line of a log without progress-bar redraws (what a failure says)."""
    lines = [
        line.strip()
        for line in log.read_text(errors="replace").replace("\r", "\n").splitlines()
        if line.strip()
    ]
    return lines[-1][:300] if lines else "(no output)"


def stop_group(process: subprocess.Popen) -> None:
    """End a step's process and everything it started (its own session), politely first."""
    for sig, wait in ((signal.SIGINT, 10), (signal.SIGKILL, 5)):
        if process.poll() is not None:
            return
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue


def run_step(step: str, args: list[str], log_dir: Path, timeout: float) -> Row:
    """Run one command to completion or its timeout; its wall time, peak memory and log."""
    command = " ".join(str(a) for a in args)
    print(f"[workflow] {step} (at most {timeout:.0f} s): {command}", flush=True)
    log = log_path(log_dir, step)
    started = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        sampler = Sampler(proc.pid)
        try:
            returncode = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_group(proc)
            returncode = None
    gpu, host = sampler.stop()
    row = Row(step, command, round(time.perf_counter() - started, 1), gpu, host, returncode=returncode)
    row.timeout_s = round(timeout)
    if returncode is None:
        row.note = f"timed out after {timeout:.0f} s (its share of the budget); last line: {last_line(log)}"
    elif returncode != 0:
        row.note = "failed: " + last_line(log)
        print(log.read_text(errors="replace")[-3000:], flush=True)
    note_loads(row, log)
    return row


def weight_loads(log: Path) -> list[int]:
    """Seconds of each model load in a step's log (transformers' finished "Loading weights" bars)."""
    if not log.is_file():
        return []
    finished = [line.rsplit("\r", 1)[-1] for line in log.read_text(errors="replace").splitlines()]
    bars = [re.search(r"Loading weights: 100%.*\[(\d+):(\d+)<", line) for line in finished]
    return [int(m[1]) * 60 + int(m[2]) for m in bars if m]


def note_loads(row: Row, log: Path) -> None:
    """How often the step loaded a model and how long that took (the 12 GB checkpoint: worth minimising)."""
    loads = weight_loads(log)
    if loads:
        row.extra["weight_loads_s"] = loads
        row.add_note(f"{len(loads)} model load(s), {sum(loads)} s")


def not_run(step: str, why: str) -> Row:
    return Row(step, "", note=f"not run: {why}")


def read_json(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def training_figures(row: Row, run_dir: Path, logs: Path) -> float | None:
    """Fill a training row from the run's summary.json and run.json; returns the steady tokens/s."""
    summary = read_json(run_dir / "summary.json")
    run = read_json(run_dir / "run.json")
    plan = run.get("performance_plan") or (run.get("extra") or {}).get("performance_plan") or {}
    rate = summary.get("steady_tokens_per_second")
    overall = summary.get("tokens_per_second")
    if not summary and (seen := bar_rate(log_path(logs, row.step))):
        rate, steps = seen
        row.throughput = f"{rate:,.0f} tok/s steady (progress bar at step {steps}; the run did not finish)"
    elif rate:
        row.throughput = f"{rate:,.0f} tok/s steady ({summary.get('steps')} steps, 3 warm-up)"
    elif overall:
        row.throughput = f"{overall:,.0f} tok/s overall (too few steps for a steady rate)"
    if summary.get("peak_memory_bytes"):
        row.extra["peak_allocated_gib"] = round(summary["peak_memory_bytes"] / 2**30, 2)
    if summary.get("peak_reserved_bytes"):
        row.extra["peak_reserved_gib"] = round(summary["peak_reserved_bytes"] / 2**30, 2)
    row.extra["summary"] = summary
    if plan:
        row.extra["plan"] = plan
        rows = plan.get("row_tokens") or f"batch {plan.get('per_device_train_batch_size')}"
        planned = (
            f"plan: rows {rows} x {plan.get('gradient_accumulation_steps')}, checkpointing "
            f"{'on' if plan.get('gradient_checkpointing') else 'off'}, compile {'on' if plan.get('compile') else 'off'}"
            f", estimated peak {plan.get('estimated_peak_gib')} GiB"
        )
        row.note = "; ".join(part for part in (planned, row.note) if part)
    if "peak_allocated_gib" in row.extra:
        kind = summary.get("peak_memory_kind", "")
        row.add_note(f"process peak {row.extra['peak_allocated_gib']} GiB ({kind})")
    if "peak_reserved_gib" in row.extra:
        row.add_note(f"{row.extra['peak_reserved_gib']} GiB reserved (allocator cache included)")
    return float(rate) if rate else None


def bar_rate(log: Path) -> tuple[float, int] | None:
    """The training bar's last tokens/s once past the 3 warm-up steps (steady then), with its step, or None."""
    if not log.is_file():
        return None
    found = re.findall(r"(\d+)/\d+ \[[^\]]*tok/s=([\d,]+)", log.read_text(errors="replace"))
    past = [(float(rate.replace(",", "")), int(step)) for step, rate in found if int(step) > 4]
    return past[-1] if past else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, process: subprocess.Popen, timeout: float) -> float | None:
    """Seconds until GET `url` answers 200, or None if the server died or the timeout passed."""
    import httpx

    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if process.poll() is not None:
            return None
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    return None


def chat_once(url: str, model: str, max_tokens: int, timeout: float) -> tuple[float, int, float]:
    """One streamed chat completion: (seconds, completion tokens, seconds to first content)."""
    import httpx

    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first: float | None = None
    tokens = 0
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=timeout) as response:
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


@contextmanager
def server(step: str, args: list[str], log_dir: Path, row: Row) -> Iterator[subprocess.Popen]:
    """A server process for the length of the block; its wall time and peak memory go into `row`."""
    log = log_path(log_dir, step)
    row.command = " ".join(args)
    print(f"[workflow] {step} (at most {row.timeout_s} s): {row.command}", flush=True)
    started = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        sampler = Sampler(process.pid)
        try:
            yield process
        finally:
            stop_group(process)
            row.wall_s = round(time.perf_counter() - started, 1)
            row.peak_gpu_gib, row.peak_host_gib = sampler.stop()
            note_loads(row, log)


def warm_up_seconds(log: Path) -> str:
    """The server's own warm-up line (`... warm-up ... N s`), if it printed one."""
    lines = [
        line.strip()
        for line in log.read_text(errors="replace").replace("\r", "\n").splitlines()
        if "warm" in line.lower()
    ]
    return lines[-1][:160] if lines else ""


def api_step(merged: Path, log_dir: Path, clients: int, timeout: float) -> Row:
    """`wenzhen api MERGED`: time to healthy, first and second answer (128 tokens), then `clients` at once."""
    from concurrent.futures import ThreadPoolExecutor

    deadline = time.monotonic() + timeout
    port = free_port()
    row = Row("api", "", timeout_s=round(timeout))
    args = [*WENZHEN, "api", str(merged), "--port", str(port), "--model-name", "wenzhen-med"]
    url = f"http://127.0.0.1:{port}"
    with server("api", args, log_dir, row) as process:
        healthy = wait_ready(f"{url}/health", process, timeout=max(5.0, timeout - 20))
        warm = warm_up_seconds(log_path(log_dir, "api"))
        if healthy is None:
            state = "died" if process.poll() is not None else f"not healthy within {timeout - 20:.0f} s"
            row.note = f"server {state}: {last_line(log_path(log_dir, 'api'))}"
            return row
        row.extra["seconds_to_healthy"] = round(healthy, 1)
        row.extra["warm_up_line"] = warm
        row.target = "first answer after /health ok < 2 s (128 tokens)"
        try:
            first = chat_once(url, "wenzhen-med", 128, max(5.0, deadline - time.monotonic()))
            row.met = first[0] < 2.0
            row.extra |= {"first_answer_s": round(first[0], 2), "first_answer_tokens": first[1]}
            row.note = f"healthy after {healthy:.1f} s ({warm or 'no warm-up line'}); "
            row.note += f"first answer {first[0]:.2f} s ({first[1]} tokens)"
            row.throughput = f"1 client {first[1] / first[0]:,.0f} tok/s"
            second = chat_once(url, "wenzhen-med", 128, max(5.0, deadline - time.monotonic()))
            row.extra["second_answer_s"] = round(second[0], 2)
            row.note += f", second {second[0]:.2f} s"
            load_started = time.perf_counter()
            left = max(5.0, deadline - time.monotonic())
            with ThreadPoolExecutor(clients) as pool:
                results = list(pool.map(lambda _: chat_once(url, "wenzhen-med", 128, left), range(clients)))
            aggregate = sum(r[1] for r in results) / (time.perf_counter() - load_started)
            row.extra |= {
                f"aggregate_tok_s_{clients}_clients": round(aggregate, 1),
                "ttft_s_max": round(max(r[2] for r in results), 3),
            }
            row.throughput += f"; {clients} clients {aggregate:,.0f} tok/s"
            row.returncode = 0
        except Exception as exc:  # the row says what went wrong; the table is still written
            row.add_note(f"load stopped: {type(exc).__name__}: {str(exc)[:160]}")
    return row


def web_step(merged: Path, log_dir: Path, work: Path, timeout: float) -> Row:
    """`wenzhen web MERGED` answering one question in Chromium (Playwright), where the host has both."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    missing = [name for name in ("playwright", "gradio") if importlib.util.find_spec(name) is None]
    if chromium is None or missing:
        lacking = ", ".join((["Chromium"] if chromium is None else []) + missing)
        return not_run(
            "web", f"this host lacks {lacking} (tests/serve/test_web.py drives the UI in Chromium on CPU)"
        )
    from playwright.sync_api import sync_playwright

    deadline = time.monotonic() + timeout
    config = work / "web.yaml"
    config.write_text("generation:\n  max_new_tokens: 128\n  temperature: 0\n")
    port = free_port()
    row = Row("web", "", timeout_s=round(timeout))
    args = [*WENZHEN, "web", str(merged), "--port", str(port), "--config", str(config)]
    url = f"http://127.0.0.1:{port}/"
    with server("web", args, log_dir, row) as process:
        ready = wait_ready(url, process, timeout=max(5.0, timeout - 20))
        if ready is None:
            row.note = f"web UI not up: {last_line(log_path(log_dir, 'web'))}"
            return row
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=chromium, args=CHROMIUM_ARGS, headless=True
                )
                page = browser.new_page()
                page.goto(url)
                page.wait_for_selector("#question textarea", timeout=30_000)
                asked = time.perf_counter()
                page.fill("#question textarea", PROMPT)
                page.click("#send")
                answer, stable_since = "", time.perf_counter()
                while time.monotonic() < deadline:
                    text = page.inner_text("#chatbot")
                    if text != answer:
                        answer, stable_since = text, time.perf_counter()
                    elif len(answer) > len(PROMPT) + 10 and time.perf_counter() - stable_since > 2:
                        break
                    time.sleep(0.1)
                answered = stable_since - asked
                browser.close()
            row.returncode = 0
            row.extra |= {"seconds_to_ready": round(ready, 1), "answer_seconds": round(answered, 2)}
            row.note = f"UI up after {ready:.1f} s; one answer in Chromium in {answered:.2f} s ({len(answer)} characters)"
        except Exception as exc:  # the row says what went wrong; the table is still written
            row.note = f"browser step failed: {type(exc).__name__}: {str(exc)[:200]}"
    return row


def machine() -> dict[str, Any]:
    """The host this ran on (read without importing torch: this process stays light and off the GPU)."""
    from importlib.metadata import version

    return {
        "gpus": gpu_names(),
        "torch": version("torch"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "bitsandbytes": importlib.util.find_spec("bitsandbytes") is not None,
        "jieba": importlib.util.find_spec("jieba") is not None,
    }


def readable_tail(log: Path, characters: int = 4000) -> str:
    """A log's end with progress-bar redraws collapsed to their last state (what a reader needs of it)."""
    text = log.read_text(errors="replace")
    lines = [line.rsplit("\r", 1)[-1] for line in text.splitlines()]
    kept = "\n".join(
        line for line in lines if line.strip() and "Warning" not in line and "warnings.warn" not in line
    )
    return kept[-characters:]


def write_results(rows: list[Row], results: Path, meta: dict[str, Any], logs: Path) -> None:
    """RESULTS/gpu_workflow-<card>.{json,md} and -logs.txt (each step log's end): three files, rewritten after every
    step (a GPU host returns few files)."""
    results.mkdir(parents=True, exist_ok=True)
    stem = "gpu_workflow-" + re.sub(r"[^a-z0-9]+", "-", meta["card"].lower()).strip("-")
    tails = [
        f"==== {log.name}\n{readable_tail(log)}\n" for log in sorted(logs.glob("*.log"), key=os.path.getmtime)
    ]
    (results / f"{stem}-logs.txt").write_text("\n".join(tails))
    payload = {"machine": meta, "rows": [asdict(r) for r in rows]}
    (results / f"{stem}.json").write_text(json.dumps(payload, ensure_ascii=False, indent=2))
    gpus = ", ".join(meta["gpus"]) or "no GPU"
    total = sum(r.wall_s or 0 for r in rows)
    lines = [
        "# The README's workflow on a GPU host (benchmarks/gpu_workflow.py)",
        "",
        f"Host: {gpus}; torch {meta['torch']}; {meta['cpus']} CPUs. Model: {meta['model']}.",
        f"Arguments: {meta['args']}. Steps' wall time in all: {total:.0f} s.",
        "",
        "| step | wall s | peak GPU GiB | peak host GiB | throughput | target | met | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        met = "" if r.met is None else ("yes" if r.met else "**no**")
        cells = [r.wall_s, r.peak_gpu_gib, r.peak_host_gib]
        shown = ["" if c is None else str(c) for c in cells]
        note = r.note.replace("|", "/").replace("\n", " ")
        lines.append(f"| {r.step} | {' | '.join(shown)} | {r.throughput} | {r.target} | {met} | {note} |")
    lines += [
        "",
        "Peak GPU: nvidia-smi over all GPUs above the reading before the step (CUDA context and allocator cache "
        "included); training rows also give torch's peak allocated. Peak host: RSS of the step's process tree.",
    ]
    (results / f"{stem}.md").write_text("\n".join(lines) + "\n")


@dataclass
class Paths:
    official: Path
    native: Path
    data: Path
    runs: Path
    merged: Path
    logs: Path


def train_args(steps: int) -> list[str]:
    """Shortened training: `steps` optimizer steps, no checkpoint or evaluation in between."""
    never = str(10 * steps)
    return ["--max-steps", str(steps), "--save-steps", never, "--eval-steps", never]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (about 40 GB for the 6B)")
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    parser.add_argument("--budget", type=float, default=560, help="seconds the whole script may take")
    parser.add_argument(
        "--steps", type=int, default=8, help="optimizer steps per training run (3 are warm-up)"
    )
    parser.add_argument(
        "--limit", type=int, default=8, help="samples for eval gen / questions per exam subject"
    )
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients in the API load")
    parser.add_argument(
        "--only", default="", help=f"comma-separated steps (default all): {','.join(PLANNED_SECONDS)}"
    )
    parser.add_argument(
        "--model", type=Path, help="an official-layout checkpoint to use instead of the random 6B"
    )
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--logs", type=Path, help="each step's output (default WORK/logs)")
    args = parser.parse_args()
    only = [s for s in args.only.split(",") if s]
    unknown = sorted(set(only) - set(PLANNED_SECONDS))
    if unknown:
        parser.error(f"unknown step(s) {', '.join(unknown)}; choose from {', '.join(PLANNED_SECONDS)}")
    gpus = len(gpu_memory_used_mib())
    wanted = [s for s in PLANNED_SECONDS if s in only or (not only and s not in OPTIONAL)]
    selected = [s for s in wanted if s != "sft" or gpus >= 2]
    budget = Budget(args.budget, selected)
    work = args.work
    paths = Paths(
        official=args.model or work / "chatglm3-6b",
        native=work / "chatglm3-6b-hf",
        data=work / "data",
        runs=work / "runs",
        merged=work / "merged",
        logs=args.logs or work / "logs",
    )
    paths.logs.mkdir(parents=True, exist_ok=True)
    meta = machine() | {
        "card": (gpu_names() or ["cpu"])[0],
        "args": f"--budget {args.budget:.0f} --steps {args.steps} --limit {args.limit} --clients {args.clients}"
        + (f" --only {args.only}" if only else ""),
        "model": str(args.model)
        if args.model
        else "ChatGLM3-6B shapes, random fp16 weights, official layout",
    }
    rows: list[Row] = []

    def record(row: Row) -> Row:
        rows.append(row)
        write_results(rows, args.results, meta, paths.logs)
        print(f"[workflow] {row.step}: {row.wall_s} s {row.throughput} {row.note}", flush=True)
        return row

    for step in wanted:
        if step not in selected:
            record(not_run("train full sft", f"configs/sft.yaml needs two GPUs, this host has {gpus}"))
            continue
        if budget.left() < 5:
            record(not_run(step, f"the {args.budget:.0f} s budget was spent before it"))
            continue
        row = STEPS[step](paths, args, budget, gpus)
        budget.skip(step)  # a step that did not start hands its share on
        if row is not None:
            record(row)
    print(f"[workflow] table: {args.results}", flush=True)


StepFunction = Callable[[Paths, argparse.Namespace, Budget, int], Row | None]


def build_step(paths: Paths, args: argparse.Namespace, budget: Budget, gpus: int) -> Row | None:
    """The random 6B in the official layout (safetensors, as the official download also ships), once."""
    if (paths.official / "config.json").is_file():
        return None
    script = ROOT / "benchmarks" / "random_chatglm3.py"
    config = args.shared / "chatglm3" / "chatglm3-6b-config.json"
    device = ["--device", "cuda"] if gpus else []
    cmd = [
        sys.executable,
        str(script),
        str(paths.official),
        "--config",
        str(config),
        "--format",
        "safetensors",
    ]
    return run_step("build random 6B", [*cmd, *device], paths.logs, budget.start("build"))


def env_step(paths: Paths, args: argparse.Namespace, budget: Budget, gpus: int) -> Row:
    cmd = [*WENZHEN, "env", str(paths.official), "--no-checksums"]
    return run_step("env", cmd, paths.logs, budget.start("env"))


def convert_step(paths: Paths, args: argparse.Namespace, budget: Budget, gpus: int) -> Row:
    shutil.rmtree(paths.native, ignore_errors=True)
    cmd = [*WENZHEN, "convert", str(paths.official), str(paths.native)]
    return run_step("convert", cmd, paths.logs, budget.start("convert"))


def base_model(paths: Paths) -> Path:
    """The converted checkpoint when `convert` made it (loads without conversion), else the official one."""
    return paths.native if (paths.native / "config.json").is_file() else paths.official


def data_step(paths: Paths, args: argparse.Namespace, budget: Budget, gpus: int) -> Row:
    shutil.rmtree(paths.data, ignore_errors=True)
    toyhom = args.shared / "data" / "toyhom-chinese-medical-dialogue" / "样例_内科5000-6000.csv"
    cmd = [*WENZHEN, "data", "prepare", str(toyhom), "--out", str(paths.data)]
    return run_step("data prepare", cmd, paths.logs, budget.start("data"))


def train_step(
    name: str, label: str, config: str, target: tuple[str, Callable[[Row, float], bool]] | None
) -> StepFunction:
    """A training step `name` (a PLANNED_SECONDS key, its run folder) with a shipped config; QLoRA is LoRA's config
    with `--method qlora` under the memory cap."""

    def step(paths: Paths, args: argparse.Namespace, budget: Budget, gpus: int) -> Row:
        if not (paths.data / "train.jsonl").is_file():
            return not_run(label, "data prepare did not finish")
        run_dir = paths.runs / name
        shutil.rmtree(run_dir, ignore_errors=True)
        qlora = name.startswith("qlora")
        launcher = [sys.executable, "-c", CAPPED, str(QLORA_CAP_GIB)] if qlora else WENZHEN
        cmd = [*launcher, "train", str(paths.data), str(base_model(paths)), str(ROOT / "configs" / config)]
        method = ["--method", "qlora"] if qlora else []
        if name == "qlora-compile":
            method += ["--set", "performance.compile=true"]
        cmd += [*method, "--output-dir", str(run_dir), *train_args(args.steps)]
        row = run_step(label, cmd, paths.logs, budget.start(name))
        rate = training_figures(row, run_dir, paths.logs)
        if target is not None and rate is not None and row.ok:
            row.target, check = target
            row.met = check(row, rate)
        return row

    return step


def qlora_met(row: Row, rate: float) -> bool:
    """>= 3,000 tokens/s steady and under 14 GiB as the card reads it (nvidia-smi: the CUDA context, allocations and
    the allocator's cache: what a 16 GB card must hold), torch's allocated peak only where there is no reading."""
    peak = row.peak_gpu_gib if row.peak_gpu_gib is not None else row.extra.get("peak_allocated_gib", 99)
    return rate >= 3000 and peak < 14


def adapters(paths: Paths) -> list[Path]:
    """Finished LoRA-type adapters, QLoRA's first (the one the issue asks to merge into the bf16 base)."""
    return [paths.runs / n / "final" for n in ("qlora", "lora") if (paths.runs / n / "final").is_dir()]


def merge_step(paths: Paths, args: argparse.Namespace, budget: Budget, gpus: int) -> Row:
    found = adapters(paths)
    if not found:
        return not_run("merge (verify)", "no finished LoRA or QLoRA adapter")
    shutil.rmtree(paths.merged, ignore_errors=True)
    adapter = found[0]
    cmd = [*WENZHEN, "merge", str(adapter), "--base", str(base_model(paths)), "--out-dir", str(paths.merged)]
    row = run_step(f"merge {adapter.parent.name} (verify)", cmd, paths.logs, budget.start("merge"))
    verified = [
        line
        for line in log_path(paths.logs, row.step).read_text(errors="replace").splitlines()
        if "verif" in line
    ]
    if verified:
        row.add_note(verified[-1].strip()[:200])
    return row


def eval_adapter(paths: Paths) -> Path | None:
    """The README evaluates the LoRA adapter on its base; QLoRA's when LoRA did not finish."""
    found = adapters(paths)
    return found[-1] if found else None


def character_metrics() -> list[str]:
    """Without jieba (its 19 MB wheel does not fit beside bitsandbytes on the GPU host), the character-level
    metrics only; the word-level ones are the official ChatGLM3 ones and need it."""
    if importlib.util.find_spec("jieba") is not None:
        return []
    return ["--metrics", "rouge-1-char,rouge-2-char,rouge-l-char,bleu-4-char"]


def plain_generate() -> list[str]:
    """For a handful of answers transformers' generate beats the compiled static-cache engine, whose compilation
    is paid (and measured) in the api step; passed only while the CLI has the option."""
    cli = "\n".join(p.read_text() for p in (ROOT / "src" / "wenzhen").rglob("*.py"))
    return ["--static-cache", "off"] if '"--static-cache"' in cli else []


def eval_gen_step(paths: Paths, args: argparse.Namespace, budget: Budget, gpus: int) -> Row:
    adapter = eval_adapter(paths)
    if adapter is None or not (paths.data / "test.jsonl").is_file():
        return not_run("eval gen", "no finished adapter or test split")
    out = paths.runs / "eval-gen"
    cmd = [*WENZHEN, "eval", "gen", str(base_model(paths)), "--adapter", str(adapter)]
    cmd += ["--data", str(paths.data / "test.jsonl"), "--limit", str(args.limit), "--max-new-tokens", "128"]
    cmd += ["--out", str(out), "--force", *character_metrics(), *plain_generate()]
    row = run_step("eval gen", cmd, paths.logs, budget.start("eval-gen"))
    seconds = read_json(out / "report.json").get("elapsed_s")
    if row.ok and seconds:
        row.throughput = f"{args.limit} answers of <= 128 tokens in {seconds} s of generation and scoring"
        if plain_generate():
            row.add_note("transformers' generate (--static-cache off)")
        if character_metrics():
            row.add_note("jieba absent: character-level metrics only")
    return row


def eval_exam_step(paths: Paths, args: argparse.Namespace, budget: Budget, gpus: int) -> Row:
    adapter = eval_adapter(paths)
    if adapter is None:
        return not_run("eval exam", "no finished adapter")
    cmd = [*WENZHEN, "eval", "exam", str(base_model(paths)), "--adapter", str(adapter)]
    cmd += ["--data", str(args.shared / "data" / "cmmlu-medical"), "--shots", "0"]
    cmd += ["--limit-per-subject", str(args.limit), "--out", str(paths.runs / "eval-exam"), "--force"]
    row = run_step("eval exam", cmd, paths.logs, budget.start("eval-exam"))
    report = read_json(paths.runs / "eval-exam" / "report.json")
    questions, seconds = (report.get("data") or {}).get("n_evaluated"), report.get("elapsed_s")
    if row.ok and questions and seconds:
        row.throughput = (
            f"{questions} questions (0-shot) in {seconds} s of scoring, {questions / seconds:.1f}/s"
        )
    return row


def api_workflow_step(paths: Paths, args: argparse.Namespace, budget: Budget, gpus: int) -> Row:
    if not (paths.merged / "config.json").is_file():
        return not_run("api", "merge did not finish")
    return api_step(paths.merged, paths.logs, args.clients, budget.start("api"))


def web_workflow_step(paths: Paths, args: argparse.Namespace, budget: Budget, gpus: int) -> Row:
    if not (paths.merged / "config.json").is_file():
        return not_run("web", "merge did not finish")
    return web_step(paths.merged, paths.logs, args.work, budget.start("web"))


LORA_TARGET = ("LoRA >= 15,000 tok/s steady (shipped config)", lambda row, rate: rate >= 15000)
QLORA_TARGET = (
    f"QLoRA under a {QLORA_CAP_GIB} GiB cap: >= 3,000 tok/s steady, peak < 14 GiB (nvidia-smi)",
    qlora_met,
)
STEPS: dict[str, StepFunction] = {
    "build": build_step,
    "env": env_step,
    "convert": convert_step,
    "data": data_step,
    "lora": train_step("lora", "train lora", "lora.yaml", LORA_TARGET),
    "qlora": train_step("qlora", f"train qlora ({QLORA_CAP_GIB} GiB cap)", "lora.yaml", QLORA_TARGET),
    "qlora-compile": train_step(
        "qlora-compile", f"train qlora, layers compiled ({QLORA_CAP_GIB} GiB cap)", "lora.yaml", QLORA_TARGET
    ),
    "ptuning": train_step("ptuning", "train ptuning_v2", "ptuning_v2.yaml", None),
    "sft": train_step("sft", "train full sft (all GPUs)", "sft.yaml", None),
    "merge": merge_step,
    "eval-gen": eval_gen_step,
    "eval-exam": eval_exam_step,
    "api": api_workflow_step,
    "web": web_workflow_step,
}


if __name__ == "__main__":
    main()
