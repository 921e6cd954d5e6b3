"""Load time and peak host memory of `wenzhen.models.load_model` on a same-shape ChatGLM3-6B official checkpoint.

Each load runs in a fresh subprocess so its peak RSS (ru_maxrss) is its own. Writes
`benchmarks/results/load_6b.{json,md}` with the machine it ran on.

    python benchmarks/random_chatglm3.py /tmp/glm6b && python benchmarks/load_6b.py /tmp/glm6b
"""

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

CHILD = """
import json, resource, sys, time, torch
from wenzhen.models import load_model
start = time.perf_counter()
loaded = load_model(sys.argv[1], dtype="bf16", device=sys.argv[2])
if sys.argv[2] == "cuda":
    torch.cuda.synchronize()
seconds = time.perf_counter() - start
params = sum(p.numel() for p in loaded.model.parameters())
bytes_bf16 = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
gpu = torch.cuda.max_memory_allocated() if sys.argv[2] == "cuda" else 0
print(json.dumps({"seconds": seconds, "parameters": params, "model_bytes": bytes_bf16,
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "peak_gpu_bytes": gpu}))
"""


def machine() -> str:
    """CPU / GPU description for the results file."""
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(0)}, {platform.processor() or platform.machine()}, torch {torch.__version__}"
    except ImportError:
        pass
    return f"{platform.machine()} CPU, {platform.platform()}"


def measure(model_dir: Path, device: str) -> dict:
    """One load in a fresh process."""
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(model_dir), device], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"])
    args = parser.parse_args()
    rows = []
    for device in args.devices:
        result = measure(args.model_dir, device)
        result["device"] = device
        result["rss_over_model"] = result["peak_rss_bytes"] / result["model_bytes"]
        rows.append(result)
        print(json.dumps(result))
    disk = sum(f.stat().st_size for f in args.model_dir.glob("pytorch_model-*.bin"))
    report = {"machine": machine(), "checkpoint": str(args.model_dir), "checkpoint_bytes": disk, "runs": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "load_6b.json").write_text(json.dumps(report, indent=2))
    lines = [
        f"# ChatGLM3-6B load (random weights, official .bin layout, {disk / 1e9:.2f} GB fp16 on disk)",
        "",
        f"Machine: {report['machine']}",
        "",
        "| target | load s | peak host RSS GiB | model bf16 GiB | RSS / model | peak GPU GiB |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['device']} | {r['seconds']:.1f} | {r['peak_rss_bytes'] / 2**30:.2f} | {r['model_bytes'] / 2**30:.2f} "
            f"| {r['rss_over_model']:.2f} | {r['peak_gpu_bytes'] / 2**30:.2f} |"
        )
    (RESULTS / "load_6b.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
