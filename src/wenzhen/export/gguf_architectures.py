"""GGUF architectures (a registry keyed by llama.cpp's architecture name): how one kind of model is written for
llama.cpp: hyper-parameters, tensor names and layout, vocabulary, chat template; and the way back to native
transformers tensors for verification.

A model family names its architecture (`ModelFamily.gguf_architecture`); the name and metadata keys follow
llama.cpp's own converter (convert_hf_to_gguf.py), and tensor names come from the `gguf` package's name map, so a
file written here loads in llama.cpp exactly like one converted there. We write the files ourselves rather than
call that converter because it is not on PyPI, needs the whole model in memory for a merge, and cannot fold an
adapter in while streaming.
"""

import json
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import torch
from transformers import PretrainedConfig, PreTrainedTokenizerBase

from wenzhen.errors import WenzhenError
from wenzhen.models.family import ModelFamily
from wenzhen.registry import Registry

Tensors = Iterator[tuple[str, torch.Tensor]]


def write_shape(writer: gguf.GGUFWriter, config: PretrainedConfig, head_dim: int) -> None:
    """The decoder-shape keys every architecture here writes the same way (context, widths, layers, heads)."""
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_head_count(int(config.num_attention_heads))
    writer.add_head_count_kv(int(config.num_key_value_heads))
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)


class GGUFArchitecture(ABC):
    """One llama.cpp architecture."""

    name: str = ""
    #: Whether transformers' own GGUF loader reads this architecture (verification then uses it).
    transformers_reads: bool = False

    def check(self, config: PretrainedConfig) -> None:
        """Refuse a model whose features this architecture cannot express (everything fits by default)."""
        return None

    @abstractmethod
    def write_hyperparameters(self, writer: gguf.GGUFWriter, config: PretrainedConfig) -> None:
        """Context length, sizes, heads, norms, rotary settings under the architecture's keys."""

    @abstractmethod
    def gguf_tensors(self, tensors: Tensors, config: PretrainedConfig) -> Tensors:
        """Native transformers tensors -> GGUF names and layout (works on meta tensors too: shapes only)."""

    @abstractmethod
    def native_tensors(self, tensors: Tensors, config: PretrainedConfig) -> Tensors:
        """The inverse of `gguf_tensors`, for reading a written file back into a transformers model."""

    @abstractmethod
    def write_vocabulary(
        self,
        writer: gguf.GGUFWriter,
        tokenizer: PreTrainedTokenizerBase,
        model_dir: Path,
        config: PretrainedConfig,
    ) -> None:
        """Tokens, scores or merges, token types, pre-tokenizer and special token ids."""

    @abstractmethod
    def chat_template(self, tokenizer: PreTrainedTokenizerBase) -> str:
        """The Jinja chat template llama.cpp (and llama-cpp-python) render prompts with."""


GGUF_ARCHITECTURES: Registry[GGUFArchitecture] = Registry("GGUF architecture")


def name_map(arch: gguf.MODEL_ARCH, config: PretrainedConfig) -> gguf.TensorNameMap:
    """The `gguf` package's map from transformers tensor names to GGUF ones."""
    return gguf.get_tensor_name_map(arch, int(config.num_hidden_layers))


def gguf_name(names: gguf.TensorNameMap, name: str) -> str:
    """The GGUF name of one transformers tensor, or a clear error."""
    mapped = names.get_name(name, try_suffixes=(".weight", ".bias"))
    if mapped is None:
        raise WenzhenError(
            f"tensor {name} has no GGUF counterpart; this model's architecture is not supported"
        )
    return mapped


def stop_ids_metadata(
    writer: gguf.GGUFWriter, family: ModelFamily, tokenizer: PreTrainedTokenizerBase, eos: int
) -> None:
    """eos plus every other stop token as llama.cpp's end-of-turn / end-of-message ids (both end generation)."""
    others = [token for token in family.stop_token_ids(tokenizer) if token != eos]
    writer.add_eos_token_id(eos)
    if others:
        writer.add_eot_token_id(others[0])
    if len(others) > 1:
        writer.add_eom_token_id(others[1])
    if len(others) > 2:
        raise WenzhenError(
            f"the model has {len(others) + 1} stop tokens, but GGUF can name only three (eos, eot, eom)"
        )


