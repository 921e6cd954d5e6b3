"""Cost of hostile requests to `wenzhen api` before they are refused (issue 14's amplification request).

Each request is posted in-process (FastAPI's test client, the real app, engine and the shared tiny ChatGLM3) in a
fresh child process, after one ordinary warm-up request (the baseline); it reports the status, the wall time of the request and
the peak RSS above the warm baseline. Requests:
- `nested-tools`: ~38 KB, one tool whose parameters nest 220 objects (~4 MB of spaces once indented);
- `wide-tools`: within the parser's nesting limit but over the schema-depth limit (20 levels);
- `long-prompt`: a 1 MB body of text, far over the context;
- `largest-admitted-tools`: tool schemas just under the default 16 KB limit, 5 objects deep: admitted, so its
  (indented) tokenisation runs, inside the generation slot.
Run from the repository root: `python benchmarks/api_admission.py` (CPU is enough). Writes
`benchmarks/results/api_admission.{json,md}` with the machine.
"""

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODEL = ROOT.parent / "shared" / "chatglm3" / "tiny-chatglm3"
MODEL_ID = "tiny"


def nested_tools_request(depth: int = 220, width: int = 5) -> dict[str, Any]:
    """One tool whose parameters nest `depth` objects, each with `width` sibling properties (~38 KB at 220 x 5).

    Re-printed with 4-space indentation it is ~4 MB, mostly runs of spaces, which the old server tokenised
    before taking a generation slot.
    """
    node: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        properties = {"a": node, **{f"p{i}": {"type": "string"} for i in range(width)}}
        node = {"type": "object", "properties": properties}
    return {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": node}}],
    }


def requests() -> dict[str, dict[str, Any]]:
    """The hostile requests by name."""
    return {
        "nested-tools": nested_tools_request(),
        "wide-tools": nested_tools_request(depth=10, width=2),
        "largest-admitted-tools": nested_tools_request(depth=5, width=115),
        "long-prompt": {"model": MODEL_ID, "messages": [{"role": "user", "content": "头痛" * 160_000}]},
    }


def measure(name: str) -> dict[str, Any]:
    """In this (fresh) process: warm up, then post request `name` once; status, seconds and MiB above baseline."""
    from fastapi.testclient import TestClient

    from wenzhen.generation import ChatEngine
    from wenzhen.models import load_model
    from wenzhen.serve.api import create_app
    from wenzhen.serve.config import ServingConfig

    engine = ChatEngine(load_model(MODEL, dtype="float32", device="cpu"))
    config = ServingConfig.model_validate(
        {"limits": {"default_max_tokens": 2}, "generation": {"temperature": 0.0}}
    )
    body = json.dumps(requests()[name], ensure_ascii=False).encode()
    headers = {"content-type": "application/json"}
    with TestClient(create_app(engine, config, MODEL_ID, None), base_url="http://127.0.0.1:8000") as client:
        warm = {"model": MODEL_ID, "messages": [{"role": "user", "content": "你好"}]}
        client.post("/v1/chat/completions", json=warm)
        baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.perf_counter()
        response = client.post("/v1/chat/completions", content=body, headers=headers)
        seconds = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "request": name,
        "body_bytes": len(body),
        "status": response.status_code,
        "code": (response.json().get("error") or {}).get("code") if response.status_code >= 400 else None,
        "ms": round(seconds * 1000, 1),
        "peak_rss_above_baseline_mib": round((peak - baseline) / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--label", default="", help="suffix of the result files (e.g. `before`)")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one)))
        return
    rows = []
    for name in requests():
        done = subprocess.run(
            [sys.executable, __file__, "--one", name], capture_output=True, text=True, check=True, timeout=600
        )
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    machine = f"{platform.node()} {platform.processor() or platform.machine()}, CPU"
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"api_admission{'-' + args.label if args.label else ''}"
    stem.with_suffix(".json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    lines = [
        f"# Hostile requests to `wenzhen api` ({machine})",
        "",
        "| request | body bytes | status | code | ms | peak RSS above baseline (MiB) |",
        "|---|---|---|---|---|---|",
        *(
            f"| {r['request']} | {r['body_bytes']} | {r['status']} | {r['code']} | {r['ms']} | "
            f"{r['peak_rss_above_baseline_mib']} |"
            for r in rows
        ),
    ]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
