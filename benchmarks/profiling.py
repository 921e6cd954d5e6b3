"""Where GPU time goes: a torch-profiler kernel table grouped into the few kinds of work a step does."""

import re
from collections.abc import Callable

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

# First matching pattern names a kernel's kind (cuBLAS/CUTLASS GEMM names vary by card and library version).
# Attention before matmul: cuDNN's attention kernels carry `sm90_` in their names too.
KINDS = [
    ("flex attention", r"flex|triton_tem"),
    ("SDPA / flash attention", r"fmha|flash|attention|cudnn"),
    ("matmul (cuBLAS/CUTLASS)", r"gemm|cutlass|nvjet|xmma|sm90_|splitK|Kernel2"),
    ("compiled elementwise (Triton)", r"triton_"),
    ("softmax / cross-entropy", r"softmax|nll|cross_entropy|log_softmax"),
    ("reductions", r"reduce|norm"),
    ("copies / casts", r"copy|cast|cat|index|gather|scatter|fill"),
    ("eager elementwise", r"elementwise|vectorized"),
]


def kind_of(name: str) -> str:
    """The kind of work a kernel name belongs to."""
    for kind, pattern in KINDS:
        if re.search(pattern, name, re.IGNORECASE):
            return kind
    return "other"


def profile_steps(run: Callable[[], None], steps: int) -> dict:
    """Profile `steps` calls of `run`: wall time, kernel time by kind, and the top kernels."""
    gpu = torch.cuda.is_available()
    if gpu:
        torch.cuda.synchronize()
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if gpu else [])]
    with profile(activities=activities) as prof:
        for _ in range(steps):
            run()
        if gpu:
            torch.cuda.synchronize()
    return summarise(prof)


def summarise(prof: profile) -> dict:
    """Kernel time by kind and the 25 costliest kernels of a finished profile."""
    kernels = [e for e in prof.key_averages() if e.device_type == DeviceType.CUDA]
    total_us = sum(e.self_device_time_total for e in kernels)
    by_kind: dict[str, float] = {}
    for event in kernels:
        kind = kind_of(event.key)
        by_kind[kind] = by_kind.get(kind, 0.0) + event.self_device_time_total
    events = prof.events()
    wall_us = max(e.time_range.end for e in events) - min(e.time_range.start for e in events) if events else 0
    top = sorted(kernels, key=lambda e: -e.self_device_time_total)[:25]
    return {
        "wall_ms": wall_us / 1000,
        "kernel_ms": total_us / 1000,
        "by_kind_ms": {k: v / 1000 for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
        "top_kernels": [
            {"name": e.key[:120], "calls": e.count, "ms": e.self_device_time_total / 1000} for e in top
        ],
    }


def format_profile(title: str, summary: dict) -> str:
    """Markdown lines for a profile summary."""
    lines = [
        f"### Profile: {title}",
        "",
        f"Wall {summary['wall_ms']:.1f} ms, GPU kernels {summary['kernel_ms']:.1f} ms "
        f"({100 * summary['kernel_ms'] / max(summary['wall_ms'], 1e-9):.0f}% busy).",
        "",
        "| kind | ms | share of kernel time |",
        "|---|---|---|",
    ]
    for kind, ms in summary["by_kind_ms"].items():
        lines.append(f"| {kind} | {ms:.1f} | {100 * ms / summary['kernel_ms']:.1f}% |")
    lines += ["", "| top kernels | calls | ms |", "|---|---|---|"]
    for row in summary["top_kernels"]:
        lines.append(f"| `{row['name']}` | {row['calls']} | {row['ms']:.2f} |")
    return "\n".join(lines)