# --- Llama-family models (Llama, SmolLM2, ...): byte-level BPE tokenizers --------------------------------------


#: llama.cpp's pre-tokenizer names for the pre-tokenizer pipelines of tokenizer.json that it reproduces.
PRE_TOKENIZERS: dict[str, str] = {
    "Digits+ByteLevel": "smollm",
    "ByteLevel": "gpt-2",
}


def pre_tokenizer_kind(pre: dict[str, Any] | None) -> str:
    """A short signature of a tokenizer.json pre-tokenizer, e.g. `Digits+ByteLevel`."""
    if not pre:
        return "none"
    if pre.get("type") == "Sequence":
        return "+".join(pre_tokenizer_kind(step) for step in pre.get("pretokenizers", []))
    if pre.get("type") == "Digits" and not pre.get("individual_digits"):
        return "DigitGroups"
    if pre.get("type") == "ByteLevel" and not pre.get("use_regex", True):
        return "ByteLevelNoRegex"
    return str(pre.get("type"))


class LlamaArchitecture(GGUFArchitecture):
    """llama.cpp's `llama`: q/k rows permuted for its rotary layout, byte-level BPE vocabulary."""

    name = "llama"
    transformers_reads = True

    def check(self, config: PretrainedConfig) -> None:
        """Plain rotary only, no MLP bias."""
        rope = dict(getattr(config, "rope_parameters", None) or {})
        if rope.get("rope_type", "default") != "default":
            raise WenzhenError(
                f"this model uses {rope['rope_type']!r} rotary scaling, which the GGUF export does not write yet; "
                "use llama.cpp's convert_hf_to_gguf.py on the merged directory"
            )
        if getattr(config, "mlp_bias", False):
            raise WenzhenError("this Llama model has MLP biases, which llama.cpp's llama architecture lacks")

    def write_hyperparameters(self, writer: gguf.GGUFWriter, config: PretrainedConfig) -> None:
        """The keys llama.cpp's converter writes for LlamaForCausalLM."""
        head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
        rope = dict(getattr(config, "rope_parameters", None) or {})
        write_shape(writer, config, head_dim)
        writer.add_rope_dimension_count(head_dim)
        writer.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
        writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
        writer.add_vocab_size(int(config.vocab_size))

    @staticmethod
    def _permute(weight: torch.Tensor, heads: int) -> torch.Tensor:
        """transformers' rotate-half rows -> llama.cpp's interleaved pairs (what its converter does)."""
        return (
            weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
            .swapaxes(1, 2)
            .reshape(weight.shape)
        )

    @staticmethod
    def _unpermute(weight: torch.Tensor, heads: int) -> torch.Tensor:
        return (
            weight.reshape(heads, weight.shape[0] // heads // 2, 2, *weight.shape[1:])
            .swapaxes(1, 2)
            .reshape(weight.shape)
        )

    def _heads(self, name: str, config: PretrainedConfig) -> int | None:
        if ".self_attn.q_proj." in name or ".attn_q." in name:
            return int(config.num_attention_heads)
        if ".self_attn.k_proj." in name or ".attn_k." in name:
            return int(config.num_key_value_heads)
        return None

    def gguf_tensors(self, tensors: Tensors, config: PretrainedConfig) -> Tensors:
        """Mapped names; q/k permuted; a tied lm_head left out (llama.cpp reuses the embedding)."""
        names = name_map(gguf.MODEL_ARCH.LLAMA, config)
        for name, tensor in tensors:
            if name == "lm_head.weight" and config.tie_word_embeddings:
                continue
            heads = self._heads(name, config)
            yield gguf_name(names, name), self._permute(tensor, heads) if heads else tensor

    def native_tensors(self, tensors: Tensors, config: PretrainedConfig) -> Tensors:
        """GGUF names back to transformers ones, q/k rows un-permuted."""
        names = name_map(gguf.MODEL_ARCH.LLAMA, config)
        inverse = {}
        for layer in range(int(config.num_hidden_layers)):
            for native in (
                "input_layernorm",
                "post_attention_layernorm",
                "self_attn.q_proj",
                "self_attn.k_proj",
                "self_attn.v_proj",
                "self_attn.o_proj",
                "mlp.gate_proj",
                "mlp.up_proj",
                "mlp.down_proj",
            ):
                inverse[gguf_name(names, f"model.layers.{layer}.{native}")] = f"model.layers.{layer}.{native}"
        inverse |= {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
        for name, tensor in tensors:
            base, _, suffix = name.rpartition(".")
            native = f"{inverse[base]}.{suffix}"
            heads = self._heads(name, config)
            yield native, self._unpermute(tensor, heads) if heads else tensor

    def write_vocabulary(
        self,
        writer: gguf.GGUFWriter,
        tokenizer: PreTrainedTokenizerBase,
        model_dir: Path,
        config: PretrainedConfig,
    ) -> None:
        """Byte-level BPE (llama.cpp's `gpt2` model) from tokenizer.json: tokens, types, merges, pre-tokenizer."""
        file = model_dir / "tokenizer.json"
        if not file.is_file():
            raise WenzhenError(
                f"{model_dir} has no tokenizer.json; the GGUF export writes byte-level BPE tokenizers only"
            )
        backend = json.loads(file.read_text(encoding="utf-8"))
        if (
            backend.get("model", {}).get("type") != "BPE"
            or backend.get("decoder", {}).get("type") != "ByteLevel"
        ):
            raise WenzhenError(
                f"the tokenizer in {model_dir} is not byte-level BPE; the GGUF export supports byte-level BPE "
                "Llama-family tokenizers and ChatGLM3 only"
            )
        kind = pre_tokenizer_kind(backend.get("pre_tokenizer"))
        if kind not in PRE_TOKENIZERS:
            raise WenzhenError(
                f"the tokenizer in {model_dir} splits text with a {kind} pre-tokenizer that wenzhen does not know "
                "llama.cpp's name for; use llama.cpp's convert_hf_to_gguf.py on the merged directory"
            )
        vocab_size = int(config.vocab_size)
        by_id = {index: token for token, index in tokenizer.get_vocab().items()}
        added = {token.content: token.special for token in tokenizer.added_tokens_decoder.values()}
        tokens, types = [], []
        for index in range(vocab_size):
            token = by_id.get(index)
            if token is None:
                tokens.append(f"[PAD{index}]")
                types.append(gguf.TokenType.UNUSED)
            elif token in added:
                tokens.append(token)
                types.append(gguf.TokenType.CONTROL if added[token] else gguf.TokenType.USER_DEFINED)
            else:
                tokens.append(token)
                types.append(gguf.TokenType.NORMAL)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(PRE_TOKENIZERS[kind])
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        merges = backend["model"].get("merges", [])
        writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
        for setter, token_id in (
            (writer.add_bos_token_id, tokenizer.bos_token_id),
            (writer.add_unk_token_id, tokenizer.unk_token_id),
            (writer.add_pad_token_id, tokenizer.pad_token_id),
        ):
            if token_id is not None:
                setter(int(token_id))
        writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))

    def chat_template(self, tokenizer: PreTrainedTokenizerBase) -> str:
        """The model's own template (see docs/export.md on text that spells special tokens)."""
        return str(tokenizer.chat_template)


