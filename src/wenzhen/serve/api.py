"""OpenAI-compatible HTTP API (`wenzhen api`) on the one `ChatEngine`, with the safety guard on every answer.

Endpoints: `GET /health`, `GET /v1/models`, `POST /v1/chat/completions` (JSON or SSE streaming that ends in
`data: [DONE]`). Errors use OpenAI's shape `{"error": {"message", "type", "param", "code"}}`.

We read and validate the request body ourselves rather than through FastAPI's body parameter so that the checks
run in a fixed, cheap-first order (auth, body size, JSON, schema, limits) and every failure is a 4xx in OpenAI's
shape instead of FastAPI's 422 layout. Generation runs in one worker thread per request (the engine is blocking);
that thread releases the request's generation slot when it ends, so the bound on concurrent generations holds
even when a client disconnects and its handler is gone.
"""

import asyncio
import contextlib
import functools
import json
import logging
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from wenzhen import safety
from wenzhen.generation import ChatEngine, ChatResult, GenerationSettings, warm_up
from wenzhen.serve.access import AccessGuard, accepted_hosts
from wenzhen.serve.config import ApiConfig, ApiLimits

log = logging.getLogger(__name__)


class ApiError(Exception):
    """A request the server refuses, rendered as OpenAI-shaped error JSON."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def response(self) -> JSONResponse:
        """The JSON error response (429 carries Retry-After, 401 a WWW-Authenticate challenge)."""
        headers = {"Retry-After": "1"} if self.status == 429 else {}
        if self.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=headers)


# Request schema: the subset of OpenAI's chat-completions request the server honours. Unknown fields are
# ignored (as OpenAI-compatible servers do) so that clients sending e.g. `user` keep working; known fields are
# strict (no "8" or true for an integer, no "yes" for a boolean), as OpenAI's own API is.
class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


# Temperatures this close to 0 mean greedy decoding; dividing logits by them would overflow to inf/NaN.
MIN_TEMPERATURE = 1e-3


class TextPart(_Lenient):
    type: Literal["text"]
    text: str


class FunctionCall(_Lenient):
    name: str
    arguments: str = "{}"


class ToolCall(_Lenient):
    id: str = ""
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionDef(_Lenient):
    name: str = Field(pattern=r"^[A-Za-z_][\w.-]*$")
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=dict)


class ToolDef(_Lenient):
    type: Literal["function"]
    function: FunctionDef


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class StreamOptions(_Lenient):
    include_usage: bool = False


class ChatCompletionRequest(_Lenient):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="below 0.001 means greedy")
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, ge=0.5, le=2.0)
    seed: int | None = Field(None, ge=-(2**63), lt=2**64, description="the range torch.manual_seed takes")
    n: int = Field(1, ge=1, le=1, description="only one choice per request")
    tools: list[ToolDef] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None

    @field_validator("temperature")
    @classmethod
    def _greedy_below_minimum(cls, value: float | None) -> float | None:
        return 0.0 if value is not None and value < MIN_TEMPERATURE else value


class GenerationSlots:
    """At most `capacity` generations at once and `max_waiting` queued; beyond that, 429."""

    def __init__(self, capacity: int, max_waiting: int) -> None:
        self.capacity, self.max_waiting = capacity, max_waiting
        self.active = 0
        self.waiting = 0
        self._semaphore = asyncio.Semaphore(capacity)

    async def acquire(self) -> None:
        """Wait for a slot, or refuse at once when the queue is full."""
        if self.active + self.waiting >= self.capacity + self.max_waiting:
            raise ApiError(
                429,
                f"server busy: {self.active} generations running and {self.waiting} waiting; retry shortly",
                "rate_limit_error",
                code="rate_limit_exceeded",
            )
        self.waiting += 1
        try:
            await self._semaphore.acquire()
        finally:
            self.waiting -= 1
        self.active += 1

    def release(self) -> None:
        """Give a slot back (called on the event loop)."""
        self.active -= 1
        self._semaphore.release()


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body is {declared} bytes; the limit is {limit}", code="body_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"request body exceeds the {limit}-byte limit", code="body_too_large")
    return bytes(body)


def parse_request(body: bytes) -> ChatCompletionRequest:
    """Decode and validate a chat-completions body, as 400s naming the offending field.

    pydantic's own JSON parser does both at once: it refuses invalid UTF-8, lone surrogates and nesting deeper
    than it recurses (all 400, where the standard library's parser raised errors that became 500s).
    """
    try:
        return ChatCompletionRequest.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        if first["type"] == "json_invalid":
            reason = first.get("ctx", {}).get("error", first["msg"])
            raise ApiError(400, f"request body is not valid JSON: {reason}", code="invalid_json") from None
        if not first["loc"]:
            raise ApiError(400, "request body must be a JSON object", code="invalid_json") from None
        param = ".".join(str(p) for p in first["loc"])
        raise ApiError(400, f"{param}: {first['msg']}", param=param, code="invalid_value") from None


def check_request(request: ChatCompletionRequest, limits: ApiLimits) -> None:
    """Refuse, before any tokenisation, requests over the message, tool and schema limits (all cheap to count)."""
    if len(request.messages) > limits.max_messages:
        raise ApiError(
            400,
            f"{len(request.messages)} messages; the limit is {limits.max_messages}",
            param="messages",
            code="limit_exceeded",
        )
    tools = request.tools or []
    if len(tools) > limits.max_tools:
        raise ApiError(
            400, f"{len(tools)} tools; the limit is {limits.max_tools}", param="tools", code="limit_exceeded"
        )
    for tool in tools:
        depth = nesting_depth(tool.function.parameters)
        if depth > limits.max_schema_depth:
            raise ApiError(
                400,
                f"the parameters of tool {tool.function.name!r} are nested {depth} levels deep; the limit is "
                f"{limits.max_schema_depth}",
                param="tools",
                code="limit_exceeded",
            )
    size = len(json.dumps([tool.function.model_dump() for tool in tools], ensure_ascii=False).encode())
    if size > limits.max_tool_schema_bytes:
        raise ApiError(
            400,
            f"the tool schemas are {size} bytes; the limit is {limits.max_tool_schema_bytes}",
            param="tools",
            code="limit_exceeded",
        )


def nesting_depth(value: Any) -> int:
    """How deeply objects and lists nest in a JSON value (a scalar is 0), counted without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth + 1)
        stack += [(child, depth + 1) for child in children]
    return deepest


