"""The one model loader: a path in, a ready model + tokenizer + family out.

`path` may be an official ChatGLM3 download, a directory converted or merged by wenzhen, any local Hugging Face
chat model, or an adapter directory (LoRA / prefix tuning) whose base is found from `--base`, the run folder's
`run.json` or the adapter's own `base_model_name_or_path`, in that order.
"""

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from wenzhen.errors import WenzhenError
from wenzhen.models import chatglm3, hf  # noqa: F401 - importing registers the families
from wenzhen.models.adapter import ADAPTER_CONFIG, is_adapter_dir, read_adapter_config
from wenzhen.models.family import FAMILIES, ModelFamily
from wenzhen.models.weights import check_weight_files
from wenzhen.runinfo import read_run_info

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model ready for generation or training."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    family: ModelFamily
    path: Path
    adapter: Path | None = None

    @property
    def name(self) -> str:
        """A short display name: the adapter's folder if any, else the model's."""
        return (self.adapter or self.path).name


def read_config(model_dir: Path) -> dict[str, Any]:
    """config.json of `model_dir`, with a clear error when it is missing or broken."""
    file = model_dir / "config.json"
    if not file.is_file():
        raise WenzhenError(
            f"{model_dir} has no config.json; pass a model directory (or an adapter directory)"
        )
    try:
        data: dict[str, Any] = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise WenzhenError(f"{file} is not valid JSON ({exc.msg}); download it again") from None
    return data


def detect_family(model_dir: Path) -> ModelFamily:
    """The specific family that recognises the directory's config, else the fallback family."""
    config = read_config(model_dir)
    families = [family for _, family in FAMILIES.items()]
    for family in sorted(families, key=lambda family: family.fallback):
        if family.matches(config):
            return family
    raise WenzhenError(
        f"{model_dir}/config.json has no model_type; this is not a transformers model directory"
    )


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on a GPU that supports it, fp16 on older GPUs, fp32 on CPU."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Accept `bf16`/`fp16`/`fp32`/`auto` or a torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
    }
    names |= {"fp32": torch.float32, "float32": torch.float32}
    if dtype in (None, "auto"):
        return default_dtype(device)
    if dtype not in names:
        raise WenzhenError(f"unknown dtype {dtype!r}; use bf16, fp16, fp32 or auto")
    return names[dtype]


def stored_dtype(model_dir: Path) -> str | None:
    """The short name (bf16/fp16/fp32) of the dtype `model_dir`'s weights are stored in, from its config.json
    (`dtype`, or `torch_dtype` as transformers 4.x and the official download write it); None when unrecorded."""
    config = read_config(model_dir)
    recorded = config.get("dtype") or config.get("torch_dtype")
    short = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
    return short.get(str(recorded).removeprefix("torch.")) if recorded else None


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`cuda` when available unless told otherwise."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_base(adapter_dir: Path, base: str | Path | None) -> Path:
    """The base model of an adapter: `base` if given, else its run.json, else its adapter_config.json."""
    if base is not None:
        candidates = [("--base", str(base))]
    else:
        candidates = []
        info = read_run_info(adapter_dir) or read_run_info(adapter_dir.parent)
        if info and info.base_model:
            candidates.append(("run.json", info.base_model))
        recorded = read_adapter_config(adapter_dir).base_model
        if recorded:
            candidates.append(("adapter_config.json", recorded))
    for _, candidate in candidates:
        if Path(candidate).is_dir():
            return Path(candidate)
    tried = "; ".join(f"{source} says {value}" for source, value in candidates) or "no base path recorded"
    raise WenzhenError(
        f"cannot find the base model of adapter {adapter_dir} ({tried}, not a directory here); "
        "pass --base MODEL_DIR"
    )


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer of a model (or of an adapter's base) directory, with a chat template."""
    model_dir = Path(path)
    if is_adapter_dir(model_dir):
        model_dir = resolve_base(model_dir, None)
    return detect_family(model_dir).load_tokenizer(model_dir)


def attach_adapter(model: PreTrainedModel, adapter_dir: Path, family: ModelFamily) -> PreTrainedModel:
    """Load a PEFT adapter onto `model`, in the family's native module names (converted on the fly if needed)."""
    check_adapter_weights(adapter_dir)
    with tempfile.TemporaryDirectory(prefix="wenzhen-adapter-") as scratch:
        native = family.native_adapter(adapter_dir, model.config, Path(scratch))
        if native != adapter_dir:
            log.info("converted adapter %s to the native module names", adapter_dir)
        # peft reads the weights into memory here, so a converted copy can go afterwards.
        return _peft_from_pretrained(model, native)


ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def check_adapter_weights(adapter_dir: Path) -> None:
    """Refuse an adapter folder whose weights are missing, an LFS pointer, truncated or corrupt."""
    present = [adapter_dir / name for name in ADAPTER_WEIGHTS if (adapter_dir / name).is_file()]
    if not present:
        raise WenzhenError(
            f"adapter {adapter_dir} has {ADAPTER_CONFIG} but no {' or '.join(ADAPTER_WEIGHTS)}; its training did "
            "not finish saving, or the folder was copied without it: copy the whole adapter folder again"
        )
    check_weight_files(present)


def _peft_from_pretrained(model: PreTrainedModel, adapter_dir: Path) -> PreTrainedModel:
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False).eval()
    except (ValueError, KeyError, RuntimeError) as exc:
        raise WenzhenError(
            f"adapter {adapter_dir} does not fit this base model ({str(exc).splitlines()[0][:160]}); "
            "pass the --base it was trained on"
        ) from None


def load_model(
    path: str | Path,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    adapter: str | Path | None = None,
    base: str | Path | None = None,
    quantization: Any = None,
) -> LoadedModel:
    """Load a model for generation, evaluation or training.

    `path` is a model directory or an adapter directory; `adapter` adds an adapter to a model directory; `base`
    overrides the base recorded in an adapter; `quantization` is a transformers quantization config (QLoRA).
    """
    target = Path(path)
    adapter_dir = Path(adapter) if adapter is not None else None
    if adapter_dir is None and is_adapter_dir(target):
        adapter_dir, target = target, resolve_base(target, base)
    elif adapter_dir is not None and not is_adapter_dir(adapter_dir):
        raise WenzhenError(
            f"{adapter_dir} has no {ADAPTER_CONFIG}; pass a LoRA or prefix-tuning adapter directory"
        )
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    family = detect_family(target)
    tokenizer = family.load_tokenizer(target)
    model = family.load_model(target, torch_dtype, torch_device, quantization)
    if adapter_dir is not None:
        model = attach_adapter(model, adapter_dir, family)
    return LoadedModel(model=model, tokenizer=tokenizer, family=family, path=target, adapter=adapter_dir)
