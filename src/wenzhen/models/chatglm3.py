"""ChatGLM3 on transformers' native `GlmForCausalLM`, with no remote code.

Everything ChatGLM3-specific lives here: the official config mapped onto `GlmConfig`, the exact weight mapping in
both directions (official fused `query_key_value` <-> q/k/v, `dense_h_to_4h` <-> `gate_up_proj`, ...), conversion
of official LoRA adapters, the chat prompt, the stop tokens and the tool-call format.
"""

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from safetensors.torch import load_file, save_file
from transformers import (
    GenerationConfig,
    GlmConfig,
    GlmForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from wenzhen.errors import WenzhenError
from wenzhen.models.adapter import read_adapter_config
from wenzhen.models.chatglm3_tokenizer import TOOLS_PREAMBLE, build_chatglm3_tokenizer
from wenzhen.models.checkpoint import find_checkpoint, iter_shard
from wenzhen.models.family import FAMILIES, Message, ModelFamily

GMASK, SOP = 64790, 64792
ROLE_IDS = {"system": 64794, "user": 64795, "assistant": 64796, "observation": 64797}
EOS_ID, PAD_ID = 2, 0
#: The official model needs all three to stop; without `<|user|>` and `<|observation|>` it rambles on.
STOP_IDS = [EOS_ID, ROLE_IDS["user"], ROLE_IDS["observation"]]
OFFICIAL_MODEL_TYPE = "chatglm"
VOCAB_SIZE = 65024

# Official parameter names (per layer, after `transformer.encoder.layers.N.`) -> native Glm names.
_LAYER_RENAMES = {
    "input_layernorm.weight": "input_layernorm.weight",
    "post_attention_layernorm.weight": "post_attention_layernorm.weight",
    "self_attention.dense.weight": "self_attn.o_proj.weight",
    "mlp.dense_h_to_4h.weight": "mlp.gate_up_proj.weight",
    "mlp.dense_4h_to_h.weight": "mlp.down_proj.weight",
}
_GLOBAL_RENAMES = {
    "transformer.embedding.word_embeddings.weight": "model.embed_tokens.weight",
    "transformer.encoder.final_layernorm.weight": "model.norm.weight",
    "transformer.output_layer.weight": "lm_head.weight",
}
# Recomputed from the config by the native rotary embedding; checked equal, not loaded.
ROTARY_BUFFER = "transformer.rotary_pos_emb.inv_freq"
_LAYER_KEY = re.compile(r"^transformer\.encoder\.layers\.(\d+)\.(.+)$")
_QKV = "self_attention.query_key_value."


def is_official_config(config: dict[str, Any]) -> bool:
    """True for the official ChatGLM3 `config.json` (model_type `chatglm`)."""
    return config.get("model_type") == OFFICIAL_MODEL_TYPE


def _require(config: dict[str, Any], key: str, expected: Any) -> None:
    if config.get(key, expected) != expected:
        raise WenzhenError(
            f"this ChatGLM config sets {key}={config[key]!r}, but only ChatGLM3 ({key}={expected!r}) is supported"
        )


def glm_config_from_official(config: dict[str, Any]) -> GlmConfig:
    """The `GlmConfig` equivalent to an official ChatGLM3 `config.json`.

    `rms_norm_eps` must come from `layernorm_epsilon` (GlmConfig's default is GLM-4's), `rope_theta` is
    10000 x `rope_ratio` (absent means 1) and only half of each head is rotated.
    """
    for key, expected in (
        ("rmsnorm", True),
        ("add_bias_linear", False),
        ("apply_residual_connection_post_layernorm", False),
        ("post_layer_norm", True),
        ("original_rope", True),
    ):
        _require(config, key, expected)
    heads = config["num_attention_heads"]
    kv_heads = config["multi_query_group_num"] if config.get("multi_query_attention") else heads
    return GlmConfig(
        vocab_size=config["padded_vocab_size"],
        hidden_size=config["hidden_size"],
        intermediate_size=config["ffn_hidden_size"],
        num_hidden_layers=config["num_layers"],
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=config.get("kv_channels", config["hidden_size"] // heads),
        rms_norm_eps=config.get("layernorm_epsilon", 1e-5),
        max_position_embeddings=config.get("seq_length", 8192),
        attention_bias=config.get("add_qkv_bias", True),
        attention_dropout=config.get("attention_dropout", 0.0),
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0 * float(config.get("rope_ratio", 1) or 1),
            "partial_rotary_factor": 0.5,
        },
        tie_word_embeddings=False,
        pad_token_id=PAD_ID,
        bos_token_id=None,
        eos_token_id=list(STOP_IDS),
        use_cache=True,
    )


def qkv_sizes(config: GlmConfig) -> list[int]:
    """Rows of q, k and v inside the fused `query_key_value` (4096, 256, 256 for the 6B)."""
    head_dim = int(config.head_dim)
    kv_rows = int(config.num_key_value_heads) * head_dim
    return [int(config.num_attention_heads) * head_dim, kv_rows, kv_rows]


def official_to_native(
    name: str, tensor: torch.Tensor, config: GlmConfig
) -> Iterator[tuple[str, torch.Tensor]]:
    """Map one official tensor onto native names; the fused qkv becomes three tensors."""
    if name in _GLOBAL_RENAMES:
        yield _GLOBAL_RENAMES[name], tensor
        return
    match = _LAYER_KEY.match(name)
    if match is None:
        raise WenzhenError(
            f"unexpected parameter {name} in a ChatGLM3 checkpoint; is this a P-Tuning checkpoint?"
        )
    layer, rest = match.groups()
    prefix = f"model.layers.{layer}."
    if rest.startswith(_QKV):
        suffix = rest[len(_QKV) :]
        q, k, v = torch.split(tensor, qkv_sizes(config), dim=0)
        for part, piece in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
            yield f"{prefix}self_attn.{part}.{suffix}", piece
        return
    if rest not in _LAYER_RENAMES:
        raise WenzhenError(f"unexpected parameter {name} in a ChatGLM3 checkpoint")
    yield prefix + _LAYER_RENAMES[rest], tensor


def native_to_official(state: dict[str, torch.Tensor], config: GlmConfig) -> dict[str, torch.Tensor]:
    """The inverse mapping: native Glm tensors -> official names with the fused `query_key_value`."""
    inverse_global = {native: official for official, native in _GLOBAL_RENAMES.items()}
    inverse_layer = {native: official for official, native in _LAYER_RENAMES.items()}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name in inverse_global:
            out[inverse_global[name]] = tensor
            continue
        match = re.match(r"^model\.layers\.(\d+)\.(.+)$", name)
        if match is None:
            raise WenzhenError(f"unexpected parameter {name} for a ChatGLM3 export")
        layer, rest = match.groups()
        official_prefix = f"transformer.encoder.layers.{layer}."
        qkv = re.match(r"^self_attn\.q_proj\.(weight|bias)$", rest)
        if qkv:
            suffix = qkv.group(1)
            parts = [state[f"model.layers.{layer}.self_attn.{p}_proj.{suffix}"] for p in "qkv"]
            out[f"{official_prefix}{_QKV}{suffix}"] = torch.cat(parts, dim=0)
        elif re.match(r"^self_attn\.[kv]_proj\.", rest):
            continue
        else:
            out[official_prefix + inverse_layer[rest]] = tensor
    return out


def official_config_from_glm(config: GlmConfig) -> dict[str, Any]:
    """An official-layout `config.json` (no auto_map: it loads with wenzhen, or add the remote-code files)."""
    rope_theta = float(dict(config.rope_parameters or {}).get("rope_theta", 10000.0))
    return {
        "model_type": OFFICIAL_MODEL_TYPE,
        "architectures": ["ChatGLMModel"],
        "add_bias_linear": False,
        "add_qkv_bias": config.attention_bias,
        "apply_query_key_layer_scaling": True,
        "apply_residual_connection_post_layernorm": False,
        "attention_dropout": config.attention_dropout,
        "attention_softmax_in_fp32": True,
        "bias_dropout_fusion": True,
        "ffn_hidden_size": config.intermediate_size,
        "fp32_residual_connection": False,
        "hidden_dropout": 0.0,
        "hidden_size": config.hidden_size,
        "kv_channels": config.head_dim,
        "layernorm_epsilon": config.rms_norm_eps,
        "multi_query_attention": config.num_key_value_heads != config.num_attention_heads,
        "multi_query_group_num": config.num_key_value_heads,
        "num_attention_heads": config.num_attention_heads,
        "num_layers": config.num_hidden_layers,
        "original_rope": True,
        "padded_vocab_size": config.vocab_size,
        "post_layer_norm": True,
        "rmsnorm": True,
        "rope_ratio": rope_theta / 10000.0,
        "seq_length": config.max_position_embeddings,
        "use_cache": True,
        "tie_word_embeddings": False,
        "eos_token_id": EOS_ID,
        "pad_token_id": PAD_ID,
    }


def generation_config() -> GenerationConfig:
    """Generation defaults with the three stop ids."""
    return GenerationConfig(eos_token_id=list(STOP_IDS), pad_token_id=PAD_ID, do_sample=False)


def _check_inv_freq(tensor: torch.Tensor, model: GlmForCausalLM) -> None:
    native = model.model.rotary_emb.inv_freq
    if tensor.shape != native.shape or not torch.allclose(tensor.float(), native.float().cpu(), rtol=1e-3):
        raise WenzhenError(
            "the checkpoint's rotary frequencies differ from ChatGLM3's; this model is not supported"
        )


def load_official_model(model_dir: Path, dtype: torch.dtype, device: torch.device) -> GlmForCausalLM:
    """Stream an official checkpoint shard by shard into a native `GlmForCausalLM`.

    Parameters are created empty (meta) and each shard's tensors are mapped, cast and placed on `device` before
    the next shard is read, so host memory peaks near the model's size plus one shard.
    """
    raw = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    config = glm_config_from_official(raw)
    files = find_checkpoint(model_dir)
    with init_empty_weights(include_buffers=False):
        model = GlmForCausalLM(config)
    expected = set(model.state_dict())
    loaded: set[str] = set()
    for shard in files.shards:
        for name, tensor in iter_shard(shard):
            if name == ROTARY_BUFFER:
                _check_inv_freq(tensor, model)
                continue
            for native, piece in official_to_native(name, tensor, config):
                if native not in expected:
                    raise WenzhenError(
                        f"{shard.name}: parameter {name} does not fit the config in {model_dir}"
                    )
                placed = piece.to(device=device, dtype=dtype, copy=True).contiguous()
                model.load_state_dict({native: placed}, strict=False, assign=True)
                loaded.add(native)
            del tensor
    missing = sorted(expected - loaded)
    if missing:
        raise WenzhenError(
            f"{model_dir} lacks {len(missing)} parameters (first: {missing[0]}); the download is incomplete"
        )
    model.model.rotary_emb.to(device)
    model.generation_config = generation_config()
    return model.eval()


def check_tokenizer_matches(tokenizer: PreTrainedTokenizerBase, vocab_size: int, model_dir: Path) -> None:
    """Refuse a tokenizer.model whose ids would not fit the model's embedding."""
    if (
        len(tokenizer) > vocab_size
        or tokenizer.convert_tokens_to_ids("<|observation|>") != ROLE_IDS["observation"]
    ):
        raise WenzhenError(
            f"tokenizer.model in {model_dir} does not match the config (vocab {len(tokenizer)} vs {vocab_size}, "
            "role ids differ); copy the tokenizer.model that came with this model"
        )


def encode_message(
    tokenizer: PreTrainedTokenizerBase, role: str, content: str, metadata: str = ""
) -> list[int]:
    """One official turn: `<|role|>` + ids of f"{metadata}\\n" + ids of the content.

    Content is encoded with special-token matching off, as the official SentencePiece code does, so a user who
    types `<|assistant|>` cannot forge a turn.
    """
    role = "observation" if role == "tool" else role
    if role not in ROLE_IDS:
        raise WenzhenError(f"unknown chat role {role!r}; use system, user, assistant or observation")

    def plain(text: str) -> list[int]:
        return (
            list(tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)) if text else []
        )

    return [ROLE_IDS[role], *plain(f"{metadata}\n"), *plain(content)]


