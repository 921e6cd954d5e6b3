"""`wenzhen merge`: fold a LoRA adapter into its base model shard by shard, write a self-contained model directory
and verify it before reporting success.

peft's `merge_and_unload` needs the whole model in memory (twice over while the merged copy is saved), which is what
runs a 6B merge out of memory on a 24 GB machine. The merge itself is only `W += scaling * B @ A` per targeted
weight, so we stream the base checkpoint one shard at a time, add the adapter's (small, fully loaded) updates to the
tensors they target, cast, and write each output shard before reading the next: peak memory is one shard plus the
adapter. The output layouts are a registry: `hf` (transformers-native, loads with plain `AutoModelForCausalLM`,
served by vLLM) and `chatglm3` (the official fused-`query_key_value` layout for the official tools).
"""

import gc
import json
import logging
import math
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig, GlmConfig, PretrainedConfig
from transformers.models.glm.modeling_glm import GlmRotaryEmbedding

from wenzhen import __version__
from wenzhen.errors import WenzhenError
from wenzhen.evaluate.report import read_report
from wenzhen.io import atomic_directory, write_json, write_text
from wenzhen.models import chatglm3, load_model
from wenzhen.models.checkpoint import find_checkpoint, iter_shard
from wenzhen.models.family import ModelFamily
from wenzhen.models.loading import (
    ADAPTER_CONFIG,
    detect_family,
    read_config,
    resolve_base,
    resolve_device,
    resolve_dtype,
)
from wenzhen.registry import Registry
from wenzhen.runinfo import RunInfo, read_run_info, write_run_info

log = logging.getLogger(__name__)

ADAPTER_PREFIX = "base_model.model."
SHARD_BYTES = 2 * 1024**3
MODEL_CARD = "README.md"
#: Chinese medical prompts the merged model and base + adapter both answer during verification.
PROBE_CONVERSATIONS: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": "我最近总是头痛，晚上也睡不好，应该怎么办？"}],
    [
        {"role": "system", "content": "你是一名耐心的全科医生。"},
        {"role": "user", "content": "孩子发烧38.5度，精神还可以，需要马上去医院吗？"},
    ],
]
#: Largest |merged - (base + adapter)| logit difference accepted, relative to max(1, largest |logit|), by the
#: coarsest dtype involved (the export's weights or the verification's compute); see `verify_merge`.
RELATIVE_TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


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


def read_adapter_config(adapter_dir: Path) -> dict[str, Any]:
    """adapter_config.json of a LoRA adapter, refusing what cannot be merged into plain weights."""
    if not adapter_dir.is_dir():
        raise WenzhenError(
            f"adapter directory {adapter_dir} does not exist; pass the folder with {ADAPTER_CONFIG}"
        )
    file = adapter_dir / ADAPTER_CONFIG
    if not file.is_file():
        raise WenzhenError(
            f"{adapter_dir} has no {ADAPTER_CONFIG}; pass a LoRA adapter directory (a training run's final/ folder)"
        )
    try:
        config: dict[str, Any] = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise WenzhenError(f"{file} is not valid JSON ({exc.msg}); the adapter is damaged") from None
    kind = config.get("peft_type")
    if kind != "LORA":
        raise WenzhenError(
            f"{adapter_dir} is a {kind} adapter; only LoRA adds to the weights and can be merged: serve "
            "prefix-tuning adapters with `--adapter` instead"
        )
    if config.get("use_dora"):
        raise WenzhenError(
            f"{adapter_dir} is a DoRA adapter, which `wenzhen merge` does not merge; use plain LoRA"
        )
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        raise WenzhenError(
            f"{adapter_dir} trains biases (bias={config.get('bias')!r}), which merge does not support"
        )
    return config


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


def glm_config_of(base_dir: Path) -> GlmConfig:
    """The native GlmConfig of a ChatGLM3 base, official or converted."""
    raw = read_config(base_dir)
    if chatglm3.is_official_config(raw):
        return chatglm3.glm_config_from_official(raw)
    config: GlmConfig = GlmConfig.from_pretrained(base_dir)
    return config


def native_adapter_dir(adapter_dir: Path, base_dir: Path, family: ModelFamily, scratch: Path) -> Path:
    """The adapter in the base model's native module names (official ChatGLM3 adapters are rewritten q/k/v)."""
    if family.name == chatglm3.ChatGLM3Family.name and chatglm3.is_official_adapter(adapter_dir):
        log.info("converting official ChatGLM3 adapter %s (query_key_value -> q/k/v)", adapter_dir)
        return chatglm3.convert_official_adapter(adapter_dir, scratch, glm_config_of(base_dir))
    return adapter_dir


