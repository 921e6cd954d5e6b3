"""An Ollama Modelfile beside an exported GGUF: the model's chat format as a Go template, every stop token, the
safety system prompt, and the not-a-diagnosis note.

Ollama formats prompts with a Go template of its own rather than the GGUF's Jinja template, so each chat format
wenzhen can export has its Go twin here (a registry keyed by the format's marker in the Jinja template). Go templates
in Ollama have no string replacement, so unlike the Jinja templates they cannot keep typed text from spelling
control tokens (docs/export.md says so).
"""

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from wenzhen import safety
from wenzhen.errors import WenzhenError
from wenzhen.io import write_text
from wenzhen.registry import Registry

if TYPE_CHECKING:
    from wenzhen.export.gguf import GGUFSource

MODELFILE = "Modelfile"


@dataclass(frozen=True)
class OllamaTemplate:
    """A chat format as Ollama's Go template, recognised by a marker of its Jinja template."""

    marker: str
    template: str


OLLAMA_TEMPLATES: Registry[OllamaTemplate] = Registry("Ollama chat format")
OLLAMA_TEMPLATES.add(
    "chatglm3",
    OllamaTemplate(
        marker="[gMASK]sop",
        # `\n ` after the role: llama.cpp's tokenizer then encodes the turn as the official ids (see
        # gguf_architectures.CHATGLM3_LLAMA_CPP_TEMPLATE).
        template=(
            "[gMASK]sop{{ range .Messages }}"
            '<|{{ if eq .Role "tool" }}observation{{ else }}{{ .Role }}{{ end }}|>\n {{ .Content }}'
            "{{ end }}<|assistant|>"
        ),
    ),
)
OLLAMA_TEMPLATES.add(
    "chatml",
    OllamaTemplate(
        marker="<|im_start|>",
        template=(
            "{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
        ),
    ),
)


def ollama_template(jinja_template: str) -> OllamaTemplate:
    """The Go twin of a model's chat format, or a clear refusal."""
    for _, candidate in OLLAMA_TEMPLATES.items():
        if candidate.marker in jinja_template:
            return candidate
    raise WenzhenError(
        f"wenzhen has no Ollama template for this model's chat format (it knows {', '.join(OLLAMA_TEMPLATES.names())}); "
        "the GGUF was written: write its Modelfile TEMPLATE by hand"
    )


def quoted(text: str) -> str:
    """A Modelfile triple-quoted value (the text itself must not close the quotes)."""
    if '"""' in text:
        raise WenzhenError('a Modelfile value cannot contain """')
    return f'"""{text}"""'


def render_modelfile(gguf_file: Path, template: str, stop_tokens: list[str]) -> str:
    """The Modelfile text."""
    lines = [
        f"# Exported by wenzhen for Ollama. {safety.DISCLAIMER}",
        f"FROM ./{gguf_file.name}",
        f"TEMPLATE {quoted(template)}",
        *(f'PARAMETER stop "{token}"' for token in stop_tokens),
        f"SYSTEM {quoted(safety.SYSTEM_PROMPT)}",
        f"LICENSE {quoted(safety.DISCLAIMER)}",
        "",
    ]
    return "\n".join(lines)


def write_modelfile(source: "GGUFSource", gguf_file: Path) -> Path:
    """Write `Modelfile` beside `gguf_file`; returns its path."""
    tokenizer = source.family.load_tokenizer(source.model_dir)
    template = ollama_template(source.architecture.chat_template(tokenizer)).template
    stops = [str(tokenizer.convert_ids_to_tokens(i)) for i in source.family.stop_token_ids(tokenizer)]
    file = gguf_file.with_name(MODELFILE)
    write_text(file, render_modelfile(gguf_file, template, stops))
    return file


def create_command(modelfile: Path, name: str) -> str:
    """The `ollama create` command line for a written Modelfile."""
    return f"cd {modelfile.parent} && ollama create {name} -f {modelfile.name}"
