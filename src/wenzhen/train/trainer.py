"""`train(data_dir, model_dir, config, resume)`: fine-tune a chat model from a typed config.

Built on `transformers.Trainer`, which already restores model, optimizer, scheduler, RNG and data position on
resume and runs unchanged under torchrun / accelerate (DDP, FSDP, DeepSpeed). wenzhen adds what it lacks:
atomic checkpoints, a stop on the first non-finite loss or gradient, padding-free packing, the official ChatGLM3
encoding, and the files a person reads (progress bar, metrics.jsonl, TensorBoard, curve PNG, summary).

A run folder (`training_args.output_dir`) ends up with:
`run.json` (base model, chat format, resolved config), `checkpoint-N/` (adapter-only for PEFT methods),
`final/` (the adapter, or the full model for `full`), `metrics.jsonl`, `tensorboard/`, `training_curve.png`,
`summary.json`, `encoding.json` (kept / truncated / skipped samples and why).
"""

import json
import logging
import math
import os
import shutil
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from transformers import (
    PreTrainedModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
    set_seed,
)
from transformers.integrations import TensorBoardCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from wenzhen.errors import WenzhenError
from wenzhen.io import check_apart, read_jsonl, write_json
from wenzhen.models import LoadedModel
from wenzhen.runinfo import RunInfo, read_run_info, write_run_info
from wenzhen.train.callbacks import (
    CURVE_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    MetricsLog,
    ProgressBar,
    StepClock,
    format_summary,
    peak_memory_bytes,
    plot_curve,
    read_metrics,
    world_size,
)
from wenzhen.train.checkpoints import (
    STAGING,
    complete_checkpoints,
    finished_step,
    publish,
    resolve_resume,
    rotate_checkpoints,
)
from wenzhen.train.config import PerformanceConfig, TrainConfig
from wenzhen.train.encoding import EncodedSample, EncodingReport, encode_rows
from wenzhen.train.evaluation import DevGeneration
from wenzhen.train.loss import FusedLoss, sparse_logits_loss
from wenzhen.train.methods import METHODS, count_parameters, enable_gradient_checkpointing
from wenzhen.train.packing import RowDataset, SampleDataset, make_collator, pack_rows
from wenzhen.train.performance import (
    SpeedPlan,
    choose_attention,
    compile_decoder_layers,
    describe,
    measure_hardware,
    plan_performance,
)

log = logging.getLogger(__name__)
FINAL = "final"
ENCODING_FILE = "encoding.json"


class NonFiniteError(WenzhenError):
    """The loss or gradient became NaN or infinite."""


@dataclass
class TrainResult:
    """Where a finished run left its outputs, and its summary."""

    output_dir: Path
    final_dir: Path
    summary: dict[str, Any]