def lora_scaling(config: dict[str, Any], module: str, rank: int) -> float:
    """peft's scaling: alpha / r (alpha / sqrt(r) with rsLoRA), with per-module alpha from `alpha_pattern`."""
    from peft.utils.other import get_pattern_key

    alpha_pattern = config.get("alpha_pattern") or {}
    alpha = alpha_pattern.get(get_pattern_key(alpha_pattern.keys(), module), config["lora_alpha"])
    return float(alpha) / (math.sqrt(rank) if config.get("use_rslora") else rank)


def lora_updates(adapter_config: dict[str, Any], state: dict[str, torch.Tensor]) -> dict[str, LoraUpdate]:
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
                update.transpose = "embedding" in marker or bool(adapter_config.get("fan_in_fan_out"))
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


# --- reading the base ------------------------------------------------------------------------------------------


def native_tensors(
    base_dir: Path, official: bool, config: GlmConfig | None
) -> Iterator[tuple[str, torch.Tensor]]:
    """Every base tensor under the native module names the adapter uses, one shard at a time."""
    for shard in find_checkpoint(base_dir).shards:
        for name, tensor in iter_shard(shard):
            if not official:
                yield name, tensor
            elif (
                name != chatglm3.ROTARY_BUFFER
            ):  # rotary frequencies: recomputed from the config, never stored
                assert config is not None
                yield from chatglm3.official_to_native(name, tensor, config)


# --- output layouts --------------------------------------------------------------------------------------------


@dataclass
class ExportContext:
    """What a layout needs to write the non-weight files."""

    base_dir: Path
    family: ModelFamily
    dtype: torch.dtype
    official_base: bool


