"""`wenzhen merge`: fold a LoRA adapter into its base model shard by shard, write a self-contained model directory
and verify it before reporting success.

peft's `merge_and_unload` needs the whole model in memory (twice over while the merged copy is saved), which is what
runs a 6B merge out of memory on a 24 GB machine. The merge itself is only `W += scaling * B @ A` per targeted
weight, so we stream the base checkpoint one shard at a time, add the adapter's (small, fully loaded) updates to the
tensors they target, cast, and write each output shard before reading the next: peak memory is one shard plus the
adapter. The output layouts are a registry: `hf` (transformers-native, loads with plain `AutoModelForCausalLM`,
served by vLLM) and `chatglm3` (the official fused-`query_key_value` layout for the official tools).
"""

import json
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import PretrainedConfig

from wenzhen import __version__
from wenzhen.errors import WenzhenError
from wenzhen.evaluate.report import read_report
from wenzhen.export.formats import (
    EXPORT_FORMATS,
    SHARD_BYTES,
    ExportContext,
    ExportFormat,
    HFFormat,
    ShardWriter,
)
from wenzhen.export.verify import verify_merge
from wenzhen.io import atomic_directory, write_text
from wenzhen.models.adapter import AdapterConfig, read_adapter_config
from wenzhen.models.family import ModelFamily
from wenzhen.models.loading import detect_family, resolve_base, resolve_dtype
from wenzhen.runinfo import RunInfo, read_run_info, write_run_info

log = logging.getLogger(__name__)

ADAPTER_PREFIX = "base_model.model."
MODEL_CARD = "README.md"


@dataclass
class LoraUpdate:
    """What the adapter does to one base weight: replace it (`modules_to_save`, or peft's saved copy of an adapted
    embedding), add `scaling * B @ A`, or both in that order."""

    lora_a: torch.Tensor | None = None
    lora_b: torch.Tensor | None = None
    scaling: float = 1.0
    transpose: bool = False
    replacement: torch.Tensor | None = None

    def apply(self, weight: torch.Tensor) -> torch.Tensor:
        """The merged weight in fp32."""
        merged = (self.replacement if self.replacement is not None else weight).float()
        if self.lora_a is None or self.lora_b is None:
            return merged
        delta = self.lora_b.float() @ self.lora_a.float()
        if self.transpose:
            delta = delta.T
        if delta.shape != merged.shape:
            raise WenzhenError(
                f"adapter update of shape {tuple(delta.shape)} does not fit a base weight of shape "
                f"{tuple(merged.shape)}; pass the --base the adapter was trained on"
            )
        return merged + self.scaling * delta


@dataclass
class MergeReport:
    """What `merge` wrote and measured."""

    out_dir: Path
    base: Path
    adapter: Path
    format: str
    dtype: str
    shards: int
    parameters: int
    merged_weights: int
    verification: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


# --- reading the adapter ---------------------------------------------------------------------------------------


def read_adapter_weights(adapter_dir: Path) -> dict[str, torch.Tensor]:
    """All adapter tensors (they are small: megabytes for a 6B model)."""
    safetensors_file = adapter_dir / "adapter_model.safetensors"
    bin_file = adapter_dir / "adapter_model.bin"
    try:
        if safetensors_file.is_file():
            return load_file(str(safetensors_file))
        if bin_file.is_file():
            state: dict[str, torch.Tensor] = torch.load(bin_file, map_location="cpu", weights_only=True)
            return state
    except Exception as exc:
        raise WenzhenError(
            f"cannot read the adapter weights in {adapter_dir} ({type(exc).__name__}); the file is damaged"
        ) from None
    raise WenzhenError(
        f"{adapter_dir} has no adapter_model.safetensors or adapter_model.bin; the adapter is incomplete"
    )


def lora_scaling(config: AdapterConfig, module: str, rank: int) -> float:
    """peft's scaling of one module's update (see `AdapterConfig.scaling`)."""
    return config.scaling(module, rank)


def lora_updates(adapter_config: AdapterConfig, state: dict[str, torch.Tensor]) -> dict[str, LoraUpdate]:
    """Base weight name -> update, from peft's saved names (`base_model.model.<module>.lora_A.weight`, ...)."""
    updates: dict[str, LoraUpdate] = {}
    for key, tensor in state.items():
        name = key.removeprefix(ADAPTER_PREFIX)
        for marker, slot in (
            (".lora_A.weight", "lora_a"),
            (".lora_B.weight", "lora_b"),
            (".lora_embedding_A", "lora_a"),
            (".lora_embedding_B", "lora_b"),
        ):
            if name.endswith(marker):
                module = name[: -len(marker)]
                update = updates.setdefault(f"{module}.weight", LoraUpdate())
                setattr(update, slot, tensor)
                # Embedding LoRA stores A as (r, vocab) and B as (dim, r): B @ A is the transposed update.
                update.transpose = "embedding" in marker or adapter_config.fan_in_fan_out
                break
        else:
            if ".lora_" in name:
                raise WenzhenError(f"adapter tensor {key} is of a LoRA kind merge does not support")
            # A full copy that replaces the base tensor: modules_to_save, or the base layer itself, which peft
            # saves (`<module>.base_layer.weight`) when it adapts embeddings, in case the vocabulary was resized.
            updates.setdefault(name.replace(".base_layer.", "."), LoraUpdate()).replacement = tensor
    for name, update in updates.items():
        if update.lora_a is None and update.lora_b is None:
            continue
        if update.lora_a is None or update.lora_b is None:
            raise WenzhenError(
                f"the adapter has only one of lora_A/lora_B for {name}; the adapter is incomplete"
            )
        update.scaling = lora_scaling(
            adapter_config, name.removesuffix(".weight"), int(update.lora_a.shape[0])
        )
    return updates


