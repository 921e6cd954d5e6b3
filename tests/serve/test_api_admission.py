"""The API refuses hostile requests cheaply and with 4xx: admission limits, strict types, access without a key.

In-process (FastAPI's test client on the real app, engine and tiny ChatGLM3), so each case is fast; the
end-to-end server tests in test_api.py cover the same app over a real socket.
"""

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from wenzhen.generation import ChatEngine
from wenzhen.models import load_model
from wenzhen.serve.api import create_app, nesting_depth
from wenzhen.serve.config import ServingConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from api_admission import MODEL_ID, nested_tools_request

URL = "/v1/chat/completions"


def _nest(level: str, depth: int) -> str:
    text = '{"type": "string"}'
    for _ in range(depth):
        text = level % text
    return text


@pytest.fixture(scope="module")
def engine(chatglm3_dir: Path) -> ChatEngine:
    return ChatEngine(load_model(chatglm3_dir / "tiny-chatglm3", dtype="float32", device="cpu"))


def _client(engine: ChatEngine, settings: dict[str, Any] | None = None, key: str | None = None) -> TestClient:
    config = ServingConfig.model_validate(
        {"limits": {"default_max_tokens": 2}, "generation": {"temperature": 0.0}, **(settings or {})}
    )
    return TestClient(create_app(engine, config, MODEL_ID, key), base_url="http://127.0.0.1:8000")


@pytest.fixture(scope="module")
def client(engine: ChatEngine) -> Iterator[TestClient]:
    with _client(engine) as test_client:
        yield test_client


def _user(text: str = "你好") -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_the_amplification_request_is_refused_before_tokenisation(client: TestClient) -> None:
    body = json.dumps(nested_tools_request())
    assert 36_000 < len(body) < 40_000
    response = client.post(URL, content=body, headers={"content-type": "application/json"})
    # Before: 200 after ~25 s and 2.7 GB (the cost is measured by benchmarks/api_admission.py).
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_json"


@pytest.mark.parametrize(
    ("extra", "param", "message"),
    [
        (
            {"tools": [{"type": "function", "function": {"name": f"t{i}"}} for i in range(40)]},
            "tools",
            "40 tools",
        ),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": json.loads(
                                _nest('{"type": "object", "properties": {"a": %s}}', 20)
                            ),
                        },
                    }
                ]
            },
            "tools",
            "nested",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "description": "x" * 40_000}}]},
            "tools",
            "bytes",
        ),
        ({"messages": _user() * 101}, "messages", "101 messages"),
    ],
)
def test_admission_limits_are_checked_on_the_parsed_request(
    client: TestClient, extra: dict[str, Any], param: str, message: str
) -> None:
    response = client.post(URL, json={"model": MODEL_ID, "messages": _user(), **extra})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and message in error["message"] and error["code"] == "limit_exceeded"


def test_limits_come_from_the_config(engine: ChatEngine) -> None:
    tools = [{"type": "function", "function": {"name": f"t{i}"}} for i in range(3)]
    with _client(engine, {"limits": {"max_tools": 2, "default_max_tokens": 2}}) as small:
        assert (
            small.post(URL, json={"model": MODEL_ID, "messages": _user(), "tools": tools}).status_code == 400
        )
    with _client(engine, {"limits": {"max_tools": 3, "default_max_tokens": 2}}) as larger:
        assert (
            larger.post(URL, json={"model": MODEL_ID, "messages": _user(), "tools": tools}).status_code == 200
        )


