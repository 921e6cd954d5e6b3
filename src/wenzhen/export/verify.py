"""Verification of exported models: their logits on fixed medical prompts against the source they came from.

`wenzhen merge` compares the merged directory with base + adapter; `wenzhen export --format gguf` compares the GGUF
(read back) with the merged source (see `wenzhen.export.gguf`).
"""

import gc
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from wenzhen.errors import WenzhenError
from wenzhen.export.formats import ExportFormat
from wenzhen.models import load_model
from wenzhen.models.loading import resolve_device

if TYPE_CHECKING:
    from wenzhen.export.gguf import GGUFSource

log = logging.getLogger(__name__)

#: Chinese medical prompts the exported model and its source both answer during verification.
PROBE_CONVERSATIONS: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": "我最近总是头痛，晚上也睡不好，应该怎么办？"}],
    [
        {"role": "system", "content": "你是一名耐心的全科医生。"},
        {"role": "user", "content": "孩子发烧38.5度，精神还可以，需要马上去医院吗？"},
    ],
]
#: Largest |merged - (base + adapter)| logit difference accepted, relative to max(1, largest |logit|), by the
#: coarsest dtype involved (the export's weights or the verification's compute); see `verify_merge`.
RELATIVE_TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


def verification_dtype(export_dtype: torch.dtype, parameters: int, device: torch.device) -> torch.dtype:
    """fp32 when two fp32 copies of the model fit one after the other (the reference is freed first), else the
    export's own dtype (a 6B on a 24 GB CPU machine)."""
    import psutil

    available = (
        torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else psutil.virtual_memory().available
    )
    return torch.float32 if parameters * 4 * 1.3 < available else export_dtype


@torch.inference_mode()
def probe_logits(
    model: torch.nn.Module, prompts: list[list[int]], device: torch.device
) -> list[torch.Tensor]:
    """Full-vocabulary fp32 logits of each probe prompt (one at a time: no padding to get wrong)."""
    return [model(torch.tensor([ids], device=device)).logits.float().cpu() for ids in prompts]


def max_difference(left: list[torch.Tensor], right: list[torch.Tensor]) -> float:
    """Largest absolute logit difference over the probe prompts."""
    return max(float((a - b).abs().max()) for a, b in zip(left, right, strict=True))


def verify_merge(
    adapter_dir: Path,
    base_dir: Path,
    merged_dir: Path,
    layout: ExportFormat,
    export_dtype: torch.dtype,
    parameters: int,
    device: str | None,
    tolerance: float | None,
) -> dict[str, Any]:
    """Compare the merged model's logits with base + adapter on the probe prompts; raise beyond tolerance.

    In fp32 the two agree to float noise. In bf16/fp16, rounding W + BA once instead of W alone moves logits by an
    amount that depends on the model (measured 0.47 at logit scale 6.8 on a random 6B), so the limit also admits
    twice what peft's own in-place merge moves them by in the same dtype; a dropped or wrong update moves them
    by about the adapter's whole effect, which is reported beside. The reference is freed before the merged
    model is loaded, so memory holds one model at a time.
    """
    torch_device = resolve_device(device)
    compute = verification_dtype(export_dtype, parameters, torch_device)
    reference = load_model(adapter_dir, base=base_dir, dtype=compute, device=torch_device)
    prompts = [reference.family.encode_prompt(reference.tokenizer, c) for c in PROBE_CONVERSATIONS]
    expected = probe_logits(reference.model, prompts, torch_device)
    with reference.model.disable_adapter():
        base_only = probe_logits(reference.model, prompts, torch_device)
    reference.model.merge_adapter()
    peft_merged = probe_logits(reference.model, prompts, torch_device)
    del reference
    gc.collect()
    merged = layout.load_for_check(merged_dir, compute, torch_device)
    actual = probe_logits(merged, prompts, torch_device)
    del merged
    gc.collect()
    difference = max_difference(actual, expected)
    rounding = max_difference(peft_merged, expected)
    scale = max(1.0, *(float(e.abs().max()) for e in expected))
    relative = max(RELATIVE_TOLERANCE[export_dtype], RELATIVE_TOLERANCE[compute])
    limit = tolerance if tolerance is not None else max(relative * scale, 2 * rounding)
    argmax_agreement = sum(
        int((a.argmax(-1) == e.argmax(-1)).sum()) for a, e in zip(actual, expected, strict=True)
    ) / sum(len(p) for p in prompts)
    result = {
        "probe_prompts": len(prompts),
        "probe_tokens": sum(len(p) for p in prompts),
        "compute_dtype": str(compute).removeprefix("torch."),
        "device": str(torch_device),
        "max_abs_logit_diff": difference,
        "tolerance": limit,
        "peft_merge_max_abs_logit_diff": rounding,
        "adapter_effect_max_abs_logit": max_difference(expected, base_only),
        "max_abs_logit": scale,
        "argmax_agreement": argmax_agreement,
    }
    log.info(
        "verification: merged vs base + adapter max |logit diff| %.3g (tolerance %.3g, %s on %s); peft's own "
        "merge moves them by %.3g, the adapter itself by %.3g; argmax agreement %.1f%%",
        difference,
        limit,
        result["compute_dtype"],
        torch_device,
        rounding,
        result["adapter_effect_max_abs_logit"],
        100 * argmax_agreement,
    )
    if not difference <= limit:
        raise WenzhenError(
            f"verification failed: the merged model's logits differ from base + adapter by {difference:.3g} "
            f"(tolerance {limit:.3g}), so nothing was written; check that --base is the model the adapter was "
            "trained on, or pass --tolerance if the difference is expected rounding"
        )
    return result


