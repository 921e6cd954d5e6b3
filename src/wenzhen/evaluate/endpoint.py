"""Talking to an OpenAI-compatible chat endpoint (a judge or a simulated patient): retries, cache, cost, threads.

`EndpointClient.complete` posts to `{url}/chat/completions` with httpx and retries 429, 5xx and transport errors
with exponential backoff (honouring `Retry-After`). `ask` adds the on-disk `ResponseCache`, keyed by the endpoint's
model, the prompt version, the output-changing settings and the exact messages, so a rerun never pays twice; with a
pydantic schema it extracts the first JSON object of the reply, validates it, and on a malformed reply asks again
with the validation error, up to `attempts` times, before recording the failure (malformed replies are never
cached, so a later run retries them). Token cost comes from the responses' `usage` field.

We call the HTTP API directly rather than through the `openai` package: it is one POST, and httpx (already a
dependency of the server stack) gives us the status codes and headers the backoff needs.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx
from pydantic import BaseModel, Field, ValidationError

from wenzhen.config import StrictModel
from wenzhen.errors import WenzhenError
from wenzhen.evaluate.report import progress_bar
from wenzhen.io import write_json

T = TypeVar("T")
R = TypeVar("R")
S = TypeVar("S", bound=BaseModel)

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
MAX_BACKOFF_S = 60.0


class EndpointConfig(StrictModel):
    """One OpenAI-compatible chat endpoint and how to call it."""

    url: str = Field(description="base URL of the API, e.g. http://127.0.0.1:8000/v1")
    model: str = Field(description="the `model` sent with each request")
    api_key_env: str = Field(
        "WENZHEN_JUDGE_API_KEY", description="environment variable holding the bearer key; unset = none"
    )
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="sampling temperature (0 = greedy)")
    max_tokens: int = Field(512, ge=1, description="longest reply in tokens")
    concurrency: int = Field(4, ge=1, le=256, description="requests in flight at once")
    max_retries: int = Field(6, ge=0, description="retries of a 429 / 5xx / connection error")
    backoff_s: float = Field(1.0, ge=0.0, description="first retry delay; doubles on each retry")
    timeout_s: float = Field(300.0, gt=0.0, description="seconds to wait for one reply")

    def output_settings(self) -> dict[str, Any]:
        """The settings that change what the endpoint replies (part of the cache key)."""
        return {"temperature": self.temperature, "max_tokens": self.max_tokens}


class EndpointError(Exception):
    """The endpoint could not be reached or kept failing after every retry."""


@dataclass
class Completion:
    """One reply and what it cost."""

    text: str
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Usage:
    """What an endpoint was asked and what it cost, summed over a run (thread-safe)."""

    requests: int = 0
    cache_hits: int = 0
    retries: int = 0
    malformed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **amounts: int) -> None:
        """Add to the named counters."""
        with self._lock:
            for name, amount in amounts.items():
                setattr(self, name, getattr(self, name) + amount)

    def as_counts(self, prefix: str) -> dict[str, int]:
        """The counters as report counts, names prefixed (e.g. `judge_`)."""
        names = ("requests", "cache_hits", "retries", "malformed", "prompt_tokens", "completion_tokens")
        return {f"{prefix}{name}": getattr(self, name) for name in names}


def _retry_delay(response: httpx.Response | None, attempt: int, backoff_s: float) -> float:
    """Seconds before the next try: the server's Retry-After when it gives one, else exponential backoff."""
    if response is not None:
        header = response.headers.get("retry-after", "")
        try:
            return min(max(float(header), 0.0), MAX_BACKOFF_S)
        except ValueError:
            pass
    return min(backoff_s * 2**attempt, MAX_BACKOFF_S)