GGUF_ARCHITECTURES.add(LlamaArchitecture.name, LlamaArchitecture())


# --- ChatGLM3: llama.cpp's `chatglm` -----------------------------------------------------------------------------

#: ChatGLM3's chat format for llama.cpp's tokenizer, which prefixes `▁` to the text after every special token: a
#: turn is `<|role|>{metadata}\n {content}`, which it encodes as the official `<|role|>` + ids("\n") + ids(content).
#: Message text has every command-token spelling broken by a zero-width space (U+200B), so typed text never becomes
#: a control token (llama.cpp matches them anywhere in the text); such text is then encoded slightly differently
#: from transformers, where the spelling is kept and split instead (docs/export.md).
_ZWSP = "\u200b"
_DEFUSE = (
    "| replace('<|', '<" + _ZWSP + "|') | replace('[', '[" + _ZWSP + "')"
    " | replace('sop', 's" + _ZWSP + "op') | replace('eop', 'e" + _ZWSP + "op')"
)
CHATGLM3_LLAMA_CPP_TEMPLATE = (
    "{%- set ns = namespace(tools_done=false) -%}"
    "[gMASK]sop"
    "{%- for message in messages -%}"
    "{%- set role = 'observation' if message['role'] in ('tool', 'observation') else message['role'] -%}"
    "{%- set content = message['content'] or '' -%}"
    "{%- if role == 'system' and not ns.tools_done and (message.get('tools') or tools) -%}"
    "{%- set content = content + '\n' + ((message.get('tools') or tools) | tojson(indent=4)) -%}"
    "{%- set ns.tools_done = true -%}"
    "{%- endif -%}"
    "<|{{ role }}|>{{ (message.get('metadata') or '') " + _DEFUSE + " }}{{ '\\n' }}"
    "{%- if content -%}{{ ' ' }}{{ content " + _DEFUSE + " }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)

_QKV = ("q_proj", "k_proj", "v_proj")


class ChatGLMArchitecture(GGUFArchitecture):
    """llama.cpp's `chatglm` (ChatGLM3): fused qkv with bias, fused gate/up, half-rotary, SentencePiece vocab."""

    name = "chatglm"

    def write_hyperparameters(self, writer: gguf.GGUFWriter, config: PretrainedConfig) -> None:
        """The keys llama.cpp's converter writes for ChatGLMModel."""
        head_dim = int(config.head_dim)
        rope = dict(config.rope_parameters or {})
        write_shape(writer, config, head_dim)
        writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
        writer.add_rope_dimension_count(int(head_dim * float(rope.get("partial_rotary_factor", 0.5))))
        writer.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
        writer.add_add_bos_token(False)

    def gguf_tensors(self, tensors: Tensors, config: PretrainedConfig) -> Tensors:
        """q/k/v of a layer wait for each other and are fused (in that row order, as the official layout)."""
        names = name_map(gguf.MODEL_ARCH.CHATGLM, config)
        held: dict[str, torch.Tensor] = {}
        for name, tensor in tensors:
            part = next((p for p in _QKV if f".self_attn.{p}." in name), None)
            if part is None:
                yield gguf_name(names, self._official_name(name)), tensor
                continue
            held[name] = tensor
            siblings = [name.replace(part, other) for other in _QKV]
            if all(sibling in held for sibling in siblings):
                fused = torch.cat([held.pop(sibling) for sibling in siblings], dim=0)
                layer = name.split(".")[2]
                suffix = name.rsplit(".", 1)[1]
                yield f"blk.{layer}.attn_qkv.{suffix}", fused
        if held:
            raise WenzhenError(f"the checkpoint lacks a sibling of {next(iter(held))}; it is incomplete")

    @staticmethod
    def _official_name(name: str) -> str:
        """Native Glm name -> the official name (without `transformer.`) that gguf's map knows."""
        renames = {
            "model.embed_tokens.weight": "embedding.word_embeddings.weight",
            "model.norm.weight": "encoder.final_layernorm.weight",
            "lm_head.weight": "output_layer.weight",
        }
        if name in renames:
            return renames[name]
        layer_renames = {
            "input_layernorm": "input_layernorm",
            "post_attention_layernorm": "post_attention_layernorm",
            "self_attn.o_proj": "self_attention.dense",
            "mlp.gate_up_proj": "mlp.dense_h_to_4h",
            "mlp.down_proj": "mlp.dense_4h_to_h",
        }
        _, _, layer, rest = name.split(".", 3)
        module, _, suffix = rest.rpartition(".")
        if module not in layer_renames:
            raise WenzhenError(f"unexpected tensor {name} in a ChatGLM3 model")
        return f"encoder.layers.{layer}.{layer_renames[module]}.{suffix}"

    def native_tensors(self, tensors: Tensors, config: PretrainedConfig) -> Tensors:
        """GGUF names back to native Glm ones; the fused qkv split again."""
        names = name_map(gguf.MODEL_ARCH.CHATGLM, config)
        inverse: dict[str, str] = {}
        native_names = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
        for layer in range(int(config.num_hidden_layers)):
            native_names += [
                f"model.layers.{layer}.{module}.weight"
                for module in (
                    "input_layernorm",
                    "post_attention_layernorm",
                    "self_attn.o_proj",
                    "mlp.gate_up_proj",
                    "mlp.down_proj",
                )
            ]
        for native in native_names:
            inverse[gguf_name(names, self._official_name(native)).rsplit(".", 1)[0]] = native.rsplit(".", 1)[
                0
            ]
        head_dim = int(config.head_dim)
        sizes = [int(config.num_attention_heads) * head_dim] + [
            int(config.num_key_value_heads) * head_dim
        ] * 2
        for name, tensor in tensors:
            base, _, suffix = name.rpartition(".")
            if base.endswith(".attn_qkv"):
                block = base.split(".")[1]
                for part, piece in zip(_QKV, torch.split(tensor, sizes, dim=0), strict=True):
                    yield f"model.layers.{block}.self_attn.{part}.{suffix}", piece
            else:
                yield f"{inverse[base]}.{suffix}", tensor

    def write_vocabulary(
        self,
        writer: gguf.GGUFWriter,
        tokenizer: PreTrainedTokenizerBase,
        model_dir: Path,
        config: PretrainedConfig,
    ) -> None:
        """SentencePiece pieces with their scores from tokenizer.model (llama.cpp's `llama` tokenizer model with
        the `chatglm-spm` pre-tokenizer), the nine command tokens as control tokens."""
        from sentencepiece import SentencePieceProcessor

        from wenzhen.export.formats import chatglm3_tokenizer_model
        from wenzhen.models import chatglm3

        processor = SentencePieceProcessor(model_file=str(chatglm3_tokenizer_model(model_dir)))
        pieces = processor.vocab_size()
        tokens: list[str] = []
        scores: list[float] = []
        types: list[int] = []
        for index in range(int(config.vocab_size)):
            if index < pieces:
                piece, score = processor.id_to_piece(index), processor.get_score(index)
                kind = (
                    gguf.TokenType.UNKNOWN
                    if processor.is_unknown(index)
                    else gguf.TokenType.CONTROL
                    if processor.is_control(index)
                    else gguf.TokenType.UNUSED
                    if processor.is_unused(index)
                    else gguf.TokenType.BYTE
                    if processor.is_byte(index)
                    else gguf.TokenType.NORMAL
                )
                # llama.cpp's converter names these three so; the pieces themselves are <unk>, <s>, </s>.
                piece = {0: "<unk>", 1: "<bos>", 2: "<eos>"}.get(index, piece)
            else:
                piece = tokenizer.convert_ids_to_tokens(index) or f"[PAD{index}]"
                score = 0.0
                kind = gguf.TokenType.CONTROL if index < pieces + 9 else gguf.TokenType.UNUSED
            tokens.append(piece)
            scores.append(score)
            types.append(kind)
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("chatglm-spm")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_unk_token_id(0)
        writer.add_pad_token_id(chatglm3.PAD_ID)

    def chat_template(self, tokenizer: PreTrainedTokenizerBase) -> str:
        """ChatGLM3's format for llama.cpp's tokenizer (see CHATGLM3_LLAMA_CPP_TEMPLATE)."""
        return CHATGLM3_LLAMA_CPP_TEMPLATE


GGUF_ARCHITECTURES.add(ChatGLMArchitecture.name, ChatGLMArchitecture())
