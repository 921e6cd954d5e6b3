"""Speed switches of a training run (`performance:` in the config): the attention kernel, compilation, and the
automatic choice of row length, checkpointing and compilation for the GPU, the model and the data.

The measured effect of each on an H100 is in benchmarks/results/train_throughput.md (see docs/training.md).
"""

import importlib.util
import logging
import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
from transformers import PreTrainedModel

from wenzhen.errors import WenzhenError

if TYPE_CHECKING:
    from wenzhen.train.config import TrainConfig

log = logging.getLogger(__name__)


def choose_attention(model: PreTrainedModel, device: torch.device, requested: str, packed: bool) -> str:
    """The attention kernel: `requested`, or for `auto` on a GPU flash-attention 2 where installed, else flex
    attention for packed batches (13.8k vs 9.1k tokens/s for SDPA on an H100, benchmarks/results/
    train_throughput.md), else SDPA. On CPU, SDPA (flex attention has no CPU backward).

    All honour packed `position_ids`: SDPA through a block-diagonal mask, flex attention through a sparse block
    mask, flash-attention through variable-length kernels, so packing never lets a token see another sample.
    """
    if requested == "auto" and device.type == "cuda":
        if importlib.util.find_spec("flash_attn") is not None:
            requested = "flash_attention_2"
        elif packed:
            requested = "flex_attention"
    if requested != "auto":
        try:
            model.set_attn_implementation(requested)
        except (ImportError, ValueError) as exc:
            raise WenzhenError(
                f"performance.attention {requested} is not available here ({str(exc)[:120]}); use auto or sdpa"
            ) from None
    return str(model.config._attn_implementation)


