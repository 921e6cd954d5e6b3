"""Model families: everything that differs between, say, ChatGLM3 and a generic Hugging Face chat model.

A family knows how to recognise its checkpoints, build the tokenizer and the transformers model, encode a chat
prompt (the one chat formatter), which token ids end a turn, and how tool calls look. Families live one module
each (`chatglm3.py`, `hf.py`) and register themselves in `FAMILIES`; detection asks each in order.
"""

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from wenzhen.registry import Registry

Message = dict[str, Any]


class ModelFamily(ABC):
    """The quirks of one kind of model, behind one interface."""

    name: str = ""
    supports_tools: bool = False
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


FAMILIES: Registry[ModelFamily] = Registry("model family")
