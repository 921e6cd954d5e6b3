"""The exported GGUF in llama.cpp itself (llama-cpp-python in `.venv-llama`, built by `make llama`): the same 32
greedy tokens as transformers on the source model for five prompts (f16), and the GGUF's chat template gives the
ids wenzhen's own chat formatter gives."""

import json
import subprocess
from pathlib import Path

import pytest
import torch

from wenzhen.export.gguf import export_gguf
from wenzhen.models import load_model

REPO_ROOT = Path(__file__).resolve().parents[2]
LLAMA_PYTHON = REPO_ROOT / ".venv-llama" / "bin" / "python"
RUNNER = Path(__file__).with_name("llama_cpp_runner.py")
NEW_TOKENS = 32
CONVERSATIONS = [
    [{"role": "user", "content": "我最近总是头痛，晚上也睡不好，应该怎么办？"}],
    [
        {"role": "system", "content": "你是一名耐心的全科医生。"},
        {"role": "user", "content": "孩子发烧38.5度，精神还可以，需要马上去医院吗？"},
    ],
    [{"role": "user", "content": "高血压患者平时饮食要注意什么？"}],
    [
        {"role": "user", "content": "咳嗽一周了"},
        {"role": "assistant", "content": "有没有发烧或者痰？"},
        {"role": "user", "content": "有黄痰，不发烧。"},
    ],
    [{"role": "user", "content": "胃疼 after eating, 吃完饭就疼，是胃炎吗？"}],
]


def llama_cpp_available() -> bool:
    if not LLAMA_PYTHON.exists():
        return False
    return subprocess.run([str(LLAMA_PYTHON), "-c", "import llama_cpp"], capture_output=True).returncode == 0


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not llama_cpp_available(), reason="llama-cpp-python is not built in .venv-llama; run `make llama`"
    ),
]


def run_llama_cpp(gguf_file: Path, prompts: list[list[int]]) -> dict:
    job = {
        "gguf": str(gguf_file),
        "prompts": prompts,
        "conversations": CONVERSATIONS,
        "new_tokens": NEW_TOKENS,
    }
    done = subprocess.run(
        [str(LLAMA_PYTHON), str(RUNNER)], input=json.dumps(job), capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@torch.inference_mode()
def transformers_greedy(model: torch.nn.Module, prompt: list[int]) -> list[int]:
    """Argmax decoding with the KV cache, never stopping early (llama.cpp's side does not stop either)."""
    output = model(torch.tensor([prompt]), use_cache=True)
    tokens: list[int] = []
    for _ in range(NEW_TOKENS):
        tokens.append(int(output.logits[0, -1].argmax()))
        output = model(torch.tensor([[tokens[-1]]]), past_key_values=output.past_key_values, use_cache=True)
    return tokens


def check_in_llama_cpp(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "model-f16.gguf"
    export_gguf(model_dir, out, quant="f16", verify=False)
    loaded = load_model(model_dir, dtype="fp32", device="cpu")
    prompts = [loaded.family.encode_prompt(loaded.tokenizer, messages) for messages in CONVERSATIONS]
    answer = run_llama_cpp(out, prompts)
    assert answer["template_ids"] == prompts
    assert answer["greedy"] == [transformers_greedy(loaded.model, prompt) for prompt in prompts]


def test_tiny_chatglm3_in_llama_cpp(chatglm3_dir, tmp_path):
    check_in_llama_cpp(chatglm3_dir / "tiny-chatglm3", tmp_path)


def test_demo_model_in_llama_cpp(tmp_path):
    from wenzhen.models.embedded import embedded_model_dir

    check_in_llama_cpp(embedded_model_dir(), tmp_path)
