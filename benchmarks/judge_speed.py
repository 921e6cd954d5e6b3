"""Wall time of a judged run (`wenzhen eval judge`) on this machine, and where the time goes.

The demo model (the embedded SmolLM2-135M-Instruct) answers N single-turn questions of Huatuo-Llama-Med-Chinese
(`../shared/data/huatuo-llama-med-chinese/llama_data.json`, written as a messages JSONL with the reference answer)
through the engine, and the same model served by `wenzhen api` (a separate process, a real HTTP server on a free
loopback port) is the judge. The
report's phase split says how much of the time is wenzhen answering and how much is waiting for the judge. A
135M model rarely writes the rubric JSON, so most judgments end as recorded failures; the time is what matters
here. Writes `judge_speed.{json,md}` with the machine and its load average into `--results`.
"""

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch
import yaml

from wenzhen.config import validate_config
from wenzhen.evaluate.judge import JudgeEvalConfig, evaluate_judged
from wenzhen.models.embedded import embedded_model_dir

RESULTS = Path(__file__).resolve().parent / "results"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start_api(model: Path, port: int, workdir: Path, threads: int) -> subprocess.Popen[bytes]:
    config = workdir / "api.yaml"
    limits = {"max_concurrent": 1, "max_queue": 64, "default_max_tokens": 64}
    config.write_text(
        yaml.safe_dump({"limits": limits, "generation": {"temperature": 0.0}}), encoding="utf-8"
    )
    command = [
        sys.executable,
        "-m",
        "wenzhen",
        "api",
        str(model),
        "--port",
        str(port),
        "--model-name",
        "judge",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    process = subprocess.Popen(
        [*command, "--config", str(config), "--device", "cpu"], env=env, start_new_session=True
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.5)
    process.terminate()
    raise SystemExit("wenzhen api did not start within 180 s")


def _questions(source: Path, count: int, out: Path) -> Path:
    """The first `count` records of the Huatuo JSON-lines file as `{"id", "messages"}` JSONL."""
    rows = []
    with open(source, encoding="utf-8") as handle:
        for index, line in zip(range(count), handle, strict=False):
            record = json.loads(line)
            question = f"{record['instruction']}\n{record['input']}".strip()
            messages = [
                {"role": "user", "content": question},
                {"role": "assistant", "content": record["output"]},
            ]
            rows.append(json.dumps({"id": str(index), "messages": messages}, ensure_ascii=False))
    out.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--source", type=Path, default=Path("../shared/data/huatuo-llama-med-chinese/llama_data.json")
    )
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--answer-tokens", type=int, default=64)
    parser.add_argument("--judge-max-tokens", type=int, default=64)
    parser.add_argument("--attempts", type=int, default=1, help="tries per judgment on malformed JSON")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of the answerer and the judge server (default 1: "
        "on a shared 2-core machine more threads than free cores slow both down)",
    )
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()

    # A terminated benchmark must still stop its server (it runs in its own session).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    torch.set_num_threads(args.threads)
    model = embedded_model_dir()
    port = _free_port()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as workdir:
        data = _questions(args.source, args.questions, Path(workdir) / "questions.jsonl")
        server = _start_api(model, port, Path(workdir), args.threads)
        try:
            config = validate_config(
                JudgeEvalConfig,
                {
                    "model": {"device": "cpu"},
                    "limit": args.questions,
                    "batch_size": args.batch_size,
                    "generation": {"max_new_tokens": args.answer_tokens, "temperature": 0.0},
                    "judge": {
                        "endpoint": {
                            "url": f"http://127.0.0.1:{port}/v1",
                            "model": "judge",
                            "max_tokens": args.judge_max_tokens,
                            "concurrency": args.concurrency,
                        },
                        "attempts": args.attempts,
                        "use_cache": False,
                    },
                },
                source="benchmark",
            )
            started = time.perf_counter()
            report = evaluate_judged(str(model), data, Path(workdir) / "run", config)
            wall = time.perf_counter() - started
        finally:
            server.terminate()
            server.wait(timeout=30)
    load_after = os.getloadavg()
    phases = report.breakdown["phase seconds"]
    result = {
        "machine": f"{platform.machine()} CPU x{os.cpu_count()}, {platform.platform()}, torch {torch.__version__}",
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "questions": report.data.n_evaluated,
        "answer_tokens": args.answer_tokens,
        "judge_max_tokens": args.judge_max_tokens,
        "judge_attempts": args.attempts,
        "concurrency": args.concurrency,
        "torch_threads": args.threads,
        "wall_s": round(wall, 1),
        "answering_s": phases["answering"],
        "judging_s": phases["judging"],
        "counts": report.counts,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "judge_speed.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    lines = [
        "# judge_speed",
        "",
        f"Machine: {result['machine']}; load average before {result['load_average_before']}, "
        f"after {result['load_average_after']} (shared machine).",
        "",
        f"{result['questions']} Huatuo-Llama-Med-Chinese questions; answerer and judge: the demo model (SmolLM2-135M-Instruct), "
        f"the judge behind `wenzhen api`; {args.answer_tokens} answer tokens, judge max_tokens "
        f"{args.judge_max_tokens}, {args.attempts} attempt(s), concurrency {args.concurrency}, {args.threads} torch thread(s) each.",
        "",
        "| phase | seconds |",
        "|---|---|",
        f"| whole run | {result['wall_s']} |",
        f"| model answering (wenzhen engine) | {result['answering_s']} |",
        f"| judge ({report.counts['judge_requests']} requests, {report.counts['judge_failures']} failed) "
        f"| {result['judging_s']} |",
    ]
    (args.results / "judge_speed.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
