"""The one reader of a PEFT adapter's `adapter_config.json`: loading, merging, export and ChatGLM3's official-adapter
conversion all read it here, with the same errors for a missing, unreadable or unmergeable adapter."""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wenzhen.errors import WenzhenError

ADAPTER_CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class AdapterConfig:
    """The fields of `adapter_config.json` wenzhen acts on; `raw` keeps the whole file for rewriting it."""

    directory: Path
    peft_type: str
    target_modules: tuple[str, ...] = ()
    base_model: str | None = None
    rank: int = 8
    alpha: float = 8.0
    use_rslora: bool = False
    use_dora: bool = False
    bias: str = "none"
    lora_bias: bool = False
    fan_in_fan_out: bool = False
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    def require_mergeable(self) -> None:
        """Refuse what cannot be folded into plain weights (prefix tuning, DoRA, trained biases)."""
        if self.peft_type != "LORA":
            raise WenzhenError(
                f"{self.directory} is a {self.peft_type} adapter; only LoRA adds to the weights and can be merged: "
                "serve prefix-tuning adapters with `--adapter` instead"
            )
        if self.use_dora:
            raise WenzhenError(
                f"{self.directory} is a DoRA adapter, which `wenzhen merge` does not merge; use plain LoRA"
            )
        if self.bias != "none" or self.lora_bias:
            raise WenzhenError(
                f"{self.directory} trains biases (bias={self.bias!r}), which merge does not support"
            )

    def scaling(self, module: str, rank: int) -> float:
        """peft's scaling: alpha / r (alpha / sqrt(r) with rsLoRA), with per-module alpha from `alpha_pattern`."""
        from peft.utils.other import get_pattern_key

        alpha = self.alpha_pattern.get(get_pattern_key(self.alpha_pattern.keys(), module), self.alpha)
        return float(alpha) / (math.sqrt(rank) if self.use_rslora else rank)


def is_adapter_dir(path: Path) -> bool:
    """True for a PEFT adapter directory."""
    return (path / ADAPTER_CONFIG).is_file()


def read_adapter_config(adapter_dir: Path) -> AdapterConfig:
    """The typed `adapter_config.json` of `adapter_dir`, with one clear sentence for each way it can be wrong."""
    if not adapter_dir.is_dir():
        raise WenzhenError(
            f"adapter directory {adapter_dir} does not exist; pass the folder with {ADAPTER_CONFIG}"
        )
    file = adapter_dir / ADAPTER_CONFIG
    if not file.is_file():
        raise WenzhenError(
            f"{adapter_dir} has no {ADAPTER_CONFIG}; pass a LoRA adapter directory (a training run's final/ folder)"
        )
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise WenzhenError(f"{file} is not valid JSON ({exc}); the adapter is damaged") from None
    if not isinstance(raw, dict):
        raise WenzhenError(f"{file} is not a JSON object; the adapter is damaged")
    targets = raw.get("target_modules") or ()
    try:
        return AdapterConfig(
            directory=adapter_dir,
            peft_type=str(raw.get("peft_type")),
            target_modules=(targets,) if isinstance(targets, str) else tuple(str(t) for t in targets),
            base_model=raw.get("base_model_name_or_path") or None,
            rank=int(raw.get("r") or 8),
            alpha=float(raw.get("lora_alpha") or raw.get("r") or 8),
            use_rslora=bool(raw.get("use_rslora")),
            use_dora=bool(raw.get("use_dora")),
            bias=str(raw.get("bias") or "none"),
            lora_bias=bool(raw.get("lora_bias")),
            fan_in_fan_out=bool(raw.get("fan_in_fan_out")),
            alpha_pattern={str(k): float(v) for k, v in (raw.get("alpha_pattern") or {}).items()},
            raw=raw,
        )
    except (TypeError, ValueError, AttributeError) as exc:
        raise WenzhenError(f"{file} has a value of the wrong type ({exc}); the adapter is damaged") from None