def _text(content: str | list[TextPart] | None) -> str:
    if isinstance(content, list):
        return "".join(part.text for part in content)
    return content or ""


def to_engine_messages(request: ChatCompletionRequest) -> list[dict[str, Any]]:
    """OpenAI messages as the project's message dicts: tool results become `observation` turns and each tool
    call an assistant turn whose `metadata` is the tool name and content its JSON arguments."""
    messages: list[dict[str, Any]] = []
    for message in request.messages:
        content = _text(message.content)
        if message.role in ("system", "developer"):
            messages.append({"role": "system", "content": content})
        elif message.role == "tool":
            messages.append({"role": "observation", "content": content})
        elif message.role == "assistant" and message.tool_calls:
            if content:
                messages.append({"role": "assistant", "content": content})
            for call in message.tool_calls:
                try:
                    arguments = json.loads(call.function.arguments or "{}")
                except json.JSONDecodeError:
                    raise ApiError(
                        400,
                        "tool_calls arguments must be a JSON string",
                        param="messages",
                        code="invalid_value",
                    ) from None
                messages.append(
                    {
                        "role": "assistant",
                        "metadata": call.function.name,
                        "content": json.dumps(arguments, ensure_ascii=False),
                    }
                )
        else:
            messages.append({"role": message.role, "content": content})
    return messages


def _tool_calls(result: ChatResult) -> list[dict[str, Any]]:
    assert result.tool_call is not None
    arguments = json.dumps(result.tool_call["arguments"], ensure_ascii=False)
    call_id = f"call_{uuid.uuid4().hex[:24]}"
    return [
        {
            "id": call_id,
            "type": "function",
            "function": {"name": result.tool_call["name"], "arguments": arguments},
        }
    ]