class ExportFormat(ABC):
    """One output layout: tensor names, config, tokenizer files, and how a plain user loads the result."""

    name: str = ""
    description: str = ""

    def check(self, context: ExportContext) -> None:
        """Refuse a base this layout cannot express, before any work is done (every base fits by default)."""
        return None

    def ready_tensors(
        self, pending: dict[str, torch.Tensor], final: bool, context: ExportContext
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(tensors to write now under output names, tensors to hold for the next shard)."""
        return pending, {}

    @abstractmethod
    def write_metadata(self, staging: Path, context: ExportContext) -> list[str]:
        """Config, generation config and tokenizer; returns notes for the user."""

    @abstractmethod
    def load_for_check(self, out_dir: Path, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
        """The written model, loaded the way its users load it."""


EXPORT_FORMATS: Registry[ExportFormat] = Registry("export format")


def base_config(context: ExportContext) -> PretrainedConfig:
    """The transformers config of the base (official ChatGLM3 configs mapped onto native Glm)."""
    if context.official_base:
        config: PretrainedConfig = glm_config_of(context.base_dir)
        config.architectures = ["GlmForCausalLM"]
    else:
        config = AutoConfig.from_pretrained(context.base_dir)
    config.dtype = context.dtype
    return config


def stop_token_generation_config(
    context: ExportContext, tokenizer: Any, config: PretrainedConfig
) -> GenerationConfig:
    """The base's generation config (or one from the model config) ending on the family's stop tokens."""
    if (context.base_dir / "generation_config.json").is_file():
        generation = GenerationConfig.from_pretrained(context.base_dir)
    else:
        generation = GenerationConfig.from_model_config(config)
    generation.eos_token_id = context.family.stop_token_ids(tokenizer)
    generation.pad_token_id = tokenizer.pad_token_id
    return generation


class HFFormat(ExportFormat):
    """transformers-native: plain `AutoModelForCausalLM`/`AutoTokenizer` load it without remote code; vLLM serves it."""

    name = "hf"
    description = "transformers-native layout (plain AutoModelForCausalLM, vLLM)"

    def write_metadata(self, staging: Path, context: ExportContext) -> list[str]:
        """config.json, generation_config.json with the stop ids, tokenizer files with the chat template."""
        config = base_config(context)
        config.save_pretrained(staging)
        tokenizer = context.family.load_tokenizer(context.base_dir)
        tokenizer.save_pretrained(staging)
        stop_token_generation_config(context, tokenizer, config).save_pretrained(staging)
        return []

    def load_for_check(self, out_dir: Path, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
        """Plain transformers, as a user or vLLM would."""
        model: torch.nn.Module = AutoModelForCausalLM.from_pretrained(
            out_dir, dtype=dtype, device_map=str(device)
        )
        return model.eval()


class ChatGLM3Format(ExportFormat):
    """The official ChatGLM3 layout: fused `query_key_value`, official config keys, `tokenizer.model`."""

    name = "chatglm3"
    description = "official ChatGLM3 layout (fused query_key_value, official config, tokenizer.model)"
    REMOTE_CODE = (
        "configuration_chatglm.py",
        "modeling_chatglm.py",
        "tokenization_chatglm.py",
        "quantization.py",
    )

    def check(self, context: ExportContext) -> None:
        """Only ChatGLM3 bases have an official layout; the tokenizer.model must be found."""
        if context.family.name != chatglm3.ChatGLM3Family.name:
            raise WenzhenError(
                f"--format chatglm3 needs a ChatGLM3 base, but {context.base_dir} is a {context.family.name} model; "
                "use --format hf"
            )
        self.tokenizer_model(context)

    def ready_tensors(
        self, pending: dict[str, torch.Tensor], final: bool, context: ExportContext
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Official names; q/k/v pieces whose siblings are still to come wait for them (they are fused)."""
        held = {name: t for name, t in pending.items() if self._missing_sibling(name, pending)}
        if held and final:
            raise WenzhenError(f"the base checkpoint lacks a sibling of {next(iter(held))}; it is incomplete")
        complete = {name: t for name, t in pending.items() if name not in held}
        ready = chatglm3.native_to_official(complete, glm_config_of(context.base_dir)) if complete else {}
        if final:
            # Kept in fp32 whatever the export dtype: rounded to bf16 it would no longer match the frequencies
            # the model computes (loaders check it), and the official code keeps its own buffer dtype anyway.
            ready[chatglm3.ROTARY_BUFFER] = self.rotary_frequencies(context).float()
        return ready, held

    @staticmethod
    def _missing_sibling(name: str, pending: dict[str, torch.Tensor]) -> bool:
        for part in ("q_proj", "k_proj", "v_proj"):
            if f".self_attn.{part}." in name:
                return any(
                    name.replace(part, other) not in pending for other in ("q_proj", "k_proj", "v_proj")
                )
        return False

    @staticmethod
    def rotary_frequencies(context: ExportContext) -> torch.Tensor:
        """`transformer.rotary_pos_emb.inv_freq` as the official checkpoints store it (the native rotary's own)."""
        return GlmRotaryEmbedding(glm_config_of(context.base_dir)).inv_freq.detach().cpu()

    def tokenizer_model(self, context: ExportContext) -> Path:
        """tokenizer.model of the base, or of the official download a converted base came from."""
        candidates = [context.base_dir / "tokenizer.model"]
        info = read_run_info(context.base_dir)
        if info and info.base_model:
            candidates.append(Path(info.base_model) / "tokenizer.model")
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        raise WenzhenError(
            f"--format chatglm3 needs the base's tokenizer.model, which is not in {context.base_dir}; copy the "
            "official tokenizer.model there"
        )

    def write_metadata(self, staging: Path, context: ExportContext) -> list[str]:
        """Official config.json and tokenizer files; the remote-code files too when the base has them."""
        official = chatglm3.official_config_from_glm(glm_config_of(context.base_dir))
        official["torch_dtype"] = str(context.dtype).removeprefix("torch.")
        base_raw = read_config(context.base_dir)
        notes = []
        code = [context.base_dir / name for name in self.REMOTE_CODE if (context.base_dir / name).is_file()]
        if code and base_raw.get("auto_map"):
            official["auto_map"] = base_raw["auto_map"]
            for file in code:
                shutil.copyfile(file, staging / file.name)
        else:
            notes.append(
                "the base has no remote-code files, so none were copied: wenzhen loads this folder as it is; for "
                "the official tools with trust_remote_code add configuration_chatglm.py, modeling_chatglm.py and "
                "tokenization_chatglm.py from THUDM/chatglm3-6b and their auto_map"
            )
        write_json(staging / "config.json", official)
        shutil.copyfile(self.tokenizer_model(context), staging / "tokenizer.model")
        if context.official_base and (context.base_dir / "tokenizer_config.json").is_file():
            shutil.copyfile(context.base_dir / "tokenizer_config.json", staging / "tokenizer_config.json")
        chatglm3.generation_config().save_pretrained(staging)
        return notes

    def load_for_check(self, out_dir: Path, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
        """Through wenzhen's official-layout loader (the official tools need the remote code we do not ship)."""
        return load_model(out_dir, dtype=dtype, device=device).model


EXPORT_FORMATS.add(HFFormat.name, HFFormat())
EXPORT_FORMATS.add(ChatGLM3Format.name, ChatGLM3Format())


# --- writing shards --------------------------------------------------------------------------------------------


class ShardWriter:
    """Collects output tensors and writes a safetensors shard whenever `max_bytes` have gathered.

    Shards get temporary names until the count is known, then the standard `model-0000N-of-0000M.safetensors`
    names and an index (or `model.safetensors` when there is one).
    """

    def __init__(self, directory: Path, layout: ExportFormat, context: ExportContext, max_bytes: int) -> None:
        self.directory = directory
        self.layout = layout
        self.context = context
        self.max_bytes = max_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.files: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0
        self.parameters = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Queue one output tensor; write a shard when enough have gathered."""
        self.pending[name] = tensor
        self.pending_bytes += tensor.numel() * tensor.element_size()
        if self.pending_bytes >= self.max_bytes:
            self.flush(final=False)

    def flush(self, final: bool) -> None:
        """Write what is ready as one shard and free it."""
        ready, held = self.layout.ready_tensors(self.pending, final, self.context)
        if ready:
            file = self.directory / f".shard-{len(self.files):05d}.safetensors"
            save_file({k: v.contiguous() for k, v in ready.items()}, str(file), metadata={"format": "pt"})
            self.files.append((file, list(ready)))
            self.total_bytes += sum(t.numel() * t.element_size() for t in ready.values())
            self.parameters += sum(t.numel() for k, t in ready.items() if k != chatglm3.ROTARY_BUFFER)
        self.pending = held
        self.pending_bytes = sum(t.numel() * t.element_size() for t in held.values())

    def finish(self) -> int:
        """Write the last shard, give the shards their final names and write the index; returns the shard count."""
        self.flush(final=True)
        count = len(self.files)
        if count == 1:
            self.files[0][0].rename(self.directory / "model.safetensors")
            return 1
        weight_map: dict[str, str] = {}
        for number, (file, names) in enumerate(self.files, start=1):
            final_name = f"model-{number:05d}-of-{count:05d}.safetensors"
            file.rename(self.directory / final_name)
            weight_map |= dict.fromkeys(names, final_name)
        write_json(
            self.directory / "model.safetensors.index.json",
            {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map},
        )
        return count


def write_merged_weights(
    context: ExportContext,
    updates: dict[str, LoraUpdate],
    staging: Path,
    layout: ExportFormat,
    max_bytes: int,
) -> tuple[int, int]:
    """Stream the base, merge each targeted weight, cast, write shards; returns (shards, parameters)."""
    config = glm_config_of(context.base_dir) if context.official_base else None
    writer = ShardWriter(staging, layout, context, max_bytes)
    remaining = dict(updates)
    for name, tensor in native_tensors(context.base_dir, context.official_base, config):
        update = remaining.pop(name, None)
        writer.add(name, (update.apply(tensor) if update else tensor).to(context.dtype))
    if remaining:
        raise WenzhenError(
            f"the adapter changes {len(remaining)} weight(s) the base {context.base_dir} does not have (first: "
            f"{next(iter(remaining))}); pass the --base the adapter was trained on"
        )
    return writer.finish(), writer.parameters


# --- verification ----------------------------------------------------------------------------------------------


def verification_dtype(export_dtype: torch.dtype, parameters: int, device: torch.device) -> torch.dtype:
    """fp32 when two fp32 copies of the model fit one after the other (the reference is freed first), else the
    export's own dtype (a 6B on a 24 GB CPU machine)."""
    import psutil

    available = (
        torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else psutil.virtual_memory().available
    )
    return torch.float32 if parameters * 4 * 1.3 < available else export_dtype


@torch.inference_mode()
def probe_logits(
    model: torch.nn.Module, prompts: list[list[int]], device: torch.device
) -> list[torch.Tensor]:
    """Full-vocabulary fp32 logits of each probe prompt (one at a time: no padding to get wrong)."""
    return [model(torch.tensor([ids], device=device)).logits.float().cpu() for ids in prompts]


def max_difference(left: list[torch.Tensor], right: list[torch.Tensor]) -> float:
    """Largest absolute logit difference over the probe prompts."""
    return max(float((a - b).abs().max()) for a, b in zip(left, right, strict=True))


def verify_merge(
    adapter_dir: Path,
    base_dir: Path,
    merged_dir: Path,
    layout: ExportFormat,
    export_dtype: torch.dtype,
    parameters: int,
    device: str | None,
    tolerance: float | None,
) -> dict[str, Any]:
    """Compare the merged model's logits with base + adapter on the probe prompts; raise beyond tolerance.

    In fp32 the two agree to float noise. In bf16/fp16, rounding W + BA once instead of W alone moves logits by an
    amount that depends on the model (measured 0.47 at logit scale 6.8 on a random 6B), so the limit also admits
    twice what peft's own in-place merge moves them by in the same dtype; a dropped or wrong update moves them
    by about the adapter's whole effect, which is reported beside. The reference is freed before the merged
    model is loaded, so memory holds one model at a time.
    """
    torch_device = resolve_device(device)
    compute = verification_dtype(export_dtype, parameters, torch_device)
    reference = load_model(adapter_dir, base=base_dir, dtype=compute, device=torch_device)
    prompts = [reference.family.encode_prompt(reference.tokenizer, c) for c in PROBE_CONVERSATIONS]
    expected = probe_logits(reference.model, prompts, torch_device)
    with reference.model.disable_adapter():
        base_only = probe_logits(reference.model, prompts, torch_device)
    reference.model.merge_adapter()
    peft_merged = probe_logits(reference.model, prompts, torch_device)
    del reference
    gc.collect()
    merged = layout.load_for_check(merged_dir, compute, torch_device)
    actual = probe_logits(merged, prompts, torch_device)
    del merged
    gc.collect()
    difference = max_difference(actual, expected)
    rounding = max_difference(peft_merged, expected)
    scale = max(1.0, *(float(e.abs().max()) for e in expected))
    relative = max(RELATIVE_TOLERANCE[export_dtype], RELATIVE_TOLERANCE[compute])
    limit = tolerance if tolerance is not None else max(relative * scale, 2 * rounding)
    argmax_agreement = sum(
        int((a.argmax(-1) == e.argmax(-1)).sum()) for a, e in zip(actual, expected, strict=True)
    ) / sum(len(p) for p in prompts)
    result = {
        "probe_prompts": len(prompts),
        "probe_tokens": sum(len(p) for p in prompts),
        "compute_dtype": str(compute).removeprefix("torch."),
        "device": str(torch_device),
        "max_abs_logit_diff": difference,
        "tolerance": limit,
        "peft_merge_max_abs_logit_diff": rounding,
        "adapter_effect_max_abs_logit": max_difference(expected, base_only),
        "max_abs_logit": scale,
        "argmax_agreement": argmax_agreement,
    }
    log.info(
        "verification: merged vs base + adapter max |logit diff| %.3g (tolerance %.3g, %s on %s); peft's own "
        "merge moves them by %.3g, the adapter itself by %.3g; argmax agreement %.1f%%",
        difference,
        limit,
        result["compute_dtype"],
        torch_device,
        rounding,
        result["adapter_effect_max_abs_logit"],
        100 * argmax_agreement,
    )
    if not difference <= limit:
        raise WenzhenError(
            f"verification failed: the merged model's logits differ from base + adapter by {difference:.3g} "
            f"(tolerance {limit:.3g}), so nothing was written; check that --base is the model the adapter was "
            "trained on, or pass --tolerance if the difference is expected rounding"
        )
    return result


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


def render_model_card(report: MergeReport, adapter_config: dict[str, Any], eval_dirs: list[Path]) -> str:
    """README.md: YAML front matter for hubs, then what went in, how it was checked and how to load it."""
    info, summary = training_record(report.adapter)
    targets = adapter_config.get("target_modules")
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
        f"| LoRA | r={adapter_config.get('r')}, alpha={adapter_config.get('lora_alpha')}, targets {targets}"
        f"{', rsLoRA' if adapter_config.get('use_rslora') else ''} |",
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
    read_adapter_config(adapter)
    base_dir = resolve_base(adapter, base)
    family = detect_family(base_dir)
    layout = EXPORT_FORMATS.get(export_format)
    torch_dtype = resolve_dtype(dtype, torch.device("cpu"))
    context = ExportContext(base_dir, family, torch_dtype, chatglm3.is_official_config(read_config(base_dir)))
    layout.check(context)
    eval_dirs = list(eval_dirs or [])
    for folder in eval_dirs:
        read_report(folder)  # refuse a wrong --eval before the long merge
    with (
        tempfile.TemporaryDirectory(prefix="wenzhen-merge-") as scratch,
        atomic_directory(out_dir, force=force) as staging,
    ):
        native_dir = native_adapter_dir(adapter, base_dir, family, Path(scratch))
        adapter_config = read_adapter_config(native_dir)
        updates = lora_updates(adapter_config, read_adapter_weights(native_dir))
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
        write_text(staging / MODEL_CARD, render_model_card(report, read_adapter_config(adapter), eval_dirs))
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
