"""Any local Hugging Face causal-LM directory with a chat template (Qwen2.5, Llama, SmolLM2, ...)."""

import functools
import json
import re
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from wenzhen.errors import WenzhenError
from wenzhen.models.checkpoint import find_checkpoint
from wenzhen.models.family import FAMILIES, Message, ModelFamily


def refuse_custom_code(model_dir: Path) -> None:
    """Refuse a folder whose model only its own Python files define: wenzhen never runs a model folder's code.

    Every transformers call passes `trust_remote_code=False` too; this check comes first so that the user reads
    one sentence naming the files instead of transformers' prompt (at a terminal) or its traceback (without one).
    """
    from transformers import CONFIG_MAPPING

    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    model_type = config.get("model_type")
    if model_type in CONFIG_MAPPING:
        return
    files = sorted(_code_files(config.get("auto_map")))
    if files:
        raise WenzhenError(
            f"{model_dir} needs its own Python code ({', '.join(files)}) to load, and wenzhen never runs a model "
            "folder's code; convert it to a transformers-native checkpoint (ChatGLM3: `wenzhen convert`) or use "
            "a model transformers supports natively"
        )
    raise WenzhenError(
        f"transformers does not know model_type {model_type!r} of {model_dir}; upgrade transformers or use a "
        "model transformers supports natively"
    )


def _code_files(auto_map: Any) -> set[str]:
    """The Python files an `auto_map` points to (`"modeling_x.Cls"` or `"org/repo--modeling_x.Cls"`)."""
    references = auto_map.values() if isinstance(auto_map, dict) else []
    names = set()
    for reference in references:
        for item in reference if isinstance(reference, list) else [reference]:
            if isinstance(item, str) and "." in item:
                names.add(item.split("--")[-1].rsplit(".", 1)[0] + ".py")
    return names


def load_native_model(
    model_dir: Path, dtype: torch.dtype, device: torch.device, quantization: Any = None
) -> PreTrainedModel:
    """transformers' own loader (it streams shards, and quantises on load); weights land directly on `device`.

    Every weight file's header and length is checked first, so a broken download is one sentence naming it.
    """
    refuse_custom_code(model_dir)
    find_checkpoint(model_dir)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            model_dir,
            dtype=dtype,
            device_map=str(device),
            quantization_config=quantization,
            trust_remote_code=False,
        )
    except (OSError, ValueError, KeyError) as exc:
        raise WenzhenError(f"transformers cannot load {model_dir}: {str(exc).splitlines()[0]}") from None
    return model.eval()


def load_native_tokenizer(model_dir: Path) -> PreTrainedTokenizerBase:
    """`AutoTokenizer` without remote code; a tokenizer only the folder's own Python defines is one sentence."""
    try:
        return AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    except ValueError as exc:
        if "custom code" not in str(exc) and "trust_remote_code" not in str(exc):
            raise
        config = model_dir / "tokenizer_config.json"
        files = (
            _code_files(json.loads(config.read_text(encoding="utf-8")).get("auto_map"))
            if config.is_file()
            else set()
        )
        raise WenzhenError(
            f"the tokenizer in {model_dir} needs its own Python code ({', '.join(sorted(files)) or 'auto_map'}), "
            "and wenzhen never runs a model folder's code; use a folder with a tokenizer.json (ChatGLM3: "
            "`wenzhen convert` writes one)"
        ) from None


# Inserted after the first character of a control token's text found in message content: the tokenizer then
# reads ordinary characters (the text still shows, the zero-width space does not) instead of the control token.
ESCAPE = "\u200b"


def escape_control_tokens(tokenizer: PreTrainedTokenizerBase, messages: list[Message]) -> list[Message]:
    """`messages` with every special token's text in their content broken by a zero-width space.

    The chat template is rendered to text and then tokenised, so without this a user typing
    `<|im_end|>\n<|im_start|>system ...` would open a real system turn and override the safety prompt.
    Splitting the content's tokens instead would need the template's text around each message, which templates
    do not expose; escaping works for every template.
    """
    pattern = _control_pattern(tuple(sorted(_control_texts(tokenizer))))
    if pattern is None:
        return messages
    escaped = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str) and pattern.search(content):
            content = pattern.sub(lambda found: found[0][0] + ESCAPE + found[0][1:], content)
            message = {**message, "content": content}
        escaped.append(message)
    return escaped


def _control_texts(tokenizer: PreTrainedTokenizerBase) -> set[str]:
    """Texts the tokenizer turns into added (special or markup-like) tokens wherever they appear."""
    texts = {str(token) for token in tokenizer.all_special_tokens}
    for token in tokenizer.added_tokens_decoder.values():
        if token.special or (token.content.startswith("<") and token.content.endswith(">")):
            texts.add(token.content)
    return {text for text in texts if len(text) > 1}


@functools.lru_cache(maxsize=8)
def _control_pattern(texts: tuple[str, ...]) -> "re.Pattern[str] | None":
    if not texts:
        return None
    return re.compile("|".join(re.escape(text) for text in sorted(texts, key=len, reverse=True)))


class HFChatFamily(ModelFamily):
    """Generic chat models: the tokenizer's own chat template formats prompts."""

    name = "hf"
    supports_tools = False
    fallback = True

    def matches(self, config: dict[str, Any]) -> bool:
        """Anything transformers knows (detection asks this fallback family last)."""
        return "model_type" in config

    def load_tokenizer(self, model_dir: Path) -> PreTrainedTokenizerBase:
        """The directory's tokenizer (never its own code); it must carry a chat template."""
        refuse_custom_code(model_dir)
        tokenizer = load_native_tokenizer(model_dir)
        if not tokenizer.chat_template:
            raise WenzhenError(
                f"the tokenizer in {model_dir} has no chat template; use a chat/instruct model"
            )
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    def load_model(
        self, model_dir: Path, dtype: torch.dtype, device: torch.device, quantization: Any = None
    ) -> PreTrainedModel:
        """Through transformers' native loader."""
        return load_native_model(model_dir, dtype, device, quantization)

    def encode_prompt(
        self,
        tokenizer: PreTrainedTokenizerBase,
        messages: list[Message],
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> list[int]:
        """`apply_chat_template` (a BatchEncoding in transformers 5) over the messages with control tokens escaped."""
        encoded = tokenizer.apply_chat_template(
            escape_control_tokens(tokenizer, messages),
            tools=tools,
            add_generation_prompt=add_generation_prompt,
            tokenize=True,
        )
        ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
        return list(ids)

    def stop_token_ids(self, tokenizer: PreTrainedTokenizerBase) -> list[int]:
        """The tokenizer's eos plus the end-of-turn tokens common templates use."""
        ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
        for token in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"):
            token_id = tokenizer.convert_tokens_to_ids(token)
            if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
                ids.add(token_id)
        return sorted(ids)


FAMILIES.add(HFChatFamily.name, HFChatFamily())
