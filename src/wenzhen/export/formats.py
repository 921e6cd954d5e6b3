"""Output layouts of `wenzhen merge` (a registry): tensor names, config, tokenizer files, how a user loads the result;
and the shard writer that streams merged tensors into safetensors shards."""

import os
import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    GlmConfig,
    PretrainedConfig,
    PreTrainedTokenizerBase,
)
from transformers.models.glm.modeling_glm import GlmRotaryEmbedding

from wenzhen.errors import WenzhenError
from wenzhen.io import write_json
from wenzhen.models import chatglm3, load_model
from wenzhen.models.family import ModelFamily
from wenzhen.models.loading import read_config
from wenzhen.registry import Registry
from wenzhen.runinfo import read_run_info

SHARD_BYTES = 2 * 1024**3


@dataclass
class ExportContext:
    """What a layout needs to write the non-weight files."""

    base_dir: Path
    family: ModelFamily
    dtype: torch.dtype

    @property
    def config(self) -> PretrainedConfig:
        """The base's native transformers config in the export dtype."""
        config = self.family.native_config(self.base_dir)
        config.dtype = self.dtype
        return config


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


def stop_token_generation_config(
    context: ExportContext, tokenizer: PreTrainedTokenizerBase, config: PretrainedConfig
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
        config = context.config
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
    """The official ChatGLM3 layout: fused `query_key_value`, official config keys, `tokenizer.model`.

    The layout is ChatGLM3's own, so this format calls the ChatGLM3 module directly; `check` refuses other
    families before any work is done.
    """

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
        chatglm3_tokenizer_model(context.base_dir)

    def ready_tensors(
        self, pending: dict[str, torch.Tensor], final: bool, context: ExportContext
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Official names; q/k/v pieces whose siblings are still to come wait for them (they are fused)."""
        held = {name: t for name, t in pending.items() if missing_qkv_sibling(name, pending)}
        if held and final:
            raise WenzhenError(f"the base checkpoint lacks a sibling of {next(iter(held))}; it is incomplete")
        complete = {name: t for name, t in pending.items() if name not in held}
        config = self.glm_config(context)
        ready = chatglm3.native_to_official(complete, config) if complete else {}
        if final:
            # Kept in fp32 whatever the export dtype: rounded to bf16 it would no longer match the frequencies
            # the model computes (loaders check it), and the official code keeps its own buffer dtype anyway.
            ready[chatglm3.ROTARY_BUFFER] = GlmRotaryEmbedding(config).inv_freq.detach().cpu().float()
        return ready, held

    @staticmethod
    def glm_config(context: ExportContext) -> GlmConfig:
        config = context.family.native_config(context.base_dir)
        assert isinstance(config, GlmConfig)
        return config

    def write_metadata(self, staging: Path, context: ExportContext) -> list[str]:
        """Official config.json and tokenizer files; the remote-code files too when the base has them."""
        official = chatglm3.official_config_from_glm(self.glm_config(context))
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
        shutil.copyfile(chatglm3_tokenizer_model(context.base_dir), staging / "tokenizer.model")
        if chatglm3.is_official_config(base_raw) and (context.base_dir / "tokenizer_config.json").is_file():
            shutil.copyfile(context.base_dir / "tokenizer_config.json", staging / "tokenizer_config.json")
        chatglm3.generation_config().save_pretrained(staging)
        return notes

    def load_for_check(self, out_dir: Path, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
        """Through wenzhen's official-layout loader (the official tools need the remote code we do not ship)."""
        return load_model(out_dir, dtype=dtype, device=device).model


def missing_qkv_sibling(name: str, pending: dict[str, torch.Tensor]) -> bool:
    """True for a q/k/v projection whose two siblings of the same layer are not all in `pending` yet."""
    for part in ("q_proj", "k_proj", "v_proj"):
        if f".self_attn.{part}." in name:
            return any(name.replace(part, other) not in pending for other in ("q_proj", "k_proj", "v_proj"))
    return False


def chatglm3_tokenizer_model(base_dir: Path) -> Path:
    """tokenizer.model of a ChatGLM3 base, or of the official download a converted or merged base came from."""
    candidates = [base_dir / "tokenizer.model"]
    info = read_run_info(base_dir)
    if info and info.base_model:
        candidates.append(Path(info.base_model) / "tokenizer.model")
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise WenzhenError(
        f"this export needs the ChatGLM3 tokenizer.model, which is not in {base_dir}; copy the official "
        "tokenizer.model there"
    )


EXPORT_FORMATS.add(HFFormat.name, HFFormat())
EXPORT_FORMATS.add(ChatGLM3Format.name, ChatGLM3Format())


def ordinary_file_mode(path: Path) -> None:
    """Give a written file the mode an ordinary `open` would (0644 under umask 022): safetensors and temporary
    files are created 0600, which left weights unreadable to the other users of a shared model folder."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


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
            ordinary_file_mode(file)
            self.files.append((file, list(ready)))
            self.total_bytes += sum(t.numel() * t.element_size() for t in ready.values())
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