def repeated_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The outermost list of identical blocks (the decoder layers) of a transformers model, peft-wrapped or not."""
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 1 and _all_one_class(module):
            return module
    raise WenzhenError(
        f"{type(model).__name__} has no list of repeated layers to compile; set performance.compile: false"
    )


def _all_one_class(modules: torch.nn.ModuleList) -> bool:
    return len({type(child) for child in modules}) == 1


def compile_decoder_layers(model: torch.nn.Module) -> int:
    """torch.compile every decoder layer in place; returns how many.

    Regional rather than whole-model compilation: the layers share one code object, so one compilation (seconds,
    not minutes) serves all of them, the lm_head with its varying number of labelled positions stays eager
    instead of recompiling, and module names, state dicts, peft saving and gradient checkpointing are unchanged
    (`Module.compile` keeps the module and only swaps its call).
    """
    layers = repeated_layers(model)
    embeddings = model.get_input_embeddings()  # type: ignore[operator]
    if not any(parameter.requires_grad for parameter in embeddings.parameters()):
        # A frozen embedding (LoRA, QLoRA) hands the first layer an input without requires_grad and every other
        # layer one with it: a guard that differs, so the first layer would compile its own forward and backward
        # graphs, doubling the first step's compile time. With the embedding's output marked as requiring grad,
        # all layers share one graph; the price is the first layer's input gradient (under 0.5% of a step).
        model.enable_input_require_grads()  # type: ignore[operator]
    for layer in layers:
        layer.compile()
    log.info("compiled %d %s layers", len(layers), type(layers[0]).__name__)
    return len(layers)


# Calibration of the automatic choice, from benchmarks/results/train_throughput.json (ChatGLM3-6B LoRA, bf16,
# H100 80GB, packed rows, chunked sparse-logits loss): peak allocated memory minus the 11.6 GiB of weights, per
# token of a row, per unit of layers x (hidden + intermediate) = 28 x (4096 + 13696):
#   8k rows, compiled, no checkpointing 43.2 GiB -> 8.3 bytes; the same uncompiled 52.5 GiB -> 10.8 bytes;
#   checkpointing, compiled: 1k rows 12.5 GiB, 2k rows 13.7 GiB -> 1.19 GiB per 1k tokens -> 2.5 bytes (the slope,
#   which overestimates both points by 0.3 GiB rather than underestimating longer rows).
ACTIVATION_BYTES = {(False, True): 8.3, (False, False): 10.8, (True, True): 2.5, (True, False): 2.5}
# Step time = max(launch floor, per-token GPU time). 8k compiled rows ran at 19.7k tokens/s (50.7 us a token for
# 6.24B parameters, 92% of the GPU busy); 1k and 2k checkpointed rows both took about 0.2 s a step, the GPU a
# third busy: a floor set by kernel launches, not by the tokens (both checkpointed: without, the floor is taken as
# 3/4 of that). Checkpointing recomputes the forward: 4/3 the launches and the arithmetic.
SECONDS_PER_TOKEN_PER_PARAMETER = 50.7e-6 / 6.24e9
LAUNCH_FLOOR_SECONDS = 0.2 * 3 / 4
RECOMPUTE_FACTOR = 4 / 3
# Each row (micro-step) also pays its loss, sparse-logits gather and launch tail outside the overlapped part. Not
# measured separately: an assumed 20 ms, so that of two rows the model rates alike the longer one wins.
ROW_OVERHEAD_SECONDS = 0.02
# QLoRA's 4-bit (bitsandbytes NF4) base: peft's prepare_model_for_kbit_training keeps embeddings, norms and the
# output layer in fp32, so the residual stream and the norms' outputs are fp32 where LoRA's are bf16. Measured on an
# H200 capped at 16 GiB (benchmarks/results/gpu_workflow_runs/h200-qlora-trial.md): 4 checkpointed rows of 4096,
# 9.74 GiB allocated at peak against 9.39 from bf16 LoRA's calibration -> 1.07x bf16's activations (1.1 here).
# Its layers stay uncompiled: compiled, the same plan ran at 6,996 tokens/s against 8,416 eager (bitsandbytes'
# dequantization is an opaque op to inductor; the rest gained less than the compiled graph's overhead cost).
FOUR_BIT_ACTIVATION_FACTOR = 1.1
# Planning keeps this share of the usable memory, and a further GiB, for the allocator's fragmentation.
MEMORY_SAFETY = 0.9
MEMORY_RESERVE_GIB = 1.0
MAX_ROWS_PER_STEP = 256
ROW_MULTIPLE = 64


@dataclass(frozen=True)
class SpeedPlan:
    """The performance settings a run uses and why (logged at the start, recorded in run.json)."""

    row_tokens: int | None
    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    gradient_checkpointing: bool
    compile: bool
    fused_loss: bool
    memory_gib: float | None
    estimated_peak_gib: float | None
    estimated_tokens_per_second: float | None
    reason: str
    length_grouped: bool = False  # preference pairs: batches of similar lengths (less padding)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields (run.json's `performance_plan`)."""
        return asdict(self)


@dataclass(frozen=True)
class Hardware:
    """What the planner needs of the GPU and the loaded model."""

    usable_gib: float  # memory this process may allocate in all, after the safety margins
    static_gib: (
        float  # weights (and, for full fine-tuning, gradients and optimizer states) before the first step
    )
    parameters: int
    shape_units: int  # layers x (hidden + intermediate)
    can_compile: bool  # Triton present, so torch.compile can build GPU kernels
    four_bit: bool = False  # a 4-bit (QLoRA) base: more activation memory per token, no compilation
    # liger-kernel present and the lm_head frozen (adapter methods): its fused linear cross-entropy then needs no
    # weight gradient, which under DDP would arrive outside the wrapped forward.
    can_fuse_loss: bool = False


