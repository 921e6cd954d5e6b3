"""What a person watches during training: a progress bar, metrics as JSON lines, and the end-of-run report.

Built as `transformers.TrainerCallback`s; they run on the main process only, so a multi-GPU run writes one log.
"""

import json
import math
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from wenzhen.io import atomic_open, write_jsonl

METRICS_FILE = "metrics.jsonl"
CURVE_FILE = "training_curve.png"
SUMMARY_FILE = "summary.json"


class StepClock(TrainerCallback):
    """Steady-state training tokens/s: the optimizer steps after the first `warmup` of this run (compilation,
    kernel autotuning, the allocator growing), with evaluation, saving and logging between steps left out.

    Tokens are the Trainer's non-padding count, gathered over all processes, so under DDP this is the whole run's
    rate.
    """

    def __init__(self, warmup: int = 3) -> None:
        self.warmup = warmup
        # Called at the window's edges to bring the token count up to date (the trainer's check_readings).
        self.settle: Callable[[], None] | None = None
        self.first_step = 0
        self.mark = 0.0
        self.tokens_at_mark = 0
        self.seconds = 0.0
        self.tokens = 0
        # The first step alone: compilation and kernel tuning, what a user waits for before the bar moves.
        self.first_step_seconds: float | None = None

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ):
        self.first_step = state.global_step
        self.mark = time.monotonic()
        self.tokens_at_mark = int(state.num_input_tokens_seen or 0)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ):
        if self.window_edge(state, control):
            # Steps do not wait for the GPU (see trainer.HostReadings): time and count at the window's edges once
            # its work is done.
            if self.settle is not None:
                self.settle()
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.synchronize()
        now, tokens = time.monotonic(), int(state.num_input_tokens_seen or 0)
        if state.global_step - self.first_step == 1:
            self.first_step_seconds = now - self.mark
        if state.global_step - self.first_step > self.warmup:
            self.seconds += now - self.mark
            self.tokens += tokens - self.tokens_at_mark
        self.mark, self.tokens_at_mark = now, tokens

    def window_edge(self, state: TrainerState, control: TrainerControl) -> bool:
        """The end of the first step, of warm-up, of the run, or of a stretch of steps before logging, evaluation or
        saving."""
        pause = (
            control.should_log
            or control.should_evaluate
            or control.should_save
            or control.should_training_stop
        )
        done = state.global_step - self.first_step
        return done in (1, self.warmup) or state.global_step >= state.max_steps or pause

    def _pause_ends(self, *args: Any, **kwargs: Any) -> None:
        # Logging, evaluation and saving run between two steps; the next step's time starts after them.
        self.mark = time.monotonic()

    on_log = on_evaluate = on_save = _pause_ends

    @property
    def tokens_per_second(self) -> float | None:
        """The steady rate, None until a step past the warm-up has finished."""
        return self.tokens / self.seconds if self.seconds > 0 else None