def _with_tools(messages: list[Message], tools: list[dict[str, Any]] | None) -> list[Message]:
    """Attach `tools` to the system turn (inserting ChatGLM3's standard one if there is none)."""
    if not tools or any(m.get("tools") for m in messages):
        return messages
    if messages and messages[0]["role"] == "system":
        return [{**messages[0], "tools": tools}, *messages[1:]]
    return [{"role": "system", "content": TOOLS_PREAMBLE, "tools": tools}, *messages]


class ChatGLM3Family(ModelFamily):
    """ChatGLM3-6B (official downloads and directories converted by wenzhen)."""

    name = "chatglm3"
    supports_tools = True

    def matches(self, config: dict[str, Any]) -> bool:
        """Official configs, and converted ones (native Glm with ChatGLM3's 65,024-token vocabulary)."""
        return is_official_config(config) or (
            config.get("model_type") == "glm" and config.get("vocab_size") == VOCAB_SIZE
        )

    def load_tokenizer(self, model_dir: Path) -> PreTrainedTokenizerBase:
        """Converted directories carry tokenizer.json; official ones are converted from tokenizer.model."""
        from wenzhen.models.hf import load_native_tokenizer

        if (model_dir / "tokenizer.json").is_file():
            return load_native_tokenizer(model_dir)
        tokenizer = build_chatglm3_tokenizer(model_dir / "tokenizer.model")
        raw = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        check_tokenizer_matches(tokenizer, raw.get("padded_vocab_size", VOCAB_SIZE), model_dir)
        return tokenizer

    def load_model(
        self, model_dir: Path, dtype: torch.dtype, device: torch.device, quantization: Any = None
    ) -> PreTrainedModel:
        """Official layout through the streaming mapper; converted layout through transformers."""
        raw = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        if is_official_config(raw):
            if quantization is not None:
                raise WenzhenError(
                    f"quantised loading needs the native layout; run `wenzhen convert {model_dir} CONVERTED_DIR` "
                    "and use CONVERTED_DIR"
                )
            return load_official_model(model_dir, dtype, device)
        from wenzhen.models.hf import load_native_model

        model = load_native_model(model_dir, dtype, device, quantization)
        model.generation_config.eos_token_id = list(STOP_IDS)
        return model

    def encode_prompt(
        self,
        tokenizer: PreTrainedTokenizerBase,
        messages: list[Message],
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> list[int]:
        """The official `build_chat_input` ids; tools are appended to the system turn as indented JSON."""
        ids = [GMASK, SOP]
        for message in _with_tools(messages, tools):
            content = message.get("content") or ""
            if message["role"] == "system" and message.get("tools"):
                content = content + "\n" + json.dumps(message["tools"], indent=4, ensure_ascii=False)
            ids += encode_message(tokenizer, message["role"], content, message.get("metadata") or "")
        if add_generation_prompt:
            ids.append(ROLE_IDS["assistant"])
        return ids

    def stop_token_ids(self, tokenizer: PreTrainedTokenizerBase) -> list[int]:
        """eos, `<|user|>` and `<|observation|>`."""
        return list(STOP_IDS)

    def native_config(self, model_dir: Path) -> PretrainedConfig:
        """Official configs mapped onto native `GlmConfig` (architecture `GlmForCausalLM`); converted ones as
        saved."""
        raw = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        if not is_official_config(raw):
            return super().native_config(model_dir)
        config = glm_config_from_official(raw)
        config.architectures = ["GlmForCausalLM"]
        return config

    def native_tensors(self, model_dir: Path, config: PretrainedConfig) -> Iterator[tuple[str, torch.Tensor]]:
        """Official checkpoints mapped tensor by tensor (the fused qkv split); the rotary frequencies, which the
        native model recomputes from the config, are left out."""
        raw = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        if not is_official_config(raw):
            yield from super().native_tensors(model_dir, config)
            return
        assert isinstance(config, GlmConfig)
        for shard in find_checkpoint(model_dir).shards:
            for name, tensor in iter_shard(shard):
                if name != ROTARY_BUFFER:
                    yield from official_to_native(name, tensor, config)

    def native_adapter(self, adapter_dir: Path, config: PretrainedConfig, scratch: Path) -> Path:
        """Official finetune-demo adapters (LoRA on the fused `query_key_value`) rewritten for q/k/v."""
        if not is_official_adapter(adapter_dir):
            return adapter_dir
        assert isinstance(config, GlmConfig)
        return convert_official_adapter(adapter_dir, scratch, config)

    def gguf_architecture(self, config: PretrainedConfig) -> str:
        """llama.cpp's `chatglm` architecture (its converter maps ChatGLM3 and GlmForCausalLM there)."""
        return "chatglm"

    def parse_tool_call(self, text: str) -> dict[str, Any] | None:
        """ChatGLM3 writes a call as `tool_name\\n```python\\ntool_call(a=1)\\n```` or `name\\n{json}`."""
        head, _, body = text.strip().partition("\n")
        name = head.strip()
        if not body or not re.fullmatch(r"[A-Za-z_][\w.-]*", name):
            return None
        body = body.strip()
        fenced = re.search(r"tool_call\((.*)\)", body, re.S)
        if fenced:
            arguments = _parse_call_arguments(fenced.group(1))
            return None if arguments is None else {"name": name, "arguments": arguments}
        try:
            arguments = json.loads(body)
        except json.JSONDecodeError:
            return None
        return {"name": name, "arguments": arguments} if isinstance(arguments, dict) else None


def _parse_call_arguments(source: str) -> dict[str, Any] | None:
    """Keyword arguments of `tool_call(...)` as literals, parsed safely with `ast` (never `eval`)."""
    import ast

    try:
        call = ast.parse(f"f({source})", mode="eval").body
        assert isinstance(call, ast.Call)
        return {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg}
    except (SyntaxError, ValueError, AssertionError):
        return None


def convert_official_adapter(adapter_dir: Path, out_dir: Path, config: GlmConfig) -> Path:
    """Rewrite an official LoRA adapter (target `query_key_value`) for the native q/k/v modules.

    LoRA on the fused projection is W_qkv + B A; its q, k and v rows are B's matching row blocks times the same A,
    so each of q/k/v gets A unchanged and its block of B: exactly the same function, no fused module needed.
    """
    adapter_config = dict(read_adapter_config(adapter_dir).raw)
    weights_file = adapter_dir / "adapter_model.safetensors"
    if weights_file.is_file():
        state = load_file(str(weights_file))
    else:
        state = torch.load(adapter_dir / "adapter_model.bin", map_location="cpu", weights_only=True)
    converted: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        official = name.replace("base_model.model.", "", 1)
        match = _LAYER_KEY.match(official)
        if match is None or ".query_key_value." not in official:
            raise WenzhenError(f"{adapter_dir}: adapter tensor {name} is not a LoRA on query_key_value")
        layer, rest = match.groups()
        kind = rest.split("query_key_value.", 1)[1]
        parts = torch.split(tensor, qkv_sizes(config), dim=0) if kind.startswith("lora_B") else (tensor,) * 3
        for proj, piece in zip(("q_proj", "k_proj", "v_proj"), parts, strict=True):
            converted[f"base_model.model.model.layers.{layer}.self_attn.{proj}.{kind}"] = (
                piece.clone().contiguous()
            )
    targets = adapter_config.get("target_modules") or []
    adapter_config["target_modules"] = [
        module
        for target in targets
        for module in (("q_proj", "k_proj", "v_proj") if target == "query_key_value" else (target,))
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(converted, str(out_dir / "adapter_model.safetensors"))
    (out_dir / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2), encoding="utf-8")
    return out_dir


def is_official_adapter(adapter_dir: Path) -> bool:
    """True for a LoRA adapter written by the official finetune demo (targets the fused `query_key_value`)."""
    return "query_key_value" in read_adapter_config(adapter_dir).target_modules


FAMILIES.add(ChatGLM3Family.name, ChatGLM3Family())