def measure_hardware(
    model: PreTrainedModel, device: torch.device, full: bool, memory_gib: float | None
) -> Hardware:
    """The GPU's usable memory (within a per-process cap or `memory_gib`) and the loaded model's footprint."""
    free, total = torch.cuda.mem_get_info(device)
    cap = total * torch.cuda.get_per_process_memory_fraction(device)
    reserved = torch.cuda.memory_reserved(device)
    available = min(cap, free + reserved) / 2**30
    if memory_gib is not None:
        available = min(available, memory_gib)
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30
    # Full fine-tuning adds a gradient and two AdamW moments of each weight's size.
    static = weights * (4 if full else 1)
    packed = four_bit_elements(model)
    return Hardware(
        usable_gib=available * MEMORY_SAFETY - MEMORY_RESERVE_GIB,
        static_gib=static,
        # A 4-bit weight stores two parameters per byte element: the arithmetic is the unquantized model's.
        parameters=sum(p.numel() for p in model.parameters()) + packed,
        shape_units=shape_units(model.config),
        can_compile=importlib.util.find_spec("triton") is not None and not packed,
        four_bit=packed > 0,
        can_fuse_loss=liger_available() and not full,
    )


def liger_available() -> bool:
    """liger-kernel and the Triton it builds its kernels with are installed."""
    return (
        importlib.util.find_spec("liger_kernel") is not None
        and importlib.util.find_spec("triton") is not None
    )


