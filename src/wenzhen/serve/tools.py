"""Tools the model may call (ChatGLM3 function calling), starting with a drug look-up in a table we ship.

A tool is its ChatGLM3 schema (name, description, JSON-schema parameters, the layout ChatGLM3's system turn
expects) plus the Python function that answers it. Tools are a registry so a deployment can add its own.
The drug table (`resources/drugs.json`) was written for this project: indications, contraindications and
cautions of about thirty common medicines, deliberately without doses.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from wenzhen.errors import WenzhenError
from wenzhen.registry import Registry


@dataclass(frozen=True)
class Tool:
    """A callable tool and the schema the model sees."""

    name: str
    description: str
    parameters: dict[str, Any]
    function: Callable[..., dict[str, Any]]

    def schema(self) -> dict[str, Any]:
        """The ChatGLM3 / OpenAI function schema."""
        return {"name": self.name, "description": self.description, "parameters": self.parameters}


TOOLS: Registry[Tool] = Registry("tool")


@lru_cache(maxsize=1)
def drug_table() -> list[dict[str, Any]]:
    """The shipped drug table."""
    text = (resources.files("wenzhen") / "resources" / "drugs.json").read_text(encoding="utf-8")
    drugs: list[dict[str, Any]] = json.loads(text)["drugs"]
    return drugs


def _key(text: str) -> str:
    return "".join(text.split()).lower()


def lookup_drug(name: str) -> dict[str, Any]:
    """Indications, contraindications and cautions of a drug by its generic or brand name (no doses)."""
    wanted = _key(name)
    if not wanted:
        return {"found": False, "message": "请提供药品名称"}
    for drug in drug_table():
        if wanted in {_key(drug["name"]), *(_key(a) for a in drug["aliases"])}:
            return {"found": True, **drug}
    for drug in drug_table():
        if any(wanted in _key(n) or _key(n) in wanted for n in [drug["name"], *drug["aliases"]]):
            return {"found": True, **drug}
    return {
        "found": False,
        "message": f"药品表中没有“{name}”，请咨询医生或药师，或查看药品说明书",
        "known": [drug["name"] for drug in drug_table()],
    }


TOOLS.add(
    "lookup_drug",
    Tool(
        name="lookup_drug",
        description="查询常用药品的适应证、禁忌和注意事项（不含剂量）。用户问到某种药能否使用、有什么禁忌时调用。",
        parameters={
            "type": "object",
            "properties": {
                "name": {"type": "string", "description": "药品通用名或商品名，例如 布洛芬、芬必得"}
            },
            "required": ["name"],
        },
        function=lookup_drug,
    ),
)


def tool_schemas(names: list[str] | None = None) -> list[dict[str, Any]]:
    """Schemas of the named tools (all registered tools by default)."""
    return [TOOLS.get(name).schema() for name in (names or TOOLS.names())]


def call_tool(name: str, arguments: dict[str, Any]) -> str:
    """Run a tool and return its JSON result, the content of the `observation` turn.

    A call the model got wrong (unknown tool, bad arguments) becomes an error result the model can read, since
    the model, not the user, made the mistake.
    """
    try:
        tool = TOOLS.get(name)
    except WenzhenError as exc:
        return json.dumps({"error": str(exc)}, ensure_ascii=False)
    try:
        result = tool.function(**arguments)
    except TypeError as exc:
        return json.dumps({"error": f"bad arguments for {name}: {exc}"}, ensure_ascii=False)
    return json.dumps(result, ensure_ascii=False)
