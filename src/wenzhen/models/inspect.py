"""Checking a model download without loading it: files, sizes, LFS pointers, index completeness, checksums."""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from wenzhen.errors import WenzhenError
from wenzhen.models.checkpoint import find_checkpoint, sha256_of
from wenzhen.models.loading import detect_family, read_config
from wenzhen.models.weights import verify_weight_file


@dataclass
class DownloadReport:
    """What `wenzhen env MODEL_DIR` found."""

    path: str
    family: str
    parameters: int
    weight_bytes: int
    shards: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No problem found."""
        return not self.problems


def count_parameters(model_dir: Path) -> int:
    """Parameter count from the config alone (the model is built on the meta device)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from wenzhen.models.chatglm3 import glm_config_from_official, is_official_config
    from wenzhen.models.hf import refuse_custom_code

    raw = read_config(model_dir)
    if not is_official_config(raw):
        refuse_custom_code(model_dir)
    config = (
        glm_config_from_official(raw)
        if is_official_config(raw)
        else AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    )
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def _recorded_sha256(shard: Path) -> str | None:
    """A checksum the download left: a `NAME.sha256` sidecar, or the Hugging Face cache blob the file links to."""
    sidecar = shard.with_name(shard.name + ".sha256")
    if sidecar.is_file():
        return sidecar.read_text(encoding="utf-8").split()[0]
    if shard.is_symlink():
        blob = Path(os.readlink(shard)).name
        if len(blob) == 64 and all(c in "0123456789abcdef" for c in blob):
            return blob
    return None


def inspect_download(model_dir: str | Path, *, verify_checksums: bool = True) -> DownloadReport:
    """Check that a model directory is complete and readable; problems are collected, not raised one by one."""
    root = Path(model_dir)
    family = detect_family(root)
    problems: list[str] = []
    try:
        files = find_checkpoint(root, verify=False)
    except WenzhenError as exc:
        return DownloadReport(str(root), family.name, 0, 0, problems=[str(exc)])
    shards = []
    for shard in files.shards:
        entry: dict[str, Any] = {"file": shard.name, "bytes": shard.stat().st_size}
        problem = verify_weight_file(shard)
        entry["complete"] = problem is None
        if problem is not None:
            problems.append(problem)
            shards.append(entry)
            continue
        recorded = _recorded_sha256(shard) if verify_checksums else None
        if recorded:
            actual = sha256_of(shard)
            entry["sha256_ok"] = actual == recorded
            if actual != recorded:
                problems.append(
                    f"{shard.name}: sha256 differs from the recorded {recorded[:12]}…; download it again"
                )
        shards.append(entry)
    if (
        family.name == "chatglm3"
        and not (root / "tokenizer.json").is_file()
        and not (root / "tokenizer.model").is_file()
    ):
        problems.append(f"{root} has no tokenizer.model; copy it from the ChatGLM3 download")
    parameters = count_parameters(root)
    return DownloadReport(str(root), family.name, parameters, files.total_bytes, shards, problems)


def memory_fit(parameters: int, free_bytes: int | None) -> dict[str, Any]:
    """Rough memory needs (bf16 weights; LoRA adds activations with checkpointing; full SFT adds grads + Adam)."""
    gib = 2**30
    needs = {
        "inference_bf16_gib": parameters * 2 * 1.15 / gib,
        "lora_bf16_gib": parameters * 2 * 1.15 / gib + 2.0,
        "full_sft_adamw_gib": parameters * (2 + 2 + 12) / gib,
    }
    fits = {
        k.replace("_gib", "_fits"): (free_bytes is not None and v * gib <= free_bytes)
        for k, v in needs.items()
    }
    return {"estimate_note": "arithmetic estimate, not a measurement", **needs, **fits}


def environment_report() -> dict[str, Any]:
    """Python, torch, CUDA, GPUs with free memory, bf16 support and key package versions."""
    import platform
    from importlib import metadata

    gpus = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(index)
            gpus.append(
                {
                    "index": index,
                    "name": torch.cuda.get_device_name(index),
                    "free_gib": round(free / 2**30, 2),
                    "total_gib": round(total / 2**30, 2),
                    "capability": ".".join(map(str, torch.cuda.get_device_capability(index))),
                }
            )
    packages: dict[str, str | None] = {}
    for name in (
        "transformers",
        "peft",
        "accelerate",
        "tokenizers",
        "safetensors",
        "gradio",
        "fastapi",
        "bitsandbytes",
        "flash-attn",
        "deepspeed",
    ):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
        "bf16_supported": bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported()),
        "gpus": gpus,
        "packages": packages,
    }


def format_report(env: dict[str, Any], download: DownloadReport | None, fit: dict[str, Any] | None) -> str:
    """Human-readable text of the reports."""
    lines = [
        f"python {env['python']}  torch {env['torch']}  CUDA {'available, ' + str(env['cuda_version']) if env['cuda_available'] else 'not available (CPU only)'}",
        f"bf16 on GPU: {'yes' if env['bf16_supported'] else 'no'}",
    ]
    lines += [
        f"GPU {g['index']}: {g['name']} (sm {g['capability']}), {g['free_gib']} / {g['total_gib']} GiB free"
        for g in env["gpus"]
    ]
    lines.append("packages: " + ", ".join(f"{k} {v or '-'}" for k, v in env["packages"].items()))
    if download is not None:
        lines.append(
            f"model {download.path}: family {download.family}, {download.parameters / 1e9:.3f} B parameters, "
            f"{download.weight_bytes / 2**30:.2f} GiB in {len(download.shards)} shard(s)"
        )
        lines += [f"  PROBLEM: {p}" for p in download.problems] or [
            "  download complete: every indexed shard present, no Git LFS pointers, every header and byte length "
            "exact"
        ]
    if fit is not None:
        lines.append(
            "memory (estimate): inference {inference_bf16_gib:.1f} GiB, LoRA {lora_bf16_gib:.1f} GiB, "
            "full SFT {full_sft_adamw_gib:.1f} GiB".format(**fit)
        )
        if env["gpus"]:
            lines.append(
                "fits on GPU 0: inference {inference_bf16_fits}, LoRA {lora_bf16_fits}, "
                "full SFT {full_sft_adamw_fits}".format(**fit)
            )
        else:
            lines.append("no GPU: inference runs on CPU (slowly); training a 6B model needs a GPU")
    return "\n".join(lines)


def env_json(env: dict[str, Any], download: DownloadReport | None, fit: dict[str, Any] | None) -> str:
    """Machine-readable form of the reports."""
    return json.dumps(
        {"environment": env, "model": download.__dict__ if download else None, "fit": fit},
        ensure_ascii=False,
        indent=2,
    )