class HostReadings:
    """Scalars a training step produces on the GPU (loss, gradient norm, token count), copied to the host without
    waiting: each copy is queued behind the work that computes it and read once a CUDA event says that work is
    done. Reading them directly (`.item()`) would stall the CPU until the GPU drains, leaving the GPU idle while
    the CPU then prepares the next step. On a CPU the values are ready at once.
    """

    def __init__(self) -> None:
        self.pending: deque[tuple[str, int, torch.Tensor, Any]] = deque()

    def add(self, kind: str, step: int, value: torch.Tensor) -> None:
        """Queue `value` (a tensor of the step `step`) for reading."""
        value = value.detach()
        if value.device.type != "cuda":
            self.pending.append((kind, step, value, None))
            return
        host = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
        host.copy_(value, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.pending.append((kind, step, host, event))

    def ready(self, wait: bool) -> list[tuple[str, int, torch.Tensor]]:
        """The queued values whose work is done, oldest first (`wait`: every queued value)."""
        done = []
        while self.pending:
            kind, step, value, event = self.pending[0]
            if event is not None and not wait and not event.query():
                break
            if event is not None:
                event.synchronize()
            self.pending.popleft()
            done.append((kind, step, value))
        return done


class WenzhenTrainer(Trainer):
    """`Trainer` with atomic checkpoints, a stop on non-finite values and generation metrics on the dev split."""

    _staging = False
    dev_generation: DevGeneration | None = None
    chat_model: LoadedModel | None = None
    performance: PerformanceConfig | None = None
    fused_loss: FusedLoss | None = None

    def evaluate(
        self, eval_dataset: Any = None, ignore_keys: Any = None, metric_key_prefix: str = "eval"
    ) -> Any:
        """Dev loss (every process), then generated answers scored on the main process."""
        metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        if self.dev_generation is not None and self.chat_model is not None and self.args.should_save:
            loaded = replace(self.chat_model, model=self.model)
            scores = {
                f"{metric_key_prefix}_{key}": value
                for key, value in self.dev_generation.score(loaded).items()
            }
            self.log(scores)
            metrics.update(scores)
        self.accelerator.wait_for_everyone()
        return metrics

    def _get_output_dir(self, trial: Any) -> str:
        run_dir = super()._get_output_dir(trial)
        return os.path.join(run_dir, STAGING) if self._staging else run_dir

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        """Write `checkpoint-N` under `.staging/`, then rename it into place once every process has finished."""
        self.check_readings(wait=True)
        run_dir = Path(super()._get_output_dir(trial))
        self._staging = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = False
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            name = f"checkpoint-{self.state.global_step}"
            publish(run_dir / STAGING / name, run_dir / name)
            rotate_checkpoints(run_dir, self.args.save_total_limit, self.state.best_model_checkpoint)
        self.accelerator.wait_for_everyone()

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        """With `performance.sparse_logits`, logits only where a label is; with `fused_loss`, lm_head and loss fused
        (see `wenzhen.train.loss`)."""
        speed = self.performance
        if return_outputs or speed is None or not speed.sparse_logits or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if speed.fused_loss is True:
            if self.fused_loss is None:
                self.fused_loss = FusedLoss(chunk=speed.loss_chunk)
            loss = self.fused_loss(
                model, inputs, num_items_in_batch, unwrapped=self.accelerator.unwrap_model(model)
            )
        else:
            loss = sparse_logits_loss(model, inputs, num_items_in_batch, chunk=speed.loss_chunk)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # DDP averages gradients over processes, but the loss is already divided by the global token count.
            loss = loss * self.accelerator.num_processes
        return loss

    # The loss, gradient norm and token count of each step reach the host through `HostReadings`, without making the
    # CPU wait for the GPU; they are checked (and the tokens counted) once their step's work is done, and all of
    # them before anything is logged or saved.
    readings: "HostReadings | None" = None

    def _readings(self) -> "HostReadings":
        if self.readings is None:
            self.readings = HostReadings()
        return self.readings

    def training_step(
        self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._readings().add("loss", self.state.global_step + 1, loss)
        self.check_readings(wait=False)
        return loss

    def _get_grad_norm(self, model: torch.nn.Module, grad_norm: Any = None) -> Any:
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        # fp16 loss scaling produces infinite gradients on purpose and skips those steps; bf16/fp32 never should.
        if isinstance(grad_norm, torch.Tensor) and not self.args.fp16:
            self._readings().add("gradient norm", self.state.global_step + 1, grad_norm)
        elif grad_norm is not None and not self.args.fp16 and not math.isfinite(float(grad_norm)):
            self._stop_non_finite(f"the gradient norm is {float(grad_norm)}", self.state.global_step + 1)
        return grad_norm

    def _track_num_input_tokens(self, inputs: dict[str, Any]) -> None:
        """transformers' non-padding token count, read from the GPU without waiting for it."""
        ids = inputs.get("input_ids")
        if ids is None:
            return super()._track_num_input_tokens(inputs)
        mask = inputs.get("attention_mask")
        pad = getattr(self.processing_class, "pad_token_id", None)
        count = (
            mask.sum()
            if mask is not None
            else (ids != pad).sum()
            if pad is not None
            else ids.new_tensor(ids.numel())
        )
        self._readings().add("tokens", self.state.global_step + 1, self.accelerator.gather(count.reshape(1)))
        self.check_readings(wait=False)

    def check_readings(self, wait: bool) -> None:
        """Count the tokens and check the losses and gradient norms whose steps are done (`wait`: all of them)."""
        for kind, step, value in self._readings().ready(wait):
            if kind == "tokens":
                self.state.num_input_tokens_seen += int(value.sum())
            elif not torch.isfinite(value).all():
                self._stop_non_finite(f"the {kind} is {value.float().max().item()}", step)

    def _maybe_log_save_evaluate(self, *args: Any, **kwargs: Any) -> None:
        if self.control.should_log or self.control.should_save or self.control.should_evaluate:
            self.check_readings(wait=True)
        super()._maybe_log_save_evaluate(*args, **kwargs)

    def _stop_non_finite(self, what: str, step: int) -> None:
        checkpoints = complete_checkpoints(Path(self.args.output_dir))
        last = (
            f"the last good checkpoint is {checkpoints[-1]}" if checkpoints else "no checkpoint was saved yet"
        )
        raise NonFiniteError(
            f"training stopped at step {step}: {what}; {last}. Lower learning_rate (or use bf16/fp32 instead of "
            "fp16), then resume from that checkpoint or start over"
        )


def training_device(config: TrainConfig) -> torch.device:
    """This process's device: its own GPU under torchrun / accelerate, else the first GPU, else the CPU."""
    if config.training_args.use_cpu or not torch.cuda.is_available():
        return torch.device("cpu")
    if "LOCAL_RANK" not in os.environ and torch.cuda.device_count() > 1:
        # The Trainer would wrap the model in DataParallel, which splits packed rows across GPUs.
        raise WenzhenError(
            f"this process sees {torch.cuda.device_count()} GPUs; train through the `wenzhen train` command "
            "(one worker per GPU) or torchrun, or set CUDA_VISIBLE_DEVICES to one GPU"
        )
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def choose_precision(config: TrainConfig, device: torch.device) -> tuple[bool, bool]:
    """(bf16, fp16): bf16 where the GPU supports it, fp16 only on GPUs without bf16, fp32 on CPU."""
    args = config.training_args
    if device.type != "cuda":
        if args.bf16 or args.fp16:
            log.warning("notice: training on CPU runs in fp32; bf16/fp16 in training_args are ignored")
        return False, False
    bf16_ok = torch.cuda.is_bf16_supported()
    if args.fp16 and bf16_ok:
        log.warning(
            "notice: fp16 loses loss precision (loss 0 / NaN); this GPU supports bf16, which is used instead"
        )
        return True, False
    if args.bf16 and not bf16_ok:
        raise WenzhenError("this GPU has no bf16 support; set training_args.fp16: true instead of bf16")
    if args.bf16 is False and not args.fp16:
        return False, False
    return bf16_ok, not bf16_ok


def resolve_deepspeed(config: TrainConfig, config_dir: Path | None) -> str | dict[str, Any] | None:
    """The DeepSpeed config (a path relative to the YAML file's folder, or inline); needs deepspeed installed."""
    deepspeed = config.training_args.deepspeed
    if deepspeed is None:
        return None
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        raise WenzhenError(
            "training_args.deepspeed is set but deepspeed is not installed; `pip install deepspeed` "
            "or remove the key (FSDP and DDP need no extra package)"
        )
    if isinstance(deepspeed, dict):
        return deepspeed
    path = Path(deepspeed)
    if not path.is_absolute() and config_dir is not None and (config_dir / path).is_file():
        path = config_dir / path
    if not path.is_file():
        raise WenzhenError(f"DeepSpeed config {deepspeed} not found; give its path relative to the YAML file")
    return str(path)


def read_split(data_dir: Path, name: str | None, split: str, required: bool) -> list[Any] | None:
    """Rows of one split file, None when it is optional and absent."""
    if name is None:
        return None
    path = data_dir / name
    sibling = path.with_suffix({".json": ".jsonl", ".jsonl": ".json"}.get(path.suffix, path.suffix))
    if not path.is_file() and sibling.is_file():
        # The official configs say train.json; `wenzhen data prepare` writes train.jsonl (same JSON Lines content).
        log.warning("notice: %s not found; reading %s", path.name, sibling.name)
        path = sibling
    if not path.is_file():
        if required:
            raise WenzhenError(
                f"{path} does not exist; DATA_DIR must hold the {split} file named in data_config"
            )
        log.warning("notice: no %s file %s; training without evaluation", split, path)
        return None
    return read_jsonl(path)


def build_training_arguments(
    config: TrainConfig, output_dir: Path, device: torch.device, has_dev: bool, config_dir: Path | None
) -> TrainingArguments:
    """The typed `training_args` onto `transformers.TrainingArguments`."""
    args = config.training_args
    bf16, fp16 = choose_precision(config, device)
    eval_strategy = args.eval_strategy if has_dev else "no"
    return TrainingArguments(
        output_dir=str(output_dir),
        max_steps=args.max_steps,
        num_train_epochs=args.num_train_epochs,
        learning_rate=args.learning_rate,
        lr_scheduler_type=args.lr_scheduler_type,
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,
        adam_beta1=args.adam_beta1,
        adam_beta2=args.adam_beta2,
        adam_epsilon=args.adam_epsilon,
        optim=args.optim,
        max_grad_norm=args.max_grad_norm,
        per_device_train_batch_size=args.per_device_train_batch_size,
        per_device_eval_batch_size=args.per_device_eval_batch_size or args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        dataloader_num_workers=args.dataloader_num_workers,
        remove_unused_columns=args.remove_unused_columns,
        save_strategy=args.save_strategy,
        save_steps=args.save_steps,
        save_total_limit=args.save_total_limit,
        log_level=args.log_level,
        logging_strategy=args.logging_strategy,
        logging_steps=args.logging_steps,
        logging_first_step=args.logging_first_step,
        eval_strategy=eval_strategy,
        eval_steps=args.eval_steps,
        seed=args.seed,
        data_seed=args.data_seed,
        bf16=bf16,
        fp16=fp16,
        use_cpu=device.type == "cpu",
        debug=args.debug,
        deepspeed=resolve_deepspeed(config, config_dir),
        fsdp=args.fsdp,
        fsdp_config=args.fsdp_config,
        ddp_find_unused_parameters=args.ddp_find_unused_parameters,
        report_to=other_reporters(args.report_to),
        include_num_input_tokens_seen="non_padding",
        # A non-finite loss stops the run (WenzhenTrainer); the filter's per-step check would stall the GPU.
        logging_nan_inf_filter=False,
        disable_tqdm=True,
    )


def other_reporters(report_to: str | list[str]) -> list[str] | str:
    """The configured experiment trackers except TensorBoard, which wenzhen always writes to `tensorboard/`."""
    names = [report_to] if isinstance(report_to, str) else list(report_to)
    kept = [name for name in names if name not in ("tensorboard", "none")]
    return kept or "none"


def encode_splits(
    data_dir: Path, config: TrainConfig, loaded: Any
) -> tuple[list[EncodedSample], list[EncodedSample], dict[str, EncodingReport]]:
    """Encode train (required) and dev (optional) with the family's chat format."""
    data = config.data_config
    train_rows = read_split(data_dir, data.train_file, "train", required=True) or []
    dev_rows = read_split(data_dir, data.val_file, "dev", required=False)
    reports = {}
    train_samples, reports["train"] = encode_rows(
        train_rows,
        loaded.family,
        loaded.tokenizer,
        config.max_length,
        config.truncation,
        source=data.train_file,
    )
    if not train_samples:
        problems = "; ".join(reports["train"].problems[:3])
        raise WenzhenError(f"no usable training conversation in {data_dir / data.train_file} ({problems})")
    dev_samples: list[EncodedSample] = []
    if dev_rows:
        dev_samples, reports["dev"] = encode_rows(
            dev_rows,
            loaded.family,
            loaded.tokenizer,
            config.max_length,
            config.truncation,
            source=str(data.val_file),
        )
        limit = config.training_args.max_eval_samples
        dev_samples = dev_samples[:limit] if limit else dev_samples
    for split, report in reports.items():
        if report.skipped_invalid or report.skipped_no_labels:
            log.warning(
                "%s: skipped %d invalid and %d answer-less conversations (see %s)",
                split,
                report.skipped_invalid,
                report.skipped_no_labels,
                ENCODING_FILE,
            )
    return train_samples, dev_samples, reports


def build_datasets(
    config: TrainConfig,
    train_samples: list[EncodedSample],
    dev_samples: list[EncodedSample],
    tokenizer: Any,
    packed: bool,
    attention: str,
) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset | None, Any]:
    """Train and dev datasets with their collator: fixed-length packed rows when `performance.row_tokens` is set,
    else samples batched by the collator (flattened when packing, right-padded otherwise)."""
    row_tokens = config.performance.row_tokens
    if not packed or not isinstance(row_tokens, int):
        dev = SampleDataset(dev_samples) if dev_samples else None
        collator = make_collator(packed, tokenizer, flash_attention=attention.startswith("flash"))
        return SampleDataset(train_samples), dev, collator
    longest = max(len(sample.input_ids) for sample in [*train_samples, *dev_samples])
    if row_tokens < longest:
        raise WenzhenError(
            f"performance.row_tokens ({row_tokens}) is shorter than the longest encoded conversation ({longest} "
            f"tokens; at most max_input_length + max_output_length + 1 = {config.max_length}); raise it"
        )
    seed, pad_id = config.training_args.seed, tokenizer.pad_token_id
    train_rows = RowDataset(pack_rows(train_samples, row_tokens, seed, pad_id))
    dev_rows = RowDataset(pack_rows(dev_samples, row_tokens, seed, pad_id)) if dev_samples else None
    return train_rows, dev_rows, default_data_collator


def prepare_model(loaded: Any, config: TrainConfig) -> torch.nn.Module:
    """Apply the tuning method to the loaded base model."""
    model: PreTrainedModel = loaded.model
    model.config.use_cache = False  # a KV cache in training would also switch off packed-sequence masking
    method = METHODS.get(config.method_name)
    if config.training_args.gradient_checkpointing:
        if not method.supports_gradient_checkpointing:
            raise WenzhenError(
                f"{method.name} cannot use gradient checkpointing (peft passes its prefixes through the KV cache); "
                "set training_args.gradient_checkpointing: false"
            )
        enable_gradient_checkpointing(model)
    # Adapter initialisation draws random numbers: seed first so reruns and resumed runs start identically.
    set_seed(config.training_args.seed)
    prepared = method.prepare(model, config, loaded.family)
    prepared.train()
    return prepared


def save_final(trainer: WenzhenTrainer, output_dir: Path) -> Path:
    """Save the adapter (or the full model) and tokenizer into `final/`, atomically."""
    final = output_dir / FINAL
    staged = output_dir / STAGING / FINAL
    trainer.save_model(str(staged))
    trainer.accelerator.wait_for_everyone()
    if trainer.args.should_save:
        publish(staged, final)
    trainer.accelerator.wait_for_everyone()
    return final


def summarise(
    trainer: WenzhenTrainer,
    config: TrainConfig,
    output_dir: Path,
    final: Path,
    device: torch.device,
    seconds: float,
    reports: dict[str, EncodingReport],
    packed: bool,
    clock: StepClock,
) -> dict[str, Any]:
    """summary.json's content, from the trainer state and metrics.jsonl."""
    rows = read_metrics(output_dir / METRICS_FILE)
    losses = [row["loss"] for row in rows if "loss" in row]
    evals = [row["eval_loss"] for row in rows if "eval_loss" in row]
    trainable, total = count_parameters(trainer.model)
    tokens = int(trainer.state.num_input_tokens_seen or 0)
    steady = clock.tokens_per_second
    return {
        "method": config.method_name,
        "steps": trainer.state.global_step,
        "train_samples": reports["train"].kept,
        "tokens": tokens,
        "train_seconds": round(seconds, 3),
        "tokens_per_second": round(tokens / seconds, 1) if seconds > 0 else 0.0,
        "steady_tokens_per_second": round(steady, 1) if steady is not None else None,
        "first_step_seconds": round(clock.first_step_seconds, 1)
        if clock.first_step_seconds is not None
        else None,
        "first_loss": round(losses[0], 6) if losses else None,
        "final_loss": round(losses[-1], 6) if losses else None,
        "final_eval_loss": round(evals[-1], 6) if evals else None,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "peak_memory_bytes": peak_memory_bytes(device),
        "peak_memory_kind": "GPU allocated" if device.type == "cuda" else "process RSS",
        # What the process held on the card besides its CUDA context: allocations plus the allocator's cache.
        "peak_reserved_bytes": int(torch.cuda.max_memory_reserved(device)) if device.type == "cuda" else None,
        "device": str(device),
        "world_size": trainer.args.world_size,
        "packing": packed,
        "attention": str(trainer.model.config._attn_implementation),
        "final_dir": str(final),
    }


def train(
    data_dir: str | Path,
    model_dir: str | Path,
    config: TrainConfig,
    resume: str | None = None,
    *,
    config_dir: Path | None = None,
    callbacks: Sequence[TrainerCallback] = (),
) -> TrainResult:
    """Fine-tune `model_dir` on the conversations in `data_dir` as `config` says; return where it all went.

    `resume` is the official AUTO_RESUME argument: `yes` (newest checkpoint), a step number, a checkpoint path,
    or None/`no` to start over. `callbacks` are extra `TrainerCallback`s (tests use them to interrupt a run).
    """
    data_dir, model_dir = Path(data_dir), Path(model_dir)
    method = METHODS.get(config.method_name)
    device = training_device(config)
    method.check_available(device)
    output_dir = Path(config.training_args.output_dir)
    check_apart(output_dir, [data_dir, model_dir])
    resume_from = resolve_resume(output_dir, resume)
    finished = already_finished(output_dir, resume_from, config)
    if finished is not None:
        return finished
    if resume and resume.strip().lower() == "yes" and resume_from is None:
        log.warning(
            "notice: AUTO_RESUME yes but %s has no checkpoint yet; starting from the beginning", output_dir
        )

    if config.objective != "sft":
        from wenzhen.train.preference import train_preference

        summary = train_preference(
            data_dir, model_dir, config, resume_from, config_dir=config_dir, callbacks=callbacks
        )
        return TrainResult(output_dir=output_dir, final_dir=Path(summary["final_dir"]), summary=summary)

    loaded = method.load(model_dir, device, config)
    train_samples, dev_samples, reports = encode_splits(data_dir, config, loaded)
    packed = config.packing and method.supports_packing
    hardware = None
    if device.type == "cuda":
        hardware = measure_hardware(
            loaded.model, device, config.method_name == "full", config.performance.memory_gib
        )
    config, plan = plan_performance(
        config,
        hardware,
        [len(sample.input_ids) for sample in [*train_samples, *dev_samples]],
        world_size(),
        packed,
        method.supports_gradient_checkpointing,
    )
    attention = choose_attention(loaded.model, device, config.performance.attention, packed)
    log.info("%s", describe(plan, attention))
    model = prepare_model(loaded, config)
    if config.performance.compile is True and device.type == "cuda":
        compile_decoder_layers(model)
    if config.packing and not packed:
        log.warning(
            "notice: %s feeds its prefix through the KV cache; training on padded batches", method.name
        )
    train_dataset, eval_dataset, collator = build_datasets(
        config, train_samples, dev_samples, loaded.tokenizer, packed, attention
    )
    args = build_training_arguments(config, output_dir, device, bool(dev_samples), config_dir)
    clock = StepClock()
    trainer = WenzhenTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        processing_class=loaded.tokenizer,
        callbacks=[clock, ProgressBar(clock), MetricsLog(output_dir), *callbacks],
    )
    trainer.performance = config.performance
    clock.settle = lambda: trainer.check_readings(wait=True)
    trainer.dev_generation = dev_generation(data_dir, config, args, bool(dev_samples), loaded.model.config)
    trainer.chat_model = loaded
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    if args.should_save:
        prepare_output_dir(output_dir, config, model_dir, loaded.family.name, reports, data_dir, plan)
        from torch.utils.tensorboard import SummaryWriter

        trainer.add_callback(TensorBoardCallback(tb_writer=SummaryWriter(str(output_dir / "tensorboard"))))

    started = time.monotonic()
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    trainer.check_readings(wait=True)
    seconds = time.monotonic() - started
    final = save_final(trainer, output_dir)
    summary = summarise(trainer, config, output_dir, final, device, seconds, reports, packed, clock)
    if args.should_save:
        write_json(output_dir / SUMMARY_FILE, summary)
        record_speed(output_dir, summary)
        plot_curve(read_metrics(output_dir / METRICS_FILE), output_dir / CURVE_FILE)
        shutil.rmtree(output_dir / STAGING, ignore_errors=True)
        log.info("%s", format_summary(summary))
    return TrainResult(output_dir=output_dir, final_dir=final, summary=summary)