def _usage(result: ChatResult) -> dict[str, int]:
    total = result.prompt_tokens + result.completion_tokens
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": total,
    }


def _finish_reason(result: ChatResult) -> str:
    if result.tool_call is not None:
        return "tool_calls"
    return "length" if result.finish_reason == "length" else "stop"


class ChatService:
    """Turns a validated request into a generation on the engine, with the guard and the limits applied."""

    def __init__(self, engine: ChatEngine, config: ApiConfig, model_id: str) -> None:
        self.engine, self.config, self.model_id = engine, config, model_id
        capacity = min(config.limits.max_concurrent or engine.max_batch, engine.max_batch)
        self.slots = GenerationSlots(capacity, config.limits.max_queue)
        self.guard = safety.get_guard(config.safety)

    def settings_for(self, request: ChatCompletionRequest) -> GenerationSettings:
        """Generation settings: the config's defaults overridden by the request, within the limits."""
        limits = self.config.limits
        max_tokens = request.max_completion_tokens or request.max_tokens or limits.default_max_tokens
        if max_tokens > limits.max_tokens:
            raise ApiError(
                400,
                f"max_tokens is {max_tokens}; this server allows at most {limits.max_tokens}",
                "invalid_request_error",
                "max_tokens",
                "invalid_value",
            )
        overrides = {
            "max_new_tokens": max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "repetition_penalty": request.repetition_penalty,
            "seed": request.seed,
        }
        return self.config.generation.model_copy(update={k: v for k, v in overrides.items() if v is not None})

    def tools_for(self, request: ChatCompletionRequest) -> list[dict[str, Any]] | None:
        """Tool schemas for the prompt, or None; refused for model families without tool support."""
        if not request.tools or request.tool_choice == "none":
            return None
        if not self.engine.family.supports_tools:
            raise ApiError(
                400, f"model {self.model_id!r} does not support tools; omit `tools`", param="tools"
            )
        return [tool.function.model_dump() for tool in request.tools]

    def prompt_budget(self, settings: GenerationSettings) -> int:
        """Prompt tokens allowed: what leaves room for one answer token in the context (and is under
        `max_prompt_tokens`); a longer `max_tokens` shrinks to fit instead (`check_prompt`)."""
        budget = self.engine.max_context - 1
        return min(self.config.limits.max_prompt_tokens or budget, budget)

    def check_prompt_size(
        self, messages: list[dict[str, Any]], tools: Any, settings: GenerationSettings
    ) -> None:
        """Refuse, without tokenising, prompts whose text alone proves them too long for the context.

        No token covers more characters than the vocabulary's longest entry, so text longer than budget x that
        (doubled for normalisers that drop characters) cannot fit; tokenising it would only cost time and memory.
        """
        characters = sum(len(message.get("content") or "") for message in messages)
        characters += len(json.dumps(tools, ensure_ascii=False)) if tools else 0
        budget = self.prompt_budget(settings)
        if characters > 2 * budget * self.longest_token:
            raise self._too_long(f"at least {characters // self.longest_token}", budget, settings)

    def check_prompt(
        self, messages: list[dict[str, Any]], tools: Any, settings: GenerationSettings
    ) -> GenerationSettings:
        """Refuse prompts over the token limit (never silently truncate a client's request); runs in the slot.
        The settings returned have the answer budget shrunk to what fits beside the prompt in the context."""
        budget = self.prompt_budget(settings)
        tokens = self.engine.count_prompt_tokens(messages, tools)
        if tokens > budget:
            raise self._too_long(str(tokens), budget, settings)
        answer = self.engine.answer_budget(tokens, settings.max_new_tokens)
        return settings.model_copy(update={"max_new_tokens": answer})

    def _too_long(self, tokens: str, budget: int, settings: GenerationSettings) -> ApiError:
        return ApiError(
            400,
            f"the prompt is {tokens} tokens; at most {budget} fit (context {self.engine.max_context}, "
            "max_tokens shrinks to what is left); shorten the messages",
            param="messages",
            code="context_length_exceeded",
        )

    @functools.cached_property
    def longest_token(self) -> int:
        """Characters in the vocabulary's longest token string (byte-level strings count each byte)."""
        tokenizer = self.engine.tokenizer
        pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        return max((len(piece) for piece in pieces if isinstance(piece, str)), default=1) or 1

    async def events(
        self, messages: list[dict[str, Any]], settings: GenerationSettings, tools: Any, stop: threading.Event
    ) -> AsyncIterator[tuple[str, Any]]:
        """("delta", text) items then one ("result", ChatResult); takes a slot first (or raises 429).

        Leaving the iteration early (client gone) sets `stop`, which ends the generation at the next token.
        """
        await self.slots.acquire()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def put(item: tuple[str, Any]) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def work() -> None:
            try:
                fitted = self.check_prompt(messages, settings=settings, tools=tools)
                stream = self.engine.stream(messages, fitted, tools=tools, stop_event=stop)
                for delta in stream:
                    put(("delta", delta))
                put(("result", stream.result))
            except Exception as exc:  # handed to the request's task, which turns it into a 500
                put(("error", exc))
            finally:
                loop.call_soon_threadsafe(self.slots.release)

        threading.Thread(target=work, name="wenzhen-generate", daemon=True).start()
        finished = False
        try:
            while True:
                kind, value = await queue.get()
                if kind == "error":
                    finished = True
                    raise value
                yield kind, value
                if kind == "result":
                    finished = True
                    return
        finally:
            if not finished:
                stop.set()

    def prepare(self, request: ChatCompletionRequest) -> tuple[list[dict[str, Any]], GenerationSettings, Any]:
        """Messages (with the safety system prompt), settings and tools of a request, all limits checked."""
        if request.model != self.model_id:
            raise ApiError(
                404,
                f"model {request.model!r} is not served here; use {self.model_id!r}",
                param="model",
                code="model_not_found",
            )
        check_request(request, self.config.limits)
        settings = self.settings_for(request)
        tools = self.tools_for(request)
        messages = safety.with_system_prompt(to_engine_messages(request), self.config.safety)
        self.check_prompt_size(messages, tools, settings)
        return messages, settings, tools

    async def complete(self, request: ChatCompletionRequest, http: Request) -> dict[str, Any]:
        """A whole chat.completion object; a disconnect while generating stops the generation."""
        messages, settings, tools = await asyncio.to_thread(self.prepare, request)
        verdict = self.guard.check(messages)
        stop = threading.Event()
        watcher = asyncio.create_task(_stop_on_disconnect(http, stop))
        result: ChatResult | None = None
        try:
            async for kind, value in self.events(messages, settings, tools, stop):
                if kind == "result":
                    result = value
        finally:
            watcher.cancel()
        assert result is not None
        message: dict[str, Any] = {"role": "assistant"}
        if result.tool_call is not None:
            message["content"] = verdict.emergency_text or None
            message["tool_calls"] = _tool_calls(result)
        else:
            message["content"] = safety.apply(verdict, result.text)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model_id,
            "choices": [{"index": 0, "message": message, "finish_reason": _finish_reason(result)}],
            "usage": _usage(result),
            "wenzhen_safety": {"red_flags": list(verdict.categories)},
        }

    async def stream(self, request: ChatCompletionRequest) -> AsyncIterator[str]:
        """SSE lines of chat.completion.chunk objects, then `data: [DONE]`.

        With tools the answer is held back until it is known whether it is a tool call, since ChatGLM3 only
        reveals that at the end of its turn.
        """
        messages, settings, tools = await asyncio.to_thread(self.prepare, request)
        verdict = self.guard.check(messages)
        chunk_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None, usage: Any = None) -> str:
            body: dict[str, Any] = {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": self.model_id,
                "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            if usage:
                body["usage"] = usage
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        events = self.events(messages, settings, tools, threading.Event())
        result: ChatResult | None = None
        first = True
        async for kind, value in events:
            if kind == "result":
                result = value
            elif not tools:
                text = (safety.answer_prefix(verdict) + value) if first else value
                yield chunk({"role": "assistant", "content": text} if first else {"content": text})
                first = False
        assert result is not None
        if result.tool_call is not None:
            yield chunk(
                {
                    "role": "assistant",
                    "content": verdict.emergency_text or None,
                    "tool_calls": [{"index": 0, **call} for call in _tool_calls(result)],
                }
            )
        else:
            tail = result.text if tools else ""
            text = (safety.answer_prefix(verdict) if first else "") + tail + safety.answer_suffix(verdict)
            yield chunk({"role": "assistant", "content": text} if first else {"content": text})
        yield chunk({}, _finish_reason(result))
        if request.stream_options and request.stream_options.include_usage:
            yield chunk({}, usage=_usage(result))
        yield "data: [DONE]\n\n"


async def _stop_on_disconnect(request: Request, stop: threading.Event) -> None:
    while not stop.is_set():
        if await request.is_disconnected():
            stop.set()
            return
        await asyncio.sleep(0.1)


def create_app(
    engine: ChatEngine,
    config: ApiConfig,
    model_id: str,
    api_key: str | None,
    announce: str = "",
    host: str = "127.0.0.1",
) -> FastAPI:
    """The FastAPI application; `announce` is printed once the server is listening on `host`."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if announce:
            print(announce, flush=True)
        yield

    app = FastAPI(title="wenzhen API", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    service = ChatService(engine, config, model_id)
    app.state.service = service
    if api_key is None:
        origins = set(config.access.cors_origins)
        app.add_middleware(
            AccessGuard,
            hosts=accepted_hosts(host, config.access.allowed_hosts),
            origin_allowed=origins.__contains__,
            json_only=True,
            host_fix="add it to access.allowed_hosts in --config, or set $WENZHEN_API_KEY to require a key instead",
            origin_fix="add it to access.cors_origins in --config, or set $WENZHEN_API_KEY to require a key instead",
        )
    if config.access.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=config.access.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )

    def authorise(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(
                401, "missing or wrong API key; send `Authorization: Bearer <key>`", code="invalid_api_key"
            )

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return ApiError(
            exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None
        ).response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return ApiError(400, str(exc.errors()[0].get("msg", exc))).response()

    @app.exception_handler(Exception)
    async def _server_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request failed")
        return ApiError(500, f"internal error: {type(exc).__name__}", "server_error").response()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": model_id,
            "active": service.slots.active,
            "waiting": service.slots.waiting,
        }

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        authorise(request)
        entry = {"id": model_id, "object": "model", "created": 0, "owned_by": "wenzhen"}
        return {"object": "list", "data": [entry]}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> JSONResponse | StreamingResponse:
        authorise(request)
        parsed = parse_request(await read_body(request, config.limits.max_body_bytes))
        if not parsed.stream:
            return JSONResponse(await service.complete(parsed, request))
        lines = service.stream(parsed)
        first = await anext(lines)  # limits and 429 are raised here, before the 200 status is sent
        return StreamingResponse(_prepend(first, lines), media_type="text/event-stream")

    return app


async def _prepend(first: str, rest: AsyncIterator[str]) -> AsyncIterator[str]:
    yield first
    async for line in rest:
        yield line


def run_api(
    model: str,
    config: ApiConfig,
    *,
    adapter: str | None = None,
    base: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str | None = None,
    dtype: str | None = None,
) -> None:
    """Load the model and serve the API until interrupted."""
    import os

    import uvicorn

    from wenzhen.models import load_model

    loaded = load_model(model, adapter=adapter, base=base, device=device, dtype=dtype)
    model_id = config.model_name or loaded.name
    api_key = os.environ.get(config.api_key_env) or None
    auth = "bearer key required" if api_key else f"no auth (set ${config.api_key_env} to require a key)"
    announce = f"wenzhen api: serving {model_id!r} on http://{host}:{port}/v1 ({auth})"
    engine = ChatEngine(loaded)
    app = create_app(engine, config, model_id, api_key, announce, host)
    # Ready means ready: compile and capture the decode step for every batch size the server will run before
    # /health answers, so the first request is as fast as the hundredth.
    warm_up(engine, app.state.service.slots.capacity)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