def test_a_prompt_far_over_the_context_is_refused_without_tokenising(client: TestClient) -> None:
    service = client.app.state.service  # type: ignore[attr-defined]
    text = "头" * (2 * service.engine.max_context * service.longest_token + 1)
    response = client.post(URL, json={"model": MODEL_ID, "messages": _user(text)})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"
    assert "at least" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (
            b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "x": '
            + b"[" * 5000
            + b"]" * 5000
            + b"}",
            "invalid_json",
        ),
        (b'{"model": "tiny", "messages": [{"role": "user", "content": "\\ud800"}]}', "invalid_json"),
        (b'{"model": "tiny", "messages": [{"role": "user", "content": "\xff"}]}', "invalid_json"),
        (b"[1, 2]", "invalid_json"),
    ],
)
def test_malformed_bodies_are_400_not_500(client: TestClient, raw: bytes, code: str) -> None:
    # Before: deep nesting and a lone surrogate answered 500.
    response = client.post(URL, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == code


@pytest.mark.parametrize(
    "extra",
    [
        {"max_tokens": "8"},
        {"max_tokens": True},
        {"max_tokens": 8.0},
        {"stream": "yes"},
        {"stream": 1},
        {"temperature": "0.5"},
        {"seed": 2**64},
        {"seed": "1"},
    ],
)
def test_request_types_are_strict(client: TestClient, extra: dict[str, Any]) -> None:
    # Before: "8", true and "yes" were coerced and served; seed 2**64 answered 500.
    response = client.post(URL, json={"model": MODEL_ID, "messages": _user(), **extra})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == next(iter(extra))


def test_a_vanishing_temperature_decodes_greedily(client: TestClient) -> None:
    # Before: temperature 1e-45 divided the logits into inf/NaN and answered 500.
    tiny = client.post(
        URL, json={"model": MODEL_ID, "messages": _user(), "temperature": 1e-45, "max_tokens": 4}
    )
    greedy = client.post(
        URL, json={"model": MODEL_ID, "messages": _user(), "temperature": 0, "max_tokens": 4}
    )
    assert tiny.status_code == greedy.status_code == 200, tiny.text
    assert tiny.json()["choices"][0]["message"] == greedy.json()["choices"][0]["message"]
    assert (
        client.post(
            URL,
            json={
                "model": MODEL_ID,
                "messages": _user(),
                "seed": 2**64 - 1,
                "max_tokens": 2,
                "temperature": 1,
            },
        ).status_code
        == 200
    )


def test_nesting_depth_counts_objects_and_lists() -> None:
    assert [nesting_depth(v) for v in (1, {}, {"a": [1]}, [[{"b": {}}]])] == [0, 1, 2, 4]


# Access without a key: CSRF and DNS rebinding.
@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({"host": "evil.example"}, 403, "host_not_allowed"),
        ({"host": "evil.example:8000"}, 403, "host_not_allowed"),
        ({"origin": "https://evil.example"}, 403, "origin_not_allowed"),
        ({"content-type": "text/plain"}, 415, "unsupported_media_type"),
        ({"content-type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
    ],
)
def test_without_a_key_foreign_hosts_origins_and_simple_bodies_are_refused(
    client: TestClient, headers: dict[str, str], status: int, code: str
) -> None:
    # Before: all of these were served, so any web page the user opened could drive generations.
    body = json.dumps({"model": MODEL_ID, "messages": _user(), "max_tokens": 2})
    response = client.post(URL, content=body, headers={"content-type": "application/json", **headers})
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert client.get("/health", headers={"host": headers.get("host", "127.0.0.1")}).status_code == (
        403 if "host" in headers else 200
    )


@pytest.mark.parametrize("host", ["localhost:8000", "127.0.0.1:8000", "[::1]:8000"])
def test_without_a_key_local_requests_are_served(client: TestClient, host: str) -> None:
    response = client.post(
        URL, json={"model": MODEL_ID, "messages": _user(), "max_tokens": 2}, headers={"host": host}
    )
    assert response.status_code == 200, response.text


def test_configured_hosts_and_cors_origins_are_accepted(engine: ChatEngine) -> None:
    access = {"allowed_hosts": ["gpu-box"], "cors_origins": ["http://localhost:3000"]}
    with _client(engine, {"access": access}) as configured:
        body = {"model": MODEL_ID, "messages": _user(), "max_tokens": 2}
        assert configured.post(URL, json=body, headers={"host": "gpu-box:8000"}).status_code == 200
        response = configured.post(URL, json=body, headers={"origin": "http://localhost:3000"})
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "http://localhost:3000"
        preflight = configured.options(
            URL, headers={"origin": "http://localhost:3000", "access-control-request-method": "POST"}
        )
        assert preflight.status_code == 200


def test_with_a_key_the_key_decides(engine: ChatEngine) -> None:
    with _client(engine, key="k") as keyed:
        headers = {"host": "gpu-box", "authorization": "Bearer k"}
        body = {"model": MODEL_ID, "messages": _user(), "max_tokens": 2}
        assert keyed.post(URL, json=body, headers=headers).status_code == 200
        assert keyed.post(URL, json=body, headers={"host": "gpu-box"}).status_code == 401
        # No CORS unless configured: a browser on another site cannot read the answer.
        response = keyed.post(URL, json=body, headers={**headers, "origin": "https://evil.example"})
        assert "access-control-allow-origin" not in response.headers
