"""Typed serving configuration (`--config FILE.yaml`; every key has a default).

One file describes a deployment: `wenzhen api`, `wenzhen web`, `wenzhen chat --config` and
`wenzhen eval safety --config` all read the same `ServingConfig`, so the consultation policy (system prompt,
guard, emergency number, crisis lines, disclaimer, tool rounds) measured by `eval safety` is the one served.
Keys a front end does not use (the web UI's `title` for the API, the API's `limits` for the web UI) are ignored
by it, not refused, so one file can be shared.
"""

from pydantic import Field

from wenzhen.config import StrictModel
from wenzhen.generation import GenerationSettings
from wenzhen.safety import SafetyConfig


class ApiLimits(StrictModel):
    """What one request may ask for, and how many generations run at once."""

    max_body_bytes: int = Field(1_000_000, ge=1024, description="larger request bodies get 413")
    max_messages: int = Field(100, ge=1, description="more messages in one request get 400")
    max_prompt_tokens: int | None = Field(
        None,
        ge=1,
        description="longer prompts get 400; null = the model's context (max_tokens then shrinks to what fits)",
    )
    max_tokens: int = Field(2048, ge=1, description="a larger max_tokens gets 400")
    default_max_tokens: int = Field(512, ge=1, description="used when the request gives no max_tokens")
    max_concurrent: int | None = Field(
        None,
        ge=1,
        description="generations decoding at once; null = as many as the KV-cache budget holds (with "
        "`upstream`: 64)",
    )
    max_queue: int = Field(8, ge=0, description="requests waiting for a slot; more get 429")
    max_tools: int = Field(32, ge=0, description="more tools in one request get 400")
    max_tool_schema_bytes: int = Field(
        16_384,
        ge=256,
        description="tool schemas larger than this (as compact JSON, all tools together) get 400",
    )
    max_schema_depth: int = Field(
        12, ge=2, description="tool parameter schemas nested deeper than this (objects and lists) get 400"
    )


class HostAccess(StrictModel):
    """Which Host names the web UI answers to (pages on other sites must not drive it: CSRF, DNS rebinding)."""

    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names accepted besides the bound address and localhost (e.g. this machine's name "
        "when binding 0.0.0.0)",
    )


class ApiAccess(HostAccess):
    """Who may reach the API without a key (with a key, the key decides and Host/Origin are not checked)."""

    cors_origins: list[str] = Field(
        default_factory=list,
        description="browser origins (e.g. http://localhost:3000) allowed to call the API; empty = CORS off and "
        "cross-origin browser requests refused when no API key is set",
    )


class UpstreamConfig(StrictModel):
    """An OpenAI-compatible engine (vLLM, SGLang, LMDeploy, Ollama, another `wenzhen api`) that generates the
    answers while `wenzhen api` keeps the consultation policy, authentication, limits and model naming."""

    url: str = Field(
        pattern=r"^https?://", description="base URL of the engine's API, e.g. http://127.0.0.1:8001/v1"
    )
    model: str | None = Field(
        None, description="the model name the engine serves; null = the first of its /v1/models"
    )
    api_key_env: str | None = Field(
        None, description="environment variable holding the engine's bearer key; null = send none"
    )
    timeout_s: float = Field(600.0, gt=0, description="longest wait for the engine's next byte")


class ServingConfig(StrictModel):
    """`wenzhen api`, `wenzhen web`, `wenzhen chat --config` and `wenzhen eval safety --config` settings."""

    generation: GenerationSettings = Field(
        default_factory=GenerationSettings,
        description="defaults for sampling (the API's for fields a request leaves out, the web UI's sliders)",
    )
    safety: SafetyConfig = Field(
        default_factory=SafetyConfig,
        description="the consultation policy's guard, guidance, system prompt and disclaimer",
    )
    max_tool_rounds: int = Field(
        3, ge=1, le=10, description="tool calls the model may chain per question (web UI tool mode)"
    )
    model_name: str | None = Field(
        None, description="API: the id clients send as `model`; default: the folder or upstream model name"
    )
    api_key_env: str = Field(
        "WENZHEN_API_KEY", description="API: environment variable holding the bearer token; unset = no auth"
    )
    limits: ApiLimits = Field(default_factory=ApiLimits, description="API: request and concurrency limits")
    access: ApiAccess = Field(
        default_factory=ApiAccess,
        description="accepted Host names (API and web UI) and browser origins (API)",
    )
    upstream: UpstreamConfig | None = Field(
        None, description="API: generate on this OpenAI-compatible engine instead of a local model"
    )
    title: str = Field("问诊 wenzhen · 医疗咨询", description="web UI: page title")
    examples: list[str] = Field(
        description="web UI: example questions shown under the chat",
        default_factory=lambda: [
            "最近总是失眠，白天没精神，该怎么调理？",
            "孩子3岁，发烧38.5度，精神还好，需要去医院吗？",
            "胃溃疡的人可以吃布洛芬吗？",
            "体检发现尿酸偏高，饮食上要注意什么？",
            "我爸突然胸口剧痛，满头大汗，怎么办？",
        ],
    )