def adapter_updates(
    adapter_dir: Path, base_dir: Path, family: ModelFamily, config: PretrainedConfig, scratch: Path
) -> dict[str, LoraUpdate]:
    """The adapter's updates under the base's native weight names (the family converts its own adapter layouts)."""
    native_dir = family.native_adapter(adapter_dir, config, scratch)
    adapter_config = read_adapter_config(native_dir)
    adapter_config.require_mergeable()
    return lora_updates(adapter_config, read_adapter_weights(native_dir))


# --- streaming the merged weights ------------------------------------------------------------------------------


def merged_tensors(
    base_dir: Path, family: ModelFamily, config: PretrainedConfig, updates: dict[str, LoraUpdate]
) -> Iterator[tuple[str, torch.Tensor]]:
    """Every base tensor under its native name, with the adapter's update folded in (fp32) where it has one; one
    shard of the base in memory at a time. Refuses an adapter that changes weights the base does not have."""
    remaining = dict(updates)
    for name, tensor in family.native_tensors(base_dir, config):
        update = remaining.pop(name, None)
        yield name, update.apply(tensor) if update else tensor
    if remaining:
        raise WenzhenError(
            f"the adapter changes {len(remaining)} weight(s) the base {base_dir} does not have (first: "
            f"{next(iter(remaining))}); pass the --base the adapter was trained on"
        )


def write_merged_weights(
    context: ExportContext,
    updates: dict[str, LoraUpdate],
    staging: Path,
    layout: ExportFormat,
    max_bytes: int,
) -> tuple[int, int]:
    """Stream the base, merge each targeted weight, cast, write shards; returns (shards, parameters)."""
    writer = ShardWriter(staging, layout, context, max_bytes)
    parameters = 0
    for name, tensor in merged_tensors(context.base_dir, context.family, context.config, updates):
        parameters += tensor.numel()
        writer.add(name, tensor.to(context.dtype))
    return writer.finish(), parameters


# --- model card ------------------------------------------------------------------------------------------------


def training_record(adapter_dir: Path) -> tuple[RunInfo | None, dict[str, Any] | None]:
    """run.json and summary.json of the training run the adapter came from (its folder or the run folder above)."""
    for folder in (adapter_dir, adapter_dir.parent):
        info = read_run_info(folder)
        if info is not None:
            summary_file = folder / "summary.json"
            summary = json.loads(summary_file.read_text(encoding="utf-8")) if summary_file.is_file() else None
            return info, summary
    return None, None


def eval_rows(eval_dirs: list[Path]) -> list[str]:
    """One markdown row per metric of each eval report given with --eval."""
    rows = []
    for folder in eval_dirs:
        report = read_report(folder)
        for metric, value in report.metrics.items():
            rows.append(
                f"| {report.kind} | {report.label} | {metric} | {value:.4g} | {Path(report.data.path).name} |"
            )
    return rows


