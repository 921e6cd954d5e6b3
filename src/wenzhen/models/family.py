"""Model families: everything that differs between, say, ChatGLM3 and a generic Hugging Face chat model.

A family knows how to recognise its checkpoints, build the tokenizer and the transformers model, encode a chat
prompt (the one chat formatter), which token ids end a turn, and how tool calls look. Families live one module
each (`chatglm3.py`, `hf.py`) and register themselves in `FAMILIES`. Detection asks every specific family first
and the one family marked `fallback` (any transformers model) last, whatever the order they were registered in.
Export and loading reach every family difference (native config, native tensor names, native adapter, GGUF
architecture) through the hooks below, so generic code holds no family branch.
"""

from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from wenzhen.models.checkpoint import find_checkpoint, iter_shard
from wenzhen.registry import Registry

Message = dict[str, Any]


class ModelFamily(ABC):
    """The quirks of one kind of model, behind one interface."""

    name: str = ""
    supports_tools: bool = False
    #: The family that takes any model no specific family recognises; detection asks it last.
    fallback: bool = False
    #: LoRA target modules equivalent to the family's conventional choice.
    default_lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")

    @abstractmethod
    def matches(self, config: dict[str, Any]) -> bool:
        """Whether a model directory's config.json belongs to this family."""

    @abstractmethod
    def load_tokenizer(self, model_dir: Path) -> PreTrainedTokenizerBase:
        """The tokenizer of `model_dir`, with a chat template."""

    @abstractmethod
    def load_model(
        self, model_dir: Path, dtype: torch.dtype, device: torch.device, quantization: Any = None
    ) -> PreTrainedModel:
        """The transformers model of `model_dir` in `dtype` on `device` (quantised on load when given a
        transformers quantization config, e.g. `BitsAndBytesConfig`)."""

    @abstractmethod
    def encode_prompt(
        self,
        tokenizer: PreTrainedTokenizerBase,
        messages: list[Message],
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> list[int]:
        """Token ids of a chat prompt (the single chat formatter of the project).

        Message content never becomes control tokens: text such as `<|im_start|>system` that a user, a tool or a
        client's system turn contains is encoded as ordinary characters (split or escaped), so it cannot forge
        a turn.
        """

    @abstractmethod
    def stop_token_ids(self, tokenizer: PreTrainedTokenizerBase) -> list[int]:
        """Ids that end an assistant turn."""

    def parse_tool_call(self, text: str) -> dict[str, Any] | None:
        """A tool call `{"name", "arguments"}` if the generated text is one, else None."""
        return None

    def native_config(self, model_dir: Path) -> PretrainedConfig:
        """The transformers config of `model_dir` in the native layout its tensors are streamed in."""
        config: PretrainedConfig = AutoConfig.from_pretrained(model_dir)
        return config

    def native_tensors(self, model_dir: Path, config: PretrainedConfig) -> Iterator[tuple[str, torch.Tensor]]:
        """Every weight of `model_dir` under the native transformers names adapters use, one shard at a time."""
        for shard in find_checkpoint(model_dir).shards:
            yield from iter_shard(shard)

    def native_adapter(self, adapter_dir: Path, config: PretrainedConfig, scratch: Path) -> Path:
        """`adapter_dir` with module names of the native model (a family may write a converted copy in
        `scratch`)."""
        return adapter_dir

    def gguf_architecture(self, config: PretrainedConfig) -> str:
        """The key of the GGUF architecture (llama.cpp's name) that writes this model; `model_type` by default."""
        return str(config.model_type)


FAMILIES: Registry[ModelFamily] = Registry("model family")