class EndpointClient:
    """A thread-safe client of one endpoint, counting its usage."""

    def __init__(self, config: EndpointConfig, sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = config
        self.usage = Usage()
        self._sleep = sleep
        key = os.environ.get(config.api_key_env)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(
            base_url=config.url.rstrip("/"),
            headers=headers,
            timeout=config.timeout_s,
            limits=httpx.Limits(max_connections=config.concurrency),
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> EndpointClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def complete(self, messages: Sequence[dict[str, str]]) -> Completion:
        """The endpoint's reply to `messages`, retrying rate limits, server errors and dropped connections."""
        body = {"model": self.config.model, "messages": list(messages), **self.config.output_settings()}
        for attempt in range(self.config.max_retries + 1):
            response: httpx.Response | None = None
            try:
                response = self._http.post("/chat/completions", json=body)
                self.usage.add(requests=1)
                if response.status_code not in RETRYABLE_STATUS:
                    return self._parse(response)
                problem = f"HTTP {response.status_code}: {response.text[:200]}"
            except httpx.TransportError as exc:
                self.usage.add(requests=1)
                problem = f"{type(exc).__name__}: {exc}"
            if attempt == self.config.max_retries:
                break
            self.usage.add(retries=1)
            self._sleep(_retry_delay(response, attempt, self.config.backoff_s))
        raise EndpointError(f"{self.config.url} failed {self.config.max_retries + 1} times; last: {problem}")

    def _parse(self, response: httpx.Response) -> Completion:
        if response.status_code >= 400:
            raise EndpointError(
                f"{self.config.url} refused the request: HTTP {response.status_code}: {response.text[:300]}"
            )
        try:
            data = response.json()
            text = data["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError):
            raise EndpointError(
                f"{self.config.url} answered something other than a chat completion: {response.text[:300]}"
            ) from None
        usage = data.get("usage") or {}
        completion = Completion(
            text, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        )
        self.usage.add(prompt_tokens=completion.prompt_tokens, completion_tokens=completion.completion_tokens)
        return completion


class ResponseCache:
    """Validated replies on disk, one JSON file per key (written atomically; safe across threads and runs)."""

    def __init__(self, directory: str | Path | None) -> None:
        self.directory = Path(directory) if directory is not None else None

    @staticmethod
    def key(model: str, prompt_version: str, settings: dict[str, Any], messages: Sequence[Any]) -> str:
        """The content hash of everything that decides the reply."""
        material = {
            "model": model,
            "prompt_version": prompt_version,
            "settings": settings,
            "messages": messages,
        }
        text = json.dumps(material, ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def _path(self, key: str) -> Path | None:
        return self.directory / key[:2] / f"{key}.json" if self.directory is not None else None

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored entry, or None (also for an unreadable entry, which is then simply asked again)."""
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        return entry if isinstance(entry, dict) else None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        """Store an entry (no-op when the cache is off)."""
        path = self._path(key)
        if path is not None:
            write_json(path, entry)


@dataclass
class Answer(Generic[S]):
    """The outcome of one question to an endpoint: a validated value, or the error and the last raw reply."""

    value: S | None
    text: str
    error: str | None = None
    attempts: int = 0
    cached: bool = False

    @property
    def ok(self) -> bool:
        """Whether a valid value came back."""
        return self.error is None


def first_json_object(text: str) -> Any:
    """The first JSON object in `text` (judges wrap JSON in prose, code fences or a disclaimer)."""
    decoder = json.JSONDecoder()
    for start in (i for i, char in enumerate(text) if char == "{"):
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    raise ValueError("the reply contains no JSON object")


def _validate(text: str, schema: type[S]) -> S:
    try:
        return schema.model_validate(first_json_object(text))
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'object'}: {error['msg']}" for error in exc.errors()
        )
        raise ValueError(details) from None


def _correction(error: str) -> str:
    return f"你的回复不符合要求（{error}）。请只输出一个符合上述格式的 JSON 对象，不要输出其他内容。"


@dataclass
class Asker:
    """An endpoint with its cache and prompt version: the one way the judge and the patient are asked."""

    client: EndpointClient
    cache: ResponseCache
    prompt_version: str
    attempts: int = 3

    def _key(self, messages: Sequence[dict[str, str]]) -> str:
        config = self.client.config
        return ResponseCache.key(config.model, self.prompt_version, config.output_settings(), messages)

    def ask_text(self, messages: Sequence[dict[str, str]]) -> Answer[Any]:
        """A plain-text reply (cached); an endpoint failure is returned as the answer's error."""
        key = self._key(messages)
        entry = self.cache.get(key)
        if entry is not None:
            self.client.usage.add(cache_hits=1)
            return Answer(None, str(entry.get("text", "")), cached=True)
        try:
            completion = self.client.complete(messages)
        except EndpointError as exc:
            return Answer(None, "", f"endpoint: {exc}", attempts=1)
        self.cache.put(key, {"text": completion.text})
        return Answer(None, completion.text, attempts=1)

    def ask_json(self, messages: Sequence[dict[str, str]], schema: type[S]) -> Answer[S]:
        """A reply validated against `schema`; malformed replies are corrected up to `attempts` times."""
        key = self._key(messages)
        entry = self.cache.get(key)
        if entry is not None:
            try:
                value = _validate(str(entry.get("text", "")), schema)
            except ValueError:
                pass  # a cache entry of another schema version: ask again
            else:
                self.client.usage.add(cache_hits=1)
                return Answer(value, str(entry["text"]), cached=True)
        conversation = list(messages)
        text, error = "", "no attempt"
        for attempt in range(1, self.attempts + 1):
            try:
                text = self.client.complete(conversation).text
            except EndpointError as exc:
                return Answer(None, text, f"endpoint: {exc}", attempts=attempt)
            try:
                value = _validate(text, schema)
            except ValueError as exc:
                error = str(exc)
                self.client.usage.add(malformed=1)
                # Only the latest bad reply goes back, so the request does not grow with every attempt.
                conversation = [
                    *messages,
                    {"role": "assistant", "content": text},
                    {"role": "user", "content": _correction(error)},
                ]
                continue
            self.cache.put(key, {"text": text})
            return Answer(value, text, attempts=attempt)
        return Answer(
            None, text, f"malformed after {self.attempts} attempts: {error}", attempts=self.attempts
        )


def run_parallel(items: Sequence[T], work: Callable[[T], R], concurrency: int, description: str) -> list[R]:
    """`work(item)` for every item on `concurrency` threads, with a progress bar; results in input order."""
    results: list[R | None] = [None] * len(items)
    with progress_bar(len(items), description) as bar, ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = {pool.submit(work, item): index for index, item in enumerate(items)}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            bar.update(1)
    return results  # type: ignore[return-value]


def default_cache_dir() -> Path:
    """`$WENZHEN_CACHE/judge` (default `~/.cache/wenzhen/judge`)."""
    configured = os.environ.get("WENZHEN_CACHE")
    root = Path(configured).expanduser() if configured else Path.home() / ".cache" / "wenzhen"
    return root / "judge"


def require_endpoint(url: str | None, model: str | None, role: str, flag: str) -> None:
    """Refuse a missing endpoint URL or model name with the flags that give them."""
    if not url or not model:
        raise WenzhenError(
            f"the {role} needs an OpenAI-compatible endpoint: pass --{flag}-url (e.g. http://127.0.0.1:8000/v1) "
            f"and --{flag}-model"
        )