def already_finished(output_dir: Path, resume_from: Path | None, config: TrainConfig) -> TrainResult | None:
    """The finished run that resuming would only extend past its end (its `final/` is left alone), or None."""
    final, summary_file = output_dir / FINAL, output_dir / SUMMARY_FILE
    if resume_from is None or not final.is_dir() or not summary_file.is_file():
        return None
    args = config.training_args
    step = finished_step(resume_from, args.max_steps, args.num_train_epochs)
    if step is None:
        return None
    log.warning(
        "notice: %s already finished at step %d and its final/ is kept as it is; pass a larger --max-steps to "
        "train further, or a new --output-dir to start over",
        output_dir,
        step,
    )
    summary = json.loads(summary_file.read_text(encoding="utf-8"))
    return TrainResult(output_dir=output_dir, final_dir=final, summary=summary)


def record_speed(output_dir: Path, summary: dict[str, Any]) -> None:
    """Add the measured speed (wall time, overall and steady tokens/s) to run.json beside the plan it used."""
    info = read_run_info(output_dir)
    if info is None:
        return
    keys = (
        "train_seconds",
        "first_step_seconds",
        "tokens",
        "tokens_per_second",
        "steady_tokens_per_second",
        "world_size",
    )
    measured = {key: summary[key] for key in keys}
    write_run_info(output_dir, info.model_copy(update={"extra": {**info.extra, "speed": measured}}))


