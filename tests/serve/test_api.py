"""`wenzhen api` end to end: the official `openai` client and raw HTTP against a real uvicorn on 127.0.0.1."""

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from conftest import free_port, running_server
from wenzhen import safety
from wenzhen.serve.tools import tool_schemas

API_KEY = "test-key-123"
MODEL_ID = "tiny-medical"
MAX_TOKENS = 300


def _start_api(model: Path, workdir: Path) -> Any:
    """A running API with a key, greedy decoding and small limits (a context manager yielding its URL)."""
    config = workdir / "api.yaml"
    settings = {
        "limits": {"max_tokens": MAX_TOKENS, "default_max_tokens": 8, "max_concurrent": 1, "max_queue": 4},
        "generation": {"temperature": 0.0},
    }
    config.write_text(yaml.safe_dump(settings), encoding="utf-8")
    port = free_port()
    args = ["api", str(model), "--port", str(port), "--model-name", MODEL_ID, "--config", str(config)]
    return running_server(args, f"http://127.0.0.1:{port}/health", env={"WENZHEN_API_KEY": API_KEY})


@pytest.fixture(scope="module")
def api_server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The API process on the shared tiny ChatGLM3 (random weights: fluent nonsense, full-length answers)."""
    with _start_api(tiny_model, tmp_path_factory.mktemp("api")) as server:
        yield server


@pytest.fixture(scope="module")
def api(api_server: Any) -> str:
    return str(api_server.base_url)


def test_server_says_where_it_listens(api_server: Any) -> None:
    printed = Path(api_server.log_path).read_text(encoding="utf-8")
    assert f"wenzhen api: serving '{MODEL_ID}' on {api_server.base_url}/v1 (bearer key required)" in printed


def test_server_warms_up_before_it_reports_ready(api_server: Any) -> None:
    printed = Path(api_server.log_path).read_text(encoding="utf-8")
    warmed = printed.index("warmed up in ")
    assert "warming up: a first request" in printed[:warmed]
    assert warmed < printed.index("wenzhen api: serving")


def test_the_answer_budget_shrinks_to_fit_the_context(api: str) -> None:
    body = {"model": MODEL_ID, "messages": _user("头痛" * 100), "max_tokens": MAX_TOKENS}
    response = _post(api, body)
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    context = 512  # the tiny model's
    assert usage["prompt_tokens"] + MAX_TOKENS > context
    assert usage["prompt_tokens"] + usage["completion_tokens"] <= context


@pytest.fixture(scope="module")
def tool_client(tool_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    """A client of the API on the tiny ChatGLM3 trained to call lookup_drug."""
    with _start_api(tool_model, tmp_path_factory.mktemp("tool-api")) as server:
        yield openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=API_KEY, max_retries=0, timeout=60)


@pytest.fixture
def client(api: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{api}/v1", api_key=API_KEY, max_retries=0, timeout=60)


def _post(api: str, body: Any, key: str | None = API_KEY, raw: bytes | None = None) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    content = raw if raw is not None else json.dumps(body).encode()
    return httpx.post(f"{api}/v1/chat/completions", content=content, headers=headers, timeout=60)


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_lists_the_served_model(client: openai.OpenAI) -> None:
    assert [model.id for model in client.models.list()] == [MODEL_ID]


def test_completion_has_disclaimer_and_usage(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=MODEL_ID, messages=_user("感冒了怎么办"), max_tokens=6)  # type: ignore[arg-type]
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content is not None and choice.message.content.endswith(safety.DISCLAIMER)
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage is not None and reply.usage.prompt_tokens > 0
    assert 0 < reply.usage.completion_tokens <= 6
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_streaming_chunks_end_with_usage_and_done(client: openai.OpenAI, api: str) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL_ID,
            messages=_user("头痛怎么缓解"),  # type: ignore[arg-type]
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.endswith(safety.DISCLAIMER) and len(text) > len(safety.DISCLAIMER)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    raw = _post(api, {"model": MODEL_ID, "messages": _user("你好"), "stream": True, "max_tokens": 3})
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.text.rstrip().endswith("data: [DONE]")


@pytest.mark.parametrize("stream", [False, True])
def test_red_flag_answer_starts_with_emergency_guidance(client: openai.OpenAI, stream: bool) -> None:
    messages = _user("我爸突然胸口剧痛，满头大汗")
    if stream:
        parts = client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=4, stream=True)  # type: ignore[arg-type]
        text = "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
    else:
        reply = client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=4)  # type: ignore[arg-type]
        text = reply.choices[0].message.content or ""
    assert text.startswith("⚠️") and "120" in text.split("\n\n")[0]


def test_tool_call_round_trip(tool_client: openai.OpenAI) -> None:
    client = tool_client
    tools = [{"type": "function", "function": schema} for schema in tool_schemas()]
    messages: list[Any] = _user("胃溃疡能吃布洛芬吗")
    reply = client.chat.completions.create(model=MODEL_ID, messages=messages, tools=tools, max_tokens=32)  # type: ignore[arg-type]
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.function.name == "lookup_drug"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"name": "布洛芬"}  # type: ignore[union-attr]
    streamed = list(
        client.chat.completions.create(
            model=MODEL_ID, messages=messages, tools=tools, max_tokens=32, stream=True
        )
    )  # type: ignore[arg-type]
    deltas = [c.choices[0].delta for c in streamed if c.choices and c.choices[0].delta.tool_calls]
    assert deltas[0].tool_calls[0].function.name == "lookup_drug"  # type: ignore[index, union-attr]
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"found": True}, ensure_ascii=False)},
    ]
    follow_up = client.chat.completions.create(model=MODEL_ID, messages=messages, tools=tools, max_tokens=8)  # type: ignore[arg-type]
    assert follow_up.choices[0].finish_reason in ("tool_calls", "stop", "length")


@pytest.mark.parametrize(
    ("body", "raw", "key", "status", "code"),
    [
        (None, b'{"model": "tiny-medical", "messages": [', API_KEY, 400, "invalid_json"),
        ({"model": MODEL_ID, "messages": "hello"}, None, API_KEY, 400, "invalid_value"),
        (
            {"model": MODEL_ID, "messages": _user("hi"), "temperature": "hot"},
            None,
            API_KEY,
            400,
            "invalid_value",
        ),
        (
            {"model": MODEL_ID, "messages": [{"role": "doctor", "content": "x"}]},
            None,
            API_KEY,
            400,
            "invalid_value",
        ),
        ({"model": MODEL_ID, "messages": []}, None, API_KEY, 400, "invalid_value"),
        ({"model": MODEL_ID, "messages": _user("hi"), "n": 2}, None, API_KEY, 400, "invalid_value"),
        ({"model": MODEL_ID, "messages": _user("hi")}, None, None, 401, "invalid_api_key"),
        ({"model": MODEL_ID, "messages": _user("hi")}, None, "wrong-key", 401, "invalid_api_key"),
        ({"model": "gpt-4", "messages": _user("hi")}, None, API_KEY, 404, "model_not_found"),
        (
            {"model": MODEL_ID, "messages": _user("hi"), "max_tokens": MAX_TOKENS + 1},
            None,
            API_KEY,
            400,
            "invalid_value",
        ),
        ({"model": MODEL_ID, "messages": _user("头痛" * 400)}, None, API_KEY, 400, "context_length_exceeded"),
        (
            None,
            b'{"model": "tiny-medical", "messages": [], "pad": "' + b"x" * 1_100_000 + b'"}',
            API_KEY,
            413,
            "body_too_large",
        ),
    ],
)
def test_bad_requests_get_openai_shaped_4xx_and_the_server_keeps_serving(
    api: str, body: Any, raw: bytes | None, key: str | None, status: int, code: str
) -> None:
    response = _post(api, body, key=key, raw=raw)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"] and error["type"]
    assert httpx.get(f"{api}/health", timeout=10).json()["status"] == "ok"
    assert _post(api, {"model": MODEL_ID, "messages": _user("你好"), "max_tokens": 2}).status_code == 200


def test_models_endpoint_requires_the_key(api: str) -> None:
    assert httpx.get(f"{api}/v1/models", timeout=10).status_code == 401
    assert (
        httpx.get(f"{api}/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10).status_code
        == 200
    )


def _wait_idle(api: str, timeout: float) -> float:
    start = time.monotonic()
    while httpx.get(f"{api}/health", timeout=10).json()["active"]:
        if time.monotonic() - start > timeout:
            pytest.fail(f"generation still running {timeout}s after the client left")
        time.sleep(0.05)
    return time.monotonic() - start


def test_client_disconnect_stops_its_generation(api: str) -> None:
    body = {"model": MODEL_ID, "messages": _user("讲讲高血压"), "max_tokens": MAX_TOKENS, "stream": True}
    started = time.monotonic()
    full = _post(api, {**body, "stream": False})
    full_seconds = time.monotonic() - started
    assert full.json()["usage"]["completion_tokens"] == MAX_TOKENS, (
        "the test needs a generation that runs to the limit"
    )
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.stream(
        "POST", f"{api}/v1/chat/completions", json=body, headers=headers, timeout=60
    ) as response:
        next(response.iter_lines())  # the first chunk has arrived: generation is under way
    idle_after = _wait_idle(api, timeout=full_seconds)
    print(f"\nfull generation {full_seconds:.2f}s; idle {idle_after:.2f}s after the streaming client left")
    assert idle_after < full_seconds / 2
    # A non-streaming client that gives up (its timeout closes the connection) stops its generation too.
    started = time.monotonic()
    with pytest.raises(httpx.TimeoutException):
        httpx.post(
            f"{api}/v1/chat/completions",
            json={**body, "stream": False},
            headers=headers,
            timeout=full_seconds / 4,
        )
    _wait_idle(api, timeout=full_seconds)
    gone_after = time.monotonic() - started
    print(
        f"non-streaming client left after {full_seconds / 4:.2f}s; server idle {gone_after:.2f}s after the start"
    )
    assert gone_after < full_seconds * 0.75
