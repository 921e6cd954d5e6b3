"""Typed configuration of the web UI and the API (`--config FILE.yaml`; every key has a default)."""

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
        None, ge=1, description="generations decoding at once; null = as many as the KV-cache budget holds"
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


class ApiConfig(StrictModel):
    """`wenzhen api` settings."""

    model_name: str | None = Field(
        None, description="the id clients send as `model`; default: the folder name"
    )
    api_key_env: str = Field(
        "WENZHEN_API_KEY", description="environment variable holding the bearer token; unset = no auth"
    )
    limits: ApiLimits = Field(default_factory=ApiLimits, description="request and concurrency limits")
    access: ApiAccess = Field(default_factory=ApiAccess, description="accepted hosts and browser origins")
    generation: GenerationSettings = Field(
        default_factory=GenerationSettings, description="defaults for fields a request leaves out"
    )
    safety: SafetyConfig = Field(default_factory=SafetyConfig, description="the safety guard")


class WebConfig(StrictModel):
    """`wenzhen web` settings."""

    title: str = Field("问诊 wenzhen · 医疗咨询", description="page title")
    generation: GenerationSettings = Field(
        default_factory=GenerationSettings, description="initial slider values"
    )
    safety: SafetyConfig = Field(default_factory=SafetyConfig, description="the safety guard")
    max_tool_rounds: int = Field(3, ge=1, le=10, description="tool calls the model may chain per question")
    access: HostAccess = Field(default_factory=HostAccess, description="accepted Host names")
    examples: list[str] = Field(
        description="example questions shown under the chat",
        default_factory=lambda: [
            "最近总是失眠，白天没精神，该怎么调理？",
            "孩子3岁，发烧38.5度，精神还好，需要去医院吗？",
            "胃溃疡的人可以吃布洛芬吗？",
            "体检发现尿酸偏高，饮食上要注意什么？",
            "我爸突然胸口剧痛，满头大汗，怎么办？",
        ],
    )
