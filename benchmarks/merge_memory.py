"""Peak memory and wall time of `wenzhen merge` on a same-shape ChatGLM3-6B official checkpoint with random weights.

Builds (once, in WORK_DIR) the 6B checkpoint the way the official download ships it (7 fp16 `.bin` shards,
12.5 GB, from `../shared/chatglm3/chatglm3-6b-config.json`) and a random r=8 LoRA adapter in the official finetune
demo's layout (target `query_key_value`, non-zero B so the merge really changes every layer), then runs
`wenzhen merge` in a fresh process under `/usr/bin/time -v` (its peak RSS is the process's own) for each output
format (`hf`, `chatglm3`) and mode: `merge` (--no-verify: the merge alone) and `merge+verify` (the default: the
logit check loads base + adapter, then the merged model, one after the other). Writes `benchmarks/results/merge_memory.{json,md}` with the machine.

    python benchmarks/merge_memory.py /tmp/wenzhen-merge-bench
"""

import argparse
import json
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from random_chatglm3 import SHARED, build  # the sibling benchmark module

RESULTS = Path(__file__).resolve().parent / "results"
WENZHEN = Path(sys.executable).parent / "wenzhen"
MIN_FREE_BYTES = 30 * 1024**3


def machine() -> dict:
    """CPU, cores, RAM and software versions of this machine."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = re.findall(r"model name\s*:\s*(.+)", cpuinfo.read_text())
        cpu = names[0] if names else cpu
    memory = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) * 1024
    return {
        "cpu": cpu,
        "cores": len(re.findall(r"^processor", cpuinfo.read_text(), re.M)) if cpuinfo.is_file() else None,
        "ram_gib": round(memory / 1024**3, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def random_official_adapter(out_dir: Path, config: dict, rank: int = 8, seed: int = 0) -> Path:
    """A LoRA adapter as the official ChatGLM3 finetune demo saves one, with random non-zero A and B."""
    generator = torch.Generator().manual_seed(seed)
    hidden, head_dim = config["hidden_size"], config["kv_channels"]
    qkv_rows = config["num_attention_heads"] * head_dim + 2 * config["multi_query_group_num"] * head_dim
    tensors = {}
    for layer in range(config["num_layers"]):
        prefix = f"base_model.model.transformer.encoder.layers.{layer}.self_attention.query_key_value."
        tensors[prefix + "lora_A.weight"] = 0.01 * torch.randn(rank, hidden, generator=generator)
        tensors[prefix + "lora_B.weight"] = 0.01 * torch.randn(qkv_rows, rank, generator=generator)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / "adapter_model.safetensors"))
    adapter_config = json.loads((SHARED / "tiny-chatglm3-lora-adapter" / "adapter_config.json").read_text())
    adapter_config |= {"r": rank, "lora_alpha": 32, "base_model_name_or_path": "/data/models/chatglm3-6b"}
    (out_dir / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
    return out_dir


def time_v(report: str, key: str) -> str:
    """One field of `/usr/bin/time -v` output."""
    match = re.search(rf"{re.escape(key)}: (.+)", report)
    if match is None:
        raise RuntimeError(f"/usr/bin/time did not report {key!r}:\n{report}")
    return match.group(1).strip()


def run_merge(base: Path, adapter: Path, out: Path, verify: bool, layout: str) -> dict:
    """`wenzhen merge` in a fresh process; its peak RSS and wall time."""
    shutil.rmtree(out, ignore_errors=True)
    time_file = out.parent / "time.txt"
    command = [
        "/usr/bin/time",
        "-v",
        "-o",
        str(time_file),
        str(WENZHEN),
        "merge",
        str(adapter),
        "--out-dir",
        str(out),
    ]
    command += [
        "--base",
        str(base),
        "--dtype",
        "bf16",
        "--format",
        layout,
        *([] if verify else ["--no-verify"]),
    ]
    started = time.monotonic()
    completed = subprocess.run(command, capture_output=True, text=True)
    wall = time.monotonic() - started
    if completed.returncode != 0:
        raise RuntimeError(f"merge failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
    report = time_file.read_text()
    written = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    row = {
        "format": layout,
        "mode": "merge+verify" if verify else "merge",
        "wall_s": round(wall, 1),
        "peak_rss_gib": round(int(time_v(report, "Maximum resident set size (kbytes)")) / 1024**2, 2),
        "written_gib": round(written / 1024**3, 2),
        "output": completed.stdout.strip().splitlines()[-1],
    }
    run = json.loads((out / "run.json").read_text())
    if run["extra"].get("verification"):
        row["verification"] = run["extra"]["verification"]
    shutil.rmtree(out, ignore_errors=True)
    return row


def render(result: dict) -> str:
    """The markdown results table."""
    lines = [
        f"# `wenzhen merge` of a random r=8 LoRA into a same-shape ChatGLM3-6B ({result['base_gib']} GiB fp16, "
        f"{result['base_shards']} .bin shards) to bf16 safetensors, `--format hf` and the official `--format chatglm3` layout",
        "",
        f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, {result['machine']['ram_gib']} GiB "
        f"RAM, GPU: {result['machine']['gpu'] or 'none'}, torch {result['machine']['torch']}",
        "",
        "| format | mode | wall s | peak RSS GiB | written GiB | max abs logit diff | tolerance | peft's own merge | adapter effect |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["runs"]:
        check = row.get("verification")
        cells = (
            [
                f"{check['max_abs_logit_diff']:.3g}",
                f"{check['tolerance']:.3g} ({check['compute_dtype']})",
                f"{check['peft_merge_max_abs_logit_diff']:.3g}",
                f"{check['adapter_effect_max_abs_logit']:.3g}",
            ]
            if check
            else ["-"] * 4
        )
        lines.append(
            f"| {row['format']} | {row['mode']} | {row['wall_s']} | {row['peak_rss_gib']} | {row['written_gib']} | {' | '.join(cells)} |"
        )
    lines += [
        "",
        "Logit columns: the largest |logit| difference of the merged model to base + adapter on the probe prompts, "
        "the limit it had to meet, what peft's own in-place merge moves the logits by in the same dtype (bf16 "
        "rounding), and how far the adapter moves them from the base.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "work_dir", type=Path, help="where the 6B checkpoint, adapter and outputs go (>= 30 GB free)"
    )
    parser.add_argument(
        "--modes", nargs="+", default=["merge", "merge+verify"], choices=["merge", "merge+verify"]
    )
    parser.add_argument("--formats", nargs="+", default=["hf", "chatglm3"], choices=["hf", "chatglm3"])
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(args.work_dir).free
    base, adapter = args.work_dir / "chatglm3-6b-random", args.work_dir / "lora-r8"
    if not (base / "pytorch_model.bin.index.json").is_file():
        if free < MIN_FREE_BYTES:
            sys.exit(f"{args.work_dir} has {free / 1024**3:.0f} GiB free; the benchmark needs 30 GiB")
        build(base, SHARED / "chatglm3-6b-config.json", shards=7, fmt="bin")
    config = json.loads((base / "config.json").read_text())
    if not (adapter / "adapter_config.json").is_file():
        random_official_adapter(adapter, config)
    shards = sorted(base.glob("pytorch_model-*.bin"))
    result = {
        "machine": machine(),
        "base_gib": round(sum(f.stat().st_size for f in shards) / 1024**3, 2),
        "base_shards": len(shards),
        "runs": [],
    }
    RESULTS.mkdir(exist_ok=True)
    for layout in args.formats:
        for mode in args.modes:
            out = args.work_dir / "merged"
            result["runs"].append(run_merge(base, adapter, out, verify=mode == "merge+verify", layout=layout))
            # Written after every run, so a later failure keeps what was measured.
            (RESULTS / "merge_memory.json").write_text(json.dumps(result, indent=2) + "\n")
            (RESULTS / "merge_memory.md").write_text(render(result))
    print(render(result))


if __name__ == "__main__":
    main()