def four_bit_elements(model: torch.nn.Module) -> int:
    """Elements of the model's bitsandbytes 4-bit weights (each packs two parameters), 0 for other models."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return 0
    from bitsandbytes.nn import Params4bit

    return sum(p.numel() for p in model.parameters() if isinstance(p, Params4bit))


def shape_units(model_config: Any) -> int:
    """layers x (hidden + intermediate) of a transformers config: what per-token activations scale with."""
    text = getattr(model_config, "get_text_config", lambda: model_config)()
    hidden = int(getattr(text, "hidden_size", 0) or 0)
    layers = int(getattr(text, "num_hidden_layers", 0) or 0)
    intermediate = int(getattr(text, "intermediate_size", 0) or 4 * hidden)
    return layers * (hidden + intermediate)


def estimate_peak_gib(hardware: Hardware, row_tokens: int, checkpointing: bool, compiled: bool) -> float:
    """Peak allocated GPU memory of a micro-batch of one row."""
    per_token = ACTIVATION_BYTES[(checkpointing, compiled)] * hardware.shape_units
    if hardware.four_bit:
        per_token *= FOUR_BIT_ACTIVATION_FACTOR
    return hardware.static_gib + row_tokens * per_token / 2**30


def estimate_tokens_per_second(hardware: Hardware, row_tokens: int, checkpointing: bool) -> float:
    """Steady training tokens/s of one GPU with rows of `row_tokens` (H100-calibrated; used to rank choices)."""
    gpu = row_tokens * hardware.parameters * SECONDS_PER_TOKEN_PER_PARAMETER
    step = max(LAUNCH_FLOOR_SECONDS, gpu) + ROW_OVERHEAD_SECONDS
    # Recomputation repeats the forward's kernels as well as its arithmetic.
    return row_tokens / (step * RECOMPUTE_FACTOR if checkpointing else step)


def fastest_fit(
    hardware: Hardware,
    longest: int,
    per_gpu_tokens: int,
    compiled: bool,
    checkpointing_options: tuple[bool, ...],
) -> tuple[int, int, bool] | None:
    """(row tokens, rows per step, checkpointing) that fits with the best estimated speed, the rows splitting the
    GPU's share of the step evenly; of the choices within 2% of the best, the one needing the least memory."""
    splits = {
        max(round_up(longest, ROW_MULTIPLE), round_up(math.ceil(per_gpu_tokens / count), ROW_MULTIPLE)): count
        for count in range(MAX_ROWS_PER_STEP, 0, -1)
    }
    fitting = [
        (estimate_tokens_per_second(hardware, row, checkpointing), peak, row, count, checkpointing)
        for row, count in splits.items()
        for checkpointing in checkpointing_options
        if (peak := estimate_peak_gib(hardware, row, checkpointing, compiled)) <= hardware.usable_gib
    ]
    if not fitting:
        return None
    best = max(choice[0] for choice in fitting)
    near_best = [choice for choice in fitting if choice[0] >= best / 1.02]
    _, _, row, count, checkpointing = min(near_best, key=lambda choice: choice[1])
    return row, count, checkpointing


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def plan_performance(
    config: "TrainConfig",
    hardware: Hardware | None,
    sample_lengths: list[int],
    world: int,
    packed: bool,
    allow_checkpointing: bool,
) -> tuple["TrainConfig", SpeedPlan]:
    """Resolve every `auto` of `performance` (and an unset `training_args.gradient_checkpointing`) for this GPU,
    model and data; return the resolved config and the plan. Explicit settings are kept as they are.

    On a GPU with packing, rows are the fastest the memory model says fit (`fastest_fit`), compiled where Triton is
    present; the optimizer step keeps `step_tokens` (or the recipe's conversations' worth of tokens) by setting the
    row count per step. Elsewhere (CPU, unpacked methods) the recipe runs as written, uncompiled.
    """
    speed, args = config.performance, config.training_args
    explicit_checkpointing = args.gradient_checkpointing
    on_gpu = hardware is not None
    can_compile = hardware is not None and hardware.can_compile
    rows_auto = speed.row_tokens == "auto"
    on_gpu_rows = rows_auto and packed and on_gpu
    row_tokens: int | None = None if rows_auto else speed.row_tokens  # type: ignore[assignment]
    batch, accumulation = args.per_device_train_batch_size, args.gradient_accumulation_steps
    mean = sum(sample_lengths) / max(len(sample_lengths), 1)
    longest = max(sample_lengths, default=config.max_length)
    target = speed.step_tokens or round(batch * accumulation * world * mean)
    usable = round(hardware.usable_gib, 1) if hardware is not None else None
    peak: float | None = None
    rate: float | None = None
    why: list[str] = []
    compiled = speed.compile if speed.compile != "auto" else bool(can_compile and (on_gpu_rows or row_tokens))
    fused = choose_fused_loss(speed.fused_loss, hardware, speed.sparse_logits)
    if on_gpu_rows and hardware is not None:
        options: tuple[bool, ...] = (False, True) if allow_checkpointing else (False,)
        if explicit_checkpointing is not None:
            options = (explicit_checkpointing,)
        fit = fastest_fit(hardware, longest, math.ceil(target / world), compiled, options)
        if fit is None:
            row_tokens, checkpointing = round_up(longest, ROW_MULTIPLE), options[-1]
            accumulation = max(1, round(target / (row_tokens * world)))
            why.append(f"even rows of the longest sample ({longest} tokens) may not fit {usable} GiB")
        else:
            row_tokens, accumulation, checkpointing = fit
        batch = 1
        source = (
            "step_tokens"
            if speed.step_tokens
            else f"{args.per_device_train_batch_size * args.gradient_accumulation_steps * world} conversations "
            f"of {mean:.0f} tokens"
        )
        why.append(
            f"{target:,} tokens per step ({source}) as {accumulation} row(s) of {row_tokens} per GPU x {world} GPU(s)"
        )
    elif rows_auto and packed and speed.step_tokens:
        # CPU: the same optimizer step as on a GPU (rows of the longest sample, accumulated), uncompiled.
        row_tokens = round_up(longest, ROW_MULTIPLE)
        batch, accumulation = 1, max(1, round(speed.step_tokens / (row_tokens * world)))
        checkpointing = bool(explicit_checkpointing)
        why.append(f"step_tokens {speed.step_tokens:,} as {accumulation} row(s) of {row_tokens}")
    else:
        checkpointing = bool(explicit_checkpointing)
        if not on_gpu:
            why.append("CPU: the recipe as written")
        elif not packed:
            why.append("unpacked batches: the recipe as written")
    if hardware is not None and hardware.four_bit:
        why.append(f"4-bit base: activations {FOUR_BIT_ACTIVATION_FACTOR}x bf16's, layers uncompiled")
    if hardware is not None and row_tokens:
        peak = round(estimate_peak_gib(hardware, row_tokens, checkpointing, compiled), 1)
        rate = round(estimate_tokens_per_second(hardware, row_tokens, checkpointing) * world)
        why.append(f"estimated peak {peak} of {usable} usable GiB")
    resolved = config.model_copy(
        update={
            "performance": speed.model_copy(
                update={"row_tokens": row_tokens, "compile": compiled, "fused_loss": fused}
            ),
            "training_args": args.model_copy(
                update={
                    "gradient_checkpointing": checkpointing,
                    "per_device_train_batch_size": batch,
                    "gradient_accumulation_steps": accumulation,
                    "per_device_eval_batch_size": 1 if on_gpu_rows else args.per_device_eval_batch_size,
                }
            ),
        }
    )
    plan = SpeedPlan(
        row_tokens=row_tokens,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        gradient_checkpointing=checkpointing,
        compile=compiled,
        fused_loss=fused,
        memory_gib=usable,
        estimated_peak_gib=peak,
        estimated_tokens_per_second=rate,
        reason="; ".join(why),
    )
    return resolved, plan


