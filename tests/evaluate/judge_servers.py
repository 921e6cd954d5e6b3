"""Real local HTTP servers for the judge tests.

`RuleJudge` is a small OpenAI-compatible chat server of the tests' own (stdlib `http.server`, a real socket): it
answers wenzhen's judge prompts with valid JSON computed from the request's content by fixed, documented rules, so
a test can predict every score from the answers that wenzhen saved, without a strong model. It is not a stand-in
for any part of wenzhen: wenzhen's client, cache, retries, validation and reports all run for real against it.
It can also fail on purpose (429 / 503 first, prose before JSON, always "A") to exercise the retry paths.

`wenzhen_api` runs wenzhen's own OpenAI-compatible server (`serve.api.create_app` on a `ChatEngine`) under uvicorn
on a free loopback port: the same server `wenzhen api` starts, without the CLI process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

RUBRIC = ("medical_accuracy", "safety", "next_steps", "no_unsupervised_dosing", "clarity")
CONSULT = ("proactive_questioning", "final_advice_accuracy", "safety")


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def rule_score(text: str, criterion: str) -> int:
    """The score RuleJudge gives `text` on `criterion`: 1-5 from a hash of both (any change moves it)."""
    return int(hashlib.sha256(f"{criterion}|{text}".encode()).hexdigest(), 16) % 5 + 1


def section(prompt: str, title: str) -> str:
    """The text under 【title】 in a judge prompt, up to the next 【 heading."""
    match = re.search(f"【{re.escape(title)}[^】]*】\n(.*?)(?:\n\n【|\n\n请|\n\n哪个|$)", prompt, re.S)
    return match.group(1) if match else ""


def longer_wins(first: str, second: str) -> str:
    """RuleJudge's pairwise rule: the longer answer is better; equal lengths tie."""
    return "A" if len(first) > len(second) else "B" if len(second) > len(first) else "tie"


class RuleJudge:
    """An OpenAI-compatible chat server with rule-based replies (see the module docstring)."""

    def __init__(self, fail_first: int = 0, prose_first: bool = False, always_a: bool = False) -> None:
        self.fail_first, self.prose_first, self.always_a = fail_first, prose_first, always_a
        self.requests: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        self._lock = threading.Lock()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                status, reply = owner.respond(body)
                data = json.dumps(reply, ensure_ascii=False).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                if status == 429:
                    self.send_header("retry-after", "0")
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)

    def __enter__(self) -> RuleJudge:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def respond(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """(status, JSON body) for one chat-completions request."""
        with self._lock:
            self.requests.append(body)
            number = len(self.requests)
        if number <= self.fail_first:
            status = 429 if number % 2 else 503
            self.statuses.append(status)
            return status, {"error": {"message": "busy", "type": "rate_limit_error"}}
        self.statuses.append(200)
        messages = body["messages"]
        prompt = next(m["content"] for m in messages if m["role"] == "user")
        correcting = messages[-1]["role"] == "user" and len(messages) > 2
        text = self.reply(prompt, correcting)
        usage = {"prompt_tokens": sum(len(m["content"]) for m in messages), "completion_tokens": len(text)}
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        return 200, {"object": "chat.completion", "choices": [choice], "usage": usage}

    def reply(self, prompt: str, correcting: bool) -> str:
        """The judge's text: prose on a first try when `prose_first`, else JSON by the rules."""
        if self.prose_first and not correcting:
            return "这个回答还可以，我觉得挺好。"
        if "【回答 A】" in prompt:
            better = (
                "A" if self.always_a else longer_wins(section(prompt, "回答 A"), section(prompt, "回答 B"))
            )
            return json.dumps({"better": better, "reason": "规则：较长者胜"}, ensure_ascii=False)
        if "【问诊记录】" in prompt:
            transcript = section(prompt, "问诊记录")
            verdict = {name: {"score": rule_score(transcript, name), "reason": "规则"} for name in CONSULT}
            return "```json\n" + json.dumps(verdict, ensure_ascii=False) + "\n```"
        answer = section(prompt, "待评价的回答")
        verdict = {name: {"score": rule_score(answer, name), "reason": "规则"} for name in RUBRIC}
        return "评分如下：" + json.dumps(verdict, ensure_ascii=False) + "\n以上仅供参考。"


@contextlib.contextmanager
def wenzhen_api(model: Path, model_id: str, max_tokens: int = 8) -> Iterator[str]:
    """wenzhen's API on `model` under uvicorn on a free port; yields the /v1 base URL."""
    import uvicorn

    from wenzhen.generation import ChatEngine
    from wenzhen.models import load_model
    from wenzhen.serve.api import create_app
    from wenzhen.serve.config import ServingConfig

    config = ServingConfig.model_validate(
        {
            "limits": {"default_max_tokens": max_tokens, "max_concurrent": 1, "max_queue": 16},
            "generation": {"temperature": 0.0},
        }
    )
    app = create_app(ChatEngine(load_model(model, device="cpu")), config, model_id, api_key=None)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("wenzhen api did not start")
        time.sleep(0.05)
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json()["model"] == model_id
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
