"""Peak memory and wall time of `wenzhen export --format gguf` on a same-shape ChatGLM3-6B with random weights.

Uses the same 6B official checkpoint (7 fp16 `.bin` shards) and random r=8 official-layout LoRA adapter as
`merge_memory.py` (built once in WORK_DIR, shared with it), and runs `wenzhen export ADAPTER --base BASE` (the
adapter folded in while streaming, as `wenzhen merge` does) in a fresh process under `/usr/bin/time -v` for each
--quant, without the logit check (`--no-verify`, comparable to merge's `merge` rows). Writes
`benchmarks/results/gguf_export_memory.{json,md}` with the machine; compare peak RSS with merge_memory.md.

    python benchmarks/gguf_export_memory.py /tmp/wenzhen-merge-bench [--quants f16 q8_0]
    python benchmarks/gguf_export_memory.py /tmp/tiny-bench --config ../shared/chatglm3/tiny-chatglm3/config.json
"""

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from merge_memory import MIN_FREE_BYTES, RESULTS, WENZHEN, machine, random_official_adapter, time_v
from random_chatglm3 import SHARED, build


def run_export(base: Path, adapter: Path, out: Path, quant: str) -> dict:
    """`wenzhen export` in a fresh process; its peak RSS and wall time."""
    out.unlink(missing_ok=True)
    time_file = out.parent / "time.txt"
    command = ["/usr/bin/time", "-v", "-o", str(time_file), str(WENZHEN), "export", str(adapter)]
    command += ["--base", str(base), "--out", str(out), "--quant", quant, "--no-verify"]
    started = time.monotonic()
    completed = subprocess.run(command, capture_output=True, text=True)
    wall = time.monotonic() - started
    if completed.returncode != 0:
        raise RuntimeError(f"export failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
    report = time_file.read_text()
    row = {
        "quant": quant,
        "wall_s": round(wall, 1),
        "peak_rss_gib": round(int(time_v(report, "Maximum resident set size (kbytes)")) / 1024**2, 2),
        "written_gib": round(out.stat().st_size / 1024**3, 2),
        "output": completed.stdout.strip().splitlines()[-1],
    }
    out.unlink()
    return row


def render(result: dict) -> str:
    """The markdown results table."""
    lines = [
        f"# `wenzhen export --format gguf` of a same-shape ChatGLM3-6B ({result['base_gib']} GiB fp16, "
        f"{result['base_shards']} .bin shards) with a random r=8 LoRA folded in, `--no-verify`",
        "",
        f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, {result['machine']['ram_gib']} GiB "
        f"RAM, GPU: {result['machine']['gpu'] or 'none'}, torch {result['machine']['torch']}; load average at "
        f"start {result['load_average']}",
        "",
        "| quant | wall s | peak RSS GiB | written GiB |",
        "|---|---|---|---|",
        *(
            f"| {r['quant']} | {r['wall_s']} | {r['peak_rss_gib']} | {r['written_gib']} |"
            for r in result["runs"]
        ),
        "",
        "Compare with `wenzhen merge --no-verify` of the same checkpoint in merge_memory.md (peak RSS column).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "work_dir", type=Path, help="where the checkpoint, adapter and outputs go (>= 30 GB free)"
    )
    parser.add_argument("--quants", nargs="+", default=["f16", "q8_0"], choices=["f16", "q8_0"])
    parser.add_argument(
        "--config", type=Path, default=SHARED / "chatglm3-6b-config.json", help="official config"
    )
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    base, adapter = args.work_dir / "chatglm3-6b-random", args.work_dir / "lora-r8"
    if not (base / "pytorch_model.bin.index.json").is_file():
        if shutil.disk_usage(args.work_dir).free < MIN_FREE_BYTES:
            sys.exit(f"{args.work_dir} needs 30 GiB free")
        build(base, args.config, shards=7, fmt="bin")
    if not (adapter / "adapter_config.json").is_file():
        random_official_adapter(adapter, json.loads((base / "config.json").read_text()))
    shards = sorted(base.glob("pytorch_model-*.bin"))
    result = {
        "machine": machine(),
        "load_average": Path("/proc/loadavg").read_text().split()[0],
        "base_gib": round(sum(f.stat().st_size for f in shards) / 1024**3, 2),
        "base_shards": len(shards),
        "runs": [],
    }
    name = (
        "gguf_export_memory" if args.config.name == "chatglm3-6b-config.json" else "gguf_export_memory-small"
    )
    RESULTS.mkdir(exist_ok=True)
    for quant in args.quants:
        result["runs"].append(run_export(base, adapter, args.work_dir / f"model-{quant}.gguf", quant))
        (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        (RESULTS / f"{name}.md").write_text(render(result))
    print(render(result))


if __name__ == "__main__":
    main()