def choose_fused_loss(requested: bool | str, hardware: Hardware | None, sparse_logits: bool) -> bool:
    """`performance.fused_loss` resolved: auto is on for a GPU with liger-kernel installed (and sparse_logits on,
    the loss path it replaces); an explicit true where that is missing is an error that says what to change."""
    possible = hardware is not None and hardware.can_fuse_loss and sparse_logits
    if requested == "auto":
        return possible
    if requested and not possible:
        missing = (
            "performance.sparse_logits: true"
            if not sparse_logits
            else "a CUDA GPU"
            if hardware is None
            else "liger-kernel (pip install liger-kernel)"
            if not liger_available()
            else "a frozen lm_head (LoRA, QLoRA or P-Tuning v2)"
        )
        raise WenzhenError(f"performance.fused_loss: true needs {missing}; set it to auto or false")
    return bool(requested)


def describe(plan: SpeedPlan, attention: str) -> str:
    """The one line logged at the start of a run."""
    if plan.length_grouped:
        rows = "preference pairs in length-grouped padded batches"
    else:
        rows = f"rows of {plan.row_tokens} tokens" if plan.row_tokens else "samples concatenated per batch"
    return (
        f"performance: {rows}, batch {plan.per_device_train_batch_size} x {plan.gradient_accumulation_steps} "
        f"accumulated, checkpointing {'on' if plan.gradient_checkpointing else 'off'}, "
        f"compile {'on' if plan.compile else 'off'}, loss {'fused (liger)' if plan.fused_loss else 'chunked'}, "
        f"attention {attention} ({plan.reason}; "
        "explicit performance.* / training_args keys override)"
    )


@dataclass(frozen=True)
class PairLengths:
    """What the planner needs of one encoded preference pair: prompt + chosen + rejected tokens (each prompt once,
    the issue's throughput unit) and its longer sequence (prompt + the longer answer: TRL's padded width)."""

    pair_tokens: int
    longest_sequence: int


