"""ChatGLM3's tokenizer as a plain `tokenizers` fast tokenizer: exact official ids, no remote code.

The official `ChatGLMTokenizer` is remote code wrapping SentencePiece (BPE, byte fallback, dummy prefix, identity
normaliser) plus nine command tokens appended after the 64,789 pieces. We rebuild the same BPE from the
SentencePiece model with transformers' own extractor, so the result saves and reloads with plain `AutoTokenizer`
and serves in vLLM/SGLang.

One wrinkle needs a hand-written rule: the official chat prompt encodes each turn as `<|role|>` + encode("\\n") +
encode(content), i.e. the content gets its *own* dummy prefix `▁`. A chat template is rendered to one string, so
the template puts the private-use marker U+E000 between the role line and the content; the normaliser turns the
marker into a segment break followed by `▁`, and the pre-tokeniser removes it. Plain text never contains it, so
plain encoding is plain SentencePiece.

The template also keeps message text from becoming control tokens (a user typing `<|system|>` must not open a
system turn, issue #14): it puts a second private-use marker, U+E001, inside every command-token spelling in the
text (`<|` -> `<` U+E001 `|`, `[` -> `[` U+E001, `sop` -> `s` U+E001 `op`, `eop` likewise). The command tokens are
matched on the raw text, so the broken spelling is not one; the normaliser then deletes U+E001 before anything else,
so the text is encoded exactly as the engine encodes it (special tokens split): the same ids, no forged turn.
"""

import functools
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import SentencePieceExtractor

from wenzhen.errors import WenzhenError

CONTENT_MARKER = "\ue000"
DEFUSE_MARKER = "\ue001"
SPECIAL_TOKENS = ["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop"]
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]
# Words that also occur in ordinary text are only matched as whole words.
WORDLIKE_SPECIALS = {"sop", "eop"}
TOOLS_PREAMBLE = "Answer the following questions as best as you can. You have access to the following tools:"

# Message text (content, metadata, tools) with every command-token spelling broken by DEFUSE_MARKER.
_DEFUSE = (
    "| replace('<|', '<" + DEFUSE_MARKER + "|') | replace('[', '[" + DEFUSE_MARKER + "')"
    " | replace('sop', 's" + DEFUSE_MARKER + "op') | replace('eop', 'e" + DEFUSE_MARKER + "op')"
)

# Renders exactly the official `build_chat_input` ids: "[gMASK]sop", then per turn `<|role|>{metadata}\n` and the
# content after the marker, tools appended to the system turn as 4-space-indented JSON, then `<|assistant|>`.
CHAT_TEMPLATE = (
    "{%- set ns = namespace(tools_done=false) -%}"
    "[gMASK]sop"
    "{%- if tools and (not messages or messages[0]['role'] != 'system') -%}"
    "<|system|>\n"
    + CONTENT_MARKER
    + "{{ '"
    + TOOLS_PREAMBLE
    + "' }}\n{{ tools | tojson(indent=4) "
    + _DEFUSE
    + " }}"
    "{%- set ns.tools_done = true -%}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- set role = 'observation' if message['role'] in ('tool', 'observation') else message['role'] -%}"
    "{%- set content = (message['content'] or '') | replace('" + CONTENT_MARKER + "', '') -%}"
    "{%- if role == 'system' and not ns.tools_done and (message.get('tools') or tools) -%}"
    "{%- set content = content + '\n' + ((message.get('tools') or tools) | tojson(indent=4)) -%}"
    "{%- set ns.tools_done = true -%}"
    "{%- endif -%}"
    "<|{{ role }}|>{{ (message.get('metadata') or '') " + _DEFUSE + " }}{{ '\\n' }}"
    "{%- if content -%}" + CONTENT_MARKER + "{{ content " + _DEFUSE + " }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)


def _backend(sentencepiece_model: Path) -> Tokenizer:
    """The BPE pipeline equivalent to the official SentencePiece tokenizer, with its command tokens."""
    extracted = SentencePieceExtractor(str(sentencepiece_model)).extract(BPE)
    vocab, merges = extracted["vocab"], extracted["merges"]
    tokenizer = Tokenizer(
        BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    )
    tokenizer.normalizer = normalizers.Sequence(
        [
            normalizers.Replace(DEFUSE_MARKER, ""),
            normalizers.Replace(" ", "▁"),
            normalizers.Prepend("▁"),
            normalizers.Replace(CONTENT_MARKER, CONTENT_MARKER + "▁"),
        ]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Split(CONTENT_MARKER, behavior="removed")
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    specials = [
        AddedToken(token, special=True, normalized=False, single_word=token in WORDLIKE_SPECIALS)
        for token in SPECIAL_TOKENS + ROLE_TOKENS
    ]
    first_id = len(vocab)
    tokenizer.add_special_tokens(specials)
    if tokenizer.token_to_id("[MASK]") != first_id:
        raise WenzhenError(
            f"{sentencepiece_model} has unexpected pieces; it is not a ChatGLM3 tokenizer.model"
        )
    # `tokenizer(text)` in the official code prefixes [gMASK] sop; keep that for add_special_tokens=True.
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[gMASK] sop $A",
        pair="[gMASK] sop $A $B",
        special_tokens=[("[gMASK]", first_id + 1), ("sop", first_id + 3)],
    )
    return tokenizer


@functools.lru_cache(maxsize=4)
def _backend_json(path: Path, size: int, mtime_ns: int) -> str:
    """The converted pipeline as JSON, cached per file version: converting takes ~2 s, parsing the JSON ~0.1 s,
    and every caller still gets its own mutable tokenizer."""
    return str(_backend(path).to_str())


def build_chatglm3_tokenizer(
    sentencepiece_model: str | Path, model_max_length: int = 8192
) -> PreTrainedTokenizerFast:
    """Convert ChatGLM3's `tokenizer.model` into a fast tokenizer with the official chat template."""
    path = Path(sentencepiece_model)
    if not path.is_file():
        raise WenzhenError(f"{path} is missing; a ChatGLM3 model directory needs its tokenizer.model")
    stat = path.stat()
    backend = Tokenizer.from_str(_backend_json(path.resolve(), stat.st_size, stat.st_mtime_ns))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<unk>",
        padding_side="left",
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