class ProgressBar(TrainerCallback):
    """One tqdm bar over optimizer steps showing loss, steady tokens/s and learning rate; tqdm supplies the ETA."""

    def __init__(self, clock: StepClock) -> None:
        self.clock = clock
        self.bar: Any = None
        self.started = 0.0
        self.tokens_at_start = 0
        self.postfix: dict[str, str] = {}

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ):
        if state.is_world_process_zero:
            self.bar = tqdm(
                total=state.max_steps, initial=state.global_step, desc="train", unit="step", file=sys.stderr
            )
            self.started = time.monotonic()
            self.tokens_at_start = int(state.num_input_tokens_seen or 0)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs=None, **kwargs
    ):
        if self.bar is None or not logs:
            return
        elapsed = max(time.monotonic() - self.started, 1e-9)
        tokens = int(state.num_input_tokens_seen or 0) - self.tokens_at_start
        # Steady tokens/s once warm-up is over; until then the rate so far, warm-up included.
        steady = self.clock.tokens_per_second
        self.postfix["tok/s"] = f"{steady if steady is not None else tokens / elapsed:,.0f}"
        # Training and evaluation log separately; the bar keeps the latest value of each.
        for key, label, style in (
            ("loss", "loss", ".4f"),
            ("eval_loss", "eval_loss", ".4f"),
            ("learning_rate", "lr", ".2e"),
        ):
            if key in logs:
                self.postfix[label] = format(logs[key], style)
        self.bar.set_postfix(self.postfix, refresh=True)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class MetricsLog(TrainerCallback):
    """Appends every logged dict (loss, grad_norm, learning_rate, eval_loss, ...) to `metrics.jsonl`.

    On resume, lines past the checkpoint's step are dropped first, so the file always tells one trajectory.
    """

    def __init__(self, output_dir: Path) -> None:
        self.path = output_dir / METRICS_FILE
        self.started = 0.0

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ):
        self.started = time.monotonic()
        if not state.is_world_process_zero:
            return
        kept = [row for row in read_metrics(self.path) if row.get("step", 0) <= state.global_step]
        write_jsonl(self.path, kept)

    def on_log(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs=None, **kwargs
    ):
        if not state.is_world_process_zero or not logs:
            return
        row = {
            "step": state.global_step,
            "epoch": state.epoch,
            "tokens": int(state.num_input_tokens_seen or 0),
        }
        row |= {key: value for key, value in logs.items() if isinstance(value, int | float)}
        row["elapsed_s"] = round(time.monotonic() - self.started, 3)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a `metrics.jsonl` (empty when absent)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def peak_memory_bytes(device: torch.device) -> int:
    """Peak GPU memory allocated on `device`, or the process's peak resident memory on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    # ru_maxrss is KiB on Linux.
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def plot_curve(rows: list[dict[str, Any]], out: Path) -> None:
    """Training loss (and dev loss) and learning rate against the step, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    train = [(row["step"], row["loss"]) for row in rows if "loss" in row and math.isfinite(row["loss"])]
    dev = [(row["step"], row["eval_loss"]) for row in rows if "eval_loss" in row]
    rate = [(row["step"], row["learning_rate"]) for row in rows if "learning_rate" in row]
    figure, (loss_axis, rate_axis) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    if train:
        loss_axis.plot(*zip(*train, strict=True), label="train loss")
    if dev:
        loss_axis.plot(*zip(*dev, strict=True), marker="o", label="dev loss")
    loss_axis.set_ylabel("loss")
    loss_axis.legend(loc="upper right")
    loss_axis.grid(alpha=0.3)
    if rate:
        rate_axis.plot(*zip(*rate, strict=True), color="tab:green")
    rate_axis.set_ylabel("learning rate")
    rate_axis.set_xlabel("step")
    rate_axis.grid(alpha=0.3)
    figure.tight_layout()
    with atomic_open(out, "wb") as handle:
        figure.savefig(handle, format="png", dpi=100)
    plt.close(figure)


def format_summary(summary: dict[str, Any]) -> str:
    """The few lines printed at the end of a run."""
    memory = summary["peak_memory_bytes"] / 2**30
    rate = summary.get("steady_tokens_per_second")
    steady = f"{rate:,.0f} tok/s steady" if rate is not None else "too few steps for a steady rate"
    lines = [
        f"trained {summary['method']} for {summary['steps']} steps on {summary['train_samples']} conversations "
        f"in {summary['train_seconds']:.1f} s wall ({summary['tokens']:,} tokens, {summary['tokens_per_second']:,.0f} "
        f"tok/s overall, {steady})",
        f"loss {summary['first_loss']} -> {summary['final_loss']}"
        + (f", dev loss {summary['final_eval_loss']}" if summary.get("final_eval_loss") is not None else ""),
        f"trainable parameters {summary['trainable_parameters']:,} of {summary['total_parameters']:,}; "
        f"peak memory {memory:.2f} GiB ({summary['peak_memory_kind']})",
        f"saved {summary['final_dir']}",
    ]
    return "\n".join(lines)


def world_size() -> int:
    """Processes in this run (1 unless launched by torchrun / accelerate)."""
    return int(os.environ.get("WORLD_SIZE", "1"))