# --- GGUF ------------------------------------------------------------------------------------------------------

#: Largest |GGUF - source| logit difference accepted, relative to max(1, largest |logit|), by --quant. f16 rounds
#: each weight to 11 significant bits; q8_0 to 8 bits per block of 32 with one f16 scale. Measured on the tiny
#: ChatGLM3 and the demo model (tests/export/test_gguf.py); a wrong layout or tensor moves logits by the scale itself.
GGUF_RELATIVE_TOLERANCE = {"f16": 1e-2, "q8_0": 1e-1}


def read_gguf_tensors(
    file: Path, source: "GGUFSource", dtype: torch.dtype
) -> Iterator[tuple[str, torch.Tensor]]:
    """The GGUF's tensors dequantised, under native transformers names, in `dtype`, one at a time (the `gguf`
    package's reader maps the file, so only the tensor being converted is in memory)."""
    import gguf

    reader = gguf.GGUFReader(file)

    def tensors() -> Iterator[tuple[str, torch.Tensor]]:
        for tensor in reader.tensors:
            array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
            shape = tuple(int(size) for size in reversed(tensor.shape.tolist()))
            yield tensor.name, torch.from_numpy(np.array(array, dtype=np.float32).reshape(shape)).to(dtype)

    return source.architecture.native_tensors(tensors(), source.config)


def load_gguf_for_check(file: Path, source: "GGUFSource", dtype: torch.dtype) -> torch.nn.Module:
    """The written GGUF as a transformers model: transformers' own GGUF loader where it reads the architecture
    (an independent reading of our layout), else the gguf reader mapped back by the architecture."""
    from transformers import AutoModelForCausalLM

    if source.architecture.transformers_reads:
        model: torch.nn.Module = AutoModelForCausalLM.from_pretrained(
            file.parent, gguf_file=file.name, dtype=dtype
        )
        return model.eval()
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(source.config, dtype=dtype)
    missing, unexpected = model.load_state_dict(
        dict(read_gguf_tensors(file, source, dtype)), strict=False, assign=True
    )
    if unexpected or [name for name in missing if name != "lm_head.weight"]:
        raise WenzhenError(
            f"the GGUF does not read back into the model (missing {missing}, unexpected {unexpected})"
        )
    if missing:
        model.tie_weights()  # type: ignore[operator]
    for module in model.modules():
        if any(buffer.is_meta for buffer in module.buffers(recurse=False)):
            # Rotary frequencies are computed from the config, not stored: a fresh rotary module has them.
            fresh = type(module)(config=source.config)
            for attribute, buffer in fresh.named_buffers(recurse=False):
                module.register_buffer(attribute, buffer, persistent=False)
    return model.eval()


def verify_gguf(source: "GGUFSource", file: Path, quant: str, tolerance: float | None) -> dict[str, Any]:
    """Compare the GGUF's logits (read back) with the source's (merged, or base + adapter) on the probe prompts."""
    torch_device = torch.device("cpu")
    compute = verification_dtype(torch.bfloat16, source_parameters(source), torch_device)
    reference = load_model(
        source.adapter or source.model_dir,
        base=source.model_dir if source.adapter else None,
        dtype=compute,
        device=torch_device,
    )
    prompts = [reference.family.encode_prompt(reference.tokenizer, c) for c in PROBE_CONVERSATIONS]
    expected = probe_logits(reference.model, prompts, torch_device)
    del reference
    gc.collect()
    exported = load_gguf_for_check(file, source, compute)
    actual = probe_logits(exported, prompts, torch_device)
    del exported
    gc.collect()
    difference = max_difference(actual, expected)
    scale = max(1.0, *(float(e.abs().max()) for e in expected))
    limit = tolerance if tolerance is not None else GGUF_RELATIVE_TOLERANCE[quant] * scale
    argmax_agreement = sum(
        int((a.argmax(-1) == e.argmax(-1)).sum()) for a, e in zip(actual, expected, strict=True)
    ) / sum(len(p) for p in prompts)
    result = {
        "probe_prompts": len(prompts),
        "probe_tokens": sum(len(p) for p in prompts),
        "compute_dtype": str(compute).removeprefix("torch."),
        "reader": "transformers" if source.architecture.transformers_reads else "gguf",
        "max_abs_logit_diff": difference,
        "tolerance": limit,
        "max_abs_logit": scale,
        "argmax_agreement": argmax_agreement,
    }
    log.info(
        "verification: GGUF (%s) vs source max |logit diff| %.3g (tolerance %.3g), argmax agreement %.1f%%",
        quant,
        difference,
        limit,
        100 * argmax_agreement,
    )
    if not difference <= limit:
        raise WenzhenError(
            f"verification failed: the GGUF's logits differ from the source's by {difference:.3g} (tolerance "
            f"{limit:.3g}), so nothing was written; pass --tolerance if the difference is expected rounding"
        )
    return result


def source_parameters(source: "GGUFSource") -> int:
    """About the parameter count of the source, from its weight files' size (2 bytes a parameter: an fp32
    source counts double, which only makes the check choose the smaller dtype sooner)."""
    from wenzhen.models.checkpoint import find_checkpoint

    return find_checkpoint(source.model_dir).total_bytes // 2