def dev_generation(
    data_dir: Path, config: TrainConfig, args: TrainingArguments, has_dev: bool, model_config: Any
) -> DevGeneration | None:
    """Dev prompts to answer at each evaluation when `predict_with_generate` is on (and the model is not sharded)."""
    settings = config.training_args
    if not (settings.predict_with_generate and has_dev and args.eval_strategy != "no"):
        return None
    if args.fsdp or args.deepspeed:
        log.warning(
            "notice: sharded models (FSDP/DeepSpeed) evaluate the dev loss only; run `wenzhen eval gen` after"
        )
        return None
    context = int(getattr(model_config, "max_position_embeddings", 0) or 0)
    if context and settings.generation_config.max_new_tokens + config.max_input_length > context:
        raise WenzhenError(
            f"training_args.generation_config.max_new_tokens ({settings.generation_config.max_new_tokens}) plus "
            f"max_input_length ({config.max_input_length}) exceed the model's {context}-token context; lower them"
        )
    dev_file = data_dir / str(config.data_config.val_file)
    return DevGeneration.from_rows(
        read_split(data_dir, config.data_config.val_file, "dev", required=True) or [],
        dev_file,
        settings.max_eval_samples,
        settings.generation_config,
        args.per_device_eval_batch_size,
    )


def prepare_output_dir(
    output_dir: Path,
    config: TrainConfig,
    model_dir: Path,
    chat_format: str,
    reports: dict[str, EncodingReport],
    data_dir: Path,
    plan: SpeedPlan,
) -> None:
    """Create the run folder, drop what a crash mid-save left in staging, record run.json (with the resolved
    config and the performance plan) and encoding.json."""
    output_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(output_dir / STAGING, ignore_errors=True)
    write_run_info(
        output_dir,
        RunInfo(
            stage="train",
            base_model=str(model_dir.resolve()),
            chat_format=chat_format,
            config=config.model_dump(mode="json"),
            extra={
                "method": config.method_name,
                "data_dir": str(data_dir.resolve()),
                "performance_plan": plan.as_dict(),
            },
        ),
    )
    write_json(output_dir / ENCODING_FILE, {split: report.as_dict() for split, report in reports.items()})