def render_model_card(report: MergeReport, adapter_config: AdapterConfig, eval_dirs: list[Path]) -> str:
    """README.md: YAML front matter for hubs, then what went in, how it was checked and how to load it."""
    info, summary = training_record(report.adapter)
    targets = list(adapter_config.target_modules)
    lines = [
        "---",
        f"base_model: {report.base.name}",
        "library_name: transformers",
        "language: [zh]",
        "tags: [wenzhen, medical, lora, merged]",
        "---",
        "",
        f"# {report.out_dir.name}",
        "",
        f"LoRA adapter merged into its base model by wenzhen {__version__}.",
        "",
        "| | |",
        "|---|---|",
        f"| base model | `{report.base}` |",
        f"| adapter | `{report.adapter}` |",
        f"| LoRA | r={adapter_config.rank}, alpha={adapter_config.alpha:g}, targets {targets}"
        f"{', rsLoRA' if adapter_config.use_rslora else ''} |",
        f"| export | {report.format} layout, {report.dtype}, {report.shards} shard(s), {report.parameters:,} parameters |",
    ]
    if info is not None:
        lines.append(f"| training data | `{info.extra.get('data_dir', 'not recorded')}` |")
        lines.append(f"| training method | {info.extra.get('method', info.stage)} |")
    if summary is not None:
        lines.append(
            f"| training | {summary.get('steps')} steps, final loss {summary.get('final_loss')}, "
            f"final eval loss {summary.get('final_eval_loss')} |"
        )
    if report.verification is not None:
        check = report.verification
        lines.append(
            f"| verification | max abs logit difference to base + adapter {check['max_abs_logit_diff']:.3g} "
            f"(tolerance {check['tolerance']:.3g}) on {check['probe_tokens']} probe tokens, "
            f"{check['compute_dtype']} on {check['device']} |"
        )
    else:
        lines.append("| verification | skipped (--no-verify) |")
    rows = eval_rows(eval_dirs)
    if rows:
        lines += [
            "",
            "## Evaluation",
            "",
            "| kind | label | metric | value | data |",
            "|---|---|---|---|---|",
            *rows,
        ]
    if info is not None and info.config:
        lines += [
            "",
            "## Training config",
            "",
            "```json",
            json.dumps(info.config, indent=2, ensure_ascii=False),
            "```",
        ]
    lines += ["", "## Use", ""]
    if report.format == HFFormat.name:
        lines += [
            "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            f'tokenizer = AutoTokenizer.from_pretrained("{report.out_dir.name}")',
            f'model = AutoModelForCausalLM.from_pretrained("{report.out_dir.name}", dtype="auto")',
            "```",
            "",
            f"`wenzhen chat {report.out_dir.name}` chats in the terminal; `vllm serve {report.out_dir.name}` serves it.",
        ]
    else:
        lines += [
            f"Official ChatGLM3 layout: `wenzhen chat {report.out_dir.name}` loads it with no remote code."
        ]
    lines += [f"- {note}" for note in report.notes]
    lines += [
        "",
        "## Limitations",
        "",
        "Trained for Chinese medical consultation. Its answers are general information, not a diagnosis or a "
        "prescription; in an emergency call 120 or go to the nearest hospital.",
        "",
    ]
    return "\n".join(lines)


# --- the stage -------------------------------------------------------------------------------------------------


def merge(
    adapter_dir: str | Path,
    out_dir: str | Path,
    *,
    base: str | Path | None = None,
    dtype: str = "bf16",
    export_format: str = HFFormat.name,
    verify: bool = True,
    verify_device: str | None = None,
    tolerance: float | None = None,
    eval_dirs: list[Path] | None = None,
    force: bool = False,
    max_shard_bytes: int = SHARD_BYTES,
) -> MergeReport:
    """Merge the LoRA adapter in `adapter_dir` into its base and write `out_dir` in `export_format`.

    The base comes from `base`, else the run's run.json, else adapter_config.json. Weights are merged one shard at
    a time; the result is verified against base + adapter before the directory appears under its final name.
    """
    adapter = Path(adapter_dir)
    adapter_config = read_adapter_config(adapter)
    adapter_config.require_mergeable()
    base_dir = resolve_base(adapter, base)
    family = detect_family(base_dir)
    layout = EXPORT_FORMATS.get(export_format)
    torch_dtype = resolve_dtype(dtype, torch.device("cpu"))
    context = ExportContext(base_dir, family, torch_dtype)
    layout.check(context)
    eval_dirs = list(eval_dirs or [])
    for folder in eval_dirs:
        read_report(folder)  # refuse a wrong --eval before the long merge
    with (
        tempfile.TemporaryDirectory(prefix="wenzhen-merge-") as scratch,
        atomic_directory(out_dir, force=force) as staging,
    ):
        updates = adapter_updates(adapter, base_dir, family, context.config, Path(scratch))
        log.info("merging %d adapter updates into %s, shard by shard", len(updates), base_dir)
        shards, parameters = write_merged_weights(context, updates, staging, layout, max_shard_bytes)
        report = MergeReport(
            out_dir=Path(out_dir),
            base=base_dir,
            adapter=adapter,
            format=layout.name,
            dtype=str(torch_dtype).removeprefix("torch."),
            shards=shards,
            parameters=parameters,
            merged_weights=len(updates),
        )
        report.notes = layout.write_metadata(staging, context)
        del updates
        if verify:
            report.verification = verify_merge(
                adapter, base_dir, staging, layout, torch_dtype, parameters, verify_device, tolerance
            )
        write_text(staging / MODEL_CARD, render_model_card(report, adapter_config, eval_dirs))
        write_run_info(
            staging,
            RunInfo(
                stage="merge",
                base_model=str(base_dir.resolve()),
                chat_format=family.name,
                extra={
                    "adapter": str(adapter.resolve()),
                    "format": layout.name,
                    "dtype": report.dtype,
                    "verification": report.verification,
                },
            ),
        )
    log.info("wrote %s", out_dir)
    return report