def plan_preference_performance(
    config: "TrainConfig",
    hardware: Hardware | None,
    pairs: list[PairLengths],
    world: int,
    paired: bool,
    logits_bytes_per_token: int = 0,
) -> tuple["TrainConfig", SpeedPlan]:
    """The speed settings of a preference run, resolved like `plan_performance` does for SFT.

    TRL trains pairs as padded batches of 2 x pairs sequences (chosen and rejected, no packing), so the choice is
    how many pairs per micro-batch, and checkpointing: on a GPU (`row_tokens` auto), the optimizer step keeps
    `step_tokens` of prompt + chosen + rejected tokens (or the recipe's pairs per step) and is split into the
    fewest micro-batches whose worst case (every pair padded to the longest sequence, which the length-grouped
    order puts first) fits the memory model; compiled where Triton is present. The CPU runs the recipe's batches as
    written. Pairs always train in length-grouped batches (less padding); KTO (single answers with TRL's KL
    completions, in its own fixed order) runs as written. `logits_bytes_per_token`: memory a
    trainer that materialises the full vocabulary logits needs on top of the model's activations (TRL's ORPO).
    """
    speed, args = config.performance, config.training_args
    batch, accumulation = args.per_device_train_batch_size, args.gradient_accumulation_steps
    explicit_checkpointing = args.gradient_checkpointing
    checkpointing = bool(explicit_checkpointing)
    compiled = (
        speed.compile if speed.compile != "auto" else bool(hardware is not None and hardware.can_compile)
    )
    why: list[str] = []
    peak: float | None = None
    choices: list[tuple[float, int, bool, int, int]] = []
    usable = round(hardware.usable_gib, 1) if hardware is not None else None
    if hardware is None or not paired or speed.row_tokens != "auto" or not pairs:
        why.append("CPU: the recipe as written" if hardware is None else "the recipe as written")
    else:
        mean_pair = sum(pair.pair_tokens for pair in pairs) / len(pairs)
        longest = round_up(max(pair.longest_sequence for pair in pairs), ROW_MULTIPLE)
        # Length-grouped batches pad each pair to about its own longer sequence (rounded up for compilation).
        mean_padded = sum(round_up(pair.longest_sequence, ROW_MULTIPLE) for pair in pairs) / len(pairs)
        target = (
            math.ceil(speed.step_tokens / mean_pair / world) if speed.step_tokens else batch * accumulation
        )
        options: tuple[bool, ...] = (
            (explicit_checkpointing,) if explicit_checkpointing is not None else (False, True)
        )
        for option in options:
            fitting = [
                size
                for size in range(1, target + 1)
                if estimate_peak_gib(hardware, 2 * size * longest, option, compiled)
                + 2 * size * longest * logits_bytes_per_token / 2**30
                <= hardware.usable_gib
            ]
            if fitting:
                size = max(fitting)
                steps = math.ceil(target / size)
                size = math.ceil(target / steps)
                rate = estimate_tokens_per_second(hardware, round(2 * size * mean_padded), option)
                choices.append((rate, -steps, option, size, steps))
        if choices:
            _, _, checkpointing, batch, accumulation = max(choices)
            worst = 2 * batch * longest
            peak = (
                estimate_peak_gib(hardware, worst, checkpointing, compiled)
                + worst * logits_bytes_per_token / 2**30
            )
            peak = round(peak, 1)
            why.append(
                f"{target * world} pairs per step ({'step_tokens' if speed.step_tokens else 'the recipe'}, "
                f"{mean_pair:.0f} prompt+answer tokens a pair) as {accumulation} micro-batch(es) of {batch} pairs "
                f"per GPU x {world} GPU(s), length-grouped; worst case {batch} x 2 x {longest} tokens, estimated "
                f"peak {peak} of {usable} usable GiB"
            )
        else:
            batch, accumulation, checkpointing = 1, target, options[-1]
            why.append(f"even one pair of {longest} tokens may not fit {usable} GiB")
    resolved = config.model_copy(
        update={
            # TRL's preference trainers compute their own logits and loss: the fused SFT loss does not apply.
            "performance": speed.model_copy(update={"compile": compiled, "fused_loss": False}),
            "training_args": args.model_copy(
                update={
                    "gradient_checkpointing": checkpointing,
                    "per_device_train_batch_size": batch,
                    "gradient_accumulation_steps": accumulation,
                }
            ),
        }
    )
    plan = SpeedPlan(
        row_tokens=None,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        gradient_checkpointing=checkpointing,
        compile=compiled,
        fused_loss=False,
        memory_gib=usable,
        estimated_peak_gib=peak,
        estimated_tokens_per_second=None,
        reason="; ".join(why),
        length_grouped=paired,
    )
    return resolved, plan
