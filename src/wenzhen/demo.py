"""`run_demo(out_dir, config)`: the whole pipeline, offline, on the embedded SmolLM2-135M-Instruct and the bundled
sample corpus, in a few minutes on a CPU.

Every step is the project's own library function, called as a user's command would call it: `data.prepare`,
`evaluate.generation.evaluate_generation` (before and after), `train.train`, `evaluate.compare.compare_runs`,
`export.merge`, and `chat.chat_turn` on the merged model for the sample answers. Each step writes its own folder
under `out_dir`; `demo_report.json` / `demo_report.md` tie them together.

SmolLM2-135M is small and English-first: the demo shows the pipeline working end to end (the training loss falls,
the adapter merges, the merged model serves), not Chinese medical skill. For that, run the same steps on
ChatGLM3-6B on a GPU (README).
"""

import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from pydantic import BaseModel, Field
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from wenzhen.chat import Conversation, chat_turn
from wenzhen.config import StrictModel, validate_config
from wenzhen.consultation import ConsultationPolicy
from wenzhen.data import DataConfig, prepare, sample_corpus_paths
from wenzhen.errors import WenzhenError
from wenzhen.evaluate.compare import COMPARISON_MD, compare_runs
from wenzhen.evaluate.generation import GenEvalConfig, evaluate_generation
from wenzhen.evaluate.report import EvalReport
from wenzhen.export.merge import merge
from wenzhen.generation import ChatEngine, GenerationSettings
from wenzhen.io import check_apart, write_json, write_text, written_names
from wenzhen.models import load_model
from wenzhen.models.embedded import embedded_model_dir
from wenzhen.runinfo import read_run_info
from wenzhen.train import TrainConfig, train
from wenzhen.train.callbacks import CURVE_FILE, METRICS_FILE, read_metrics

log = logging.getLogger(__name__)

REPORT_JSON = "demo_report.json"
REPORT_MD = "demo_report.md"
STEP_DIRS = ("data", "eval-before", "train", "eval-after", "comparison", "merged")


def _demo_data() -> DataConfig:
    # 71 sample conversations: fixed counts keep a held-out test split worth scoring.
    return validate_config(DataConfig, {"split": {"dev": 6, "test": 8}}, source="demo data defaults")


def _demo_train() -> TrainConfig:
    return validate_config(
        TrainConfig,
        {
            "data_config": {"train_file": "train.jsonl", "val_file": "dev.jsonl", "test_file": "test.jsonl"},
            # SmolLM2's English-first tokenizer spends about two tokens per Chinese character.
            "max_input_length": 192,
            "max_output_length": 192,
            "peft_config": {"peft_type": "LORA", "r": 8, "lora_alpha": 32, "lora_dropout": 0.05},
            "training_args": {
                "max_steps": 40,
                "learning_rate": 5e-4,
                "lr_scheduler_type": "cosine",
                "warmup_steps": 0.1,
                "per_device_train_batch_size": 4,
                "logging_steps": 1,
                "save_strategy": "no",
                "eval_strategy": "steps",
                "eval_steps": 20,
                "max_eval_samples": 6,
                "per_device_eval_batch_size": 6,
            },
        },
        source="demo training defaults",
    )


def _demo_eval() -> GenEvalConfig:
    return validate_config(
        GenEvalConfig,
        {"batch_size": 8, "generation": {"max_new_tokens": 64, "temperature": 0.0}},
        source="demo eval defaults",
    )


def _demo_answer() -> GenerationSettings:
    return GenerationSettings(max_new_tokens=96, temperature=0.0, repetition_penalty=1.1)


DEFAULT_QUESTIONS = [
    "医生您好，我这几天总是头痛，晚上也睡不好，需要注意什么？",
    "孩子发烧到38.5度，精神还可以，需要马上去医院吗？",
]


class DemoConfig(StrictModel):
    """The demo's steps, each configured with that stage's own config model."""

    model: str | None = Field(None, description="base model directory (default: the embedded SmolLM2-135M)")
    data: DataConfig = Field(default_factory=_demo_data, description="`wenzhen data prepare` options")
    train: TrainConfig = Field(default_factory=_demo_train, description="`wenzhen train` config (LoRA)")
    train_minutes: float = Field(
        4.0, gt=0, description="wall-clock budget of training: it stops at the first step past it"
    )
    eval: GenEvalConfig = Field(default_factory=_demo_eval, description="`wenzhen eval gen` options")
    eval_samples: int = Field(8, ge=1, description="held-out test conversations scored before and after")
    merge_dtype: str = Field("bf16", description="dtype of the merged export")
    questions: list[str] = Field(default_factory=lambda: list(DEFAULT_QUESTIONS), min_length=1)
    answer: GenerationSettings = Field(
        default_factory=_demo_answer, description="decoding of the sample answers"
    )


class DemoReport(BaseModel):
    """What the demo did, where each step's output is, and what it measured."""

    base_model: str
    steps: dict[str, str]
    seconds: dict[str, float]
    data: dict[str, Any]
    training: dict[str, Any]
    dev_loss_samples: int
    dev_loss_before: float | None
    dev_loss_after: float | None
    eval_before: dict[str, float]
    eval_after: dict[str, float]
    charts: list[str]
    answers: list[dict[str, str]]
    serve_commands: list[str]


class DemoSchedule(TrainerCallback):
    """Held-out dev loss before the first update and after the last one, and a wall-clock training budget.

    wenzhen's typed `training_args` do not carry transformers' `eval_on_start`, so the demo switches it on for its
    own run here (the Trainer reads it right after `on_train_begin`): the dev loss of the untouched base model is
    then measured by the Trainer's own evaluation, exactly as the later ones. transformers has no time limit, and
    the demo must end in minutes on slow and shared machines alike, so training stops at the first step past the
    budget; whenever training stops, one more evaluation measures the final model.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = 0.0

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.started = time.monotonic()
        args.eval_on_start = args.eval_strategy != "no"

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        if time.monotonic() - self.started >= self.seconds and not control.should_training_stop:
            log.info(
                "demo: the %.1f-minute training budget is spent; stopping at step %d",
                self.seconds / 60,
                state.global_step,
            )
            control.should_training_stop = True
        if control.should_training_stop and args.eval_strategy != "no":
            control.should_evaluate = True
        return control


def dev_losses(run_dir: Path) -> tuple[float | None, float | None]:
    """The first and the last held-out dev loss the training run logged (before and after training)."""
    losses = [row["eval_loss"] for row in read_metrics(run_dir / METRICS_FILE) if "eval_loss" in row]
    return (losses[0], losses[-1]) if losses else (None, None)


def check_out_dir(out_dir: Path, force: bool) -> None:
    """Refuse a non-empty folder the demo did not make, unless `force`; clear an earlier demo's step folders."""
    if out_dir.exists() and any(out_dir.iterdir()):
        if not (force or (out_dir / REPORT_JSON).is_file() or _only_demo_folders(out_dir)):
            raise WenzhenError(
                f"{out_dir} exists and was not made by `wenzhen demo`; choose another --out or pass --force"
            )
        steps = [out_dir / name for name in STEP_DIRS if (out_dir / name).exists()]
        foreign = [step.name for step in steps if not _written_by_wenzhen(step)]
        if foreign:
            raise WenzhenError(
                f"{out_dir} holds {', '.join(foreign)} that wenzhen did not write, so the demo will not delete "
                "them; choose another --out or move them away"
            )
        log.info("demo: replacing the earlier demo output in %s", out_dir)
        for step in steps:
            shutil.rmtree(step, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)


def _written_by_wenzhen(folder: Path) -> bool:
    """A step folder a wenzhen stage wrote: atomic outputs carry their output record, training runs run.json."""
    return written_names(folder) is not None or read_run_info(folder) is not None


def _only_demo_folders(out_dir: Path) -> bool:
    # An interrupted demo leaves step folders but no report yet.
    return all(entry.name in STEP_DIRS or entry.name.startswith(".") for entry in out_dir.iterdir())


def _step(number: int, title: str, folder: Path) -> None:
    log.info("\n[%d/6] %s -> %s", number, title, folder)


def run_demo(
    out_dir: str | Path, config: DemoConfig | None = None, *, force: bool = False, out: TextIO = sys.stdout
) -> DemoReport:
    """Prepare the sample corpus, evaluate the base model, LoRA-train it, evaluate again, compare, merge and answer
    the sample questions with the merged model; write every step's folder and the report under `out_dir`.

    The sample answers stream to `out` as the chat command shows them.
    """
    config = config or DemoConfig()
    out_dir = Path(out_dir)
    check_apart(out_dir, [config.model] if config.model else [])
    check_out_dir(out_dir, force)
    folders = {name: out_dir / name for name in STEP_DIRS}
    seconds: dict[str, float] = {}
    clock = time.monotonic()

    base = Path(config.model) if config.model else embedded_model_dir()
    seconds["model"] = time.monotonic() - clock

    _step(1, "data: prepare the bundled sample corpus", folders["data"])
    started = time.monotonic()
    data_report = prepare(sample_corpus_paths(), folders["data"], config.data)
    seconds["data"] = time.monotonic() - started
    test_file = folders["data"] / "test.jsonl"

    _step(2, "eval before: the base model on the held-out test split", folders["eval-before"])
    started = time.monotonic()
    eval_config = config.eval.model_copy(update={"limit": config.eval_samples, "label": "base"})
    before = evaluate_generation(_engine(base), test_file, folders["eval-before"], eval_config)
    seconds["eval_before"] = time.monotonic() - started

    _step(3, f"train: {config.train.method_name}, at most {config.train_minutes:g} minutes", folders["train"])
    started = time.monotonic()
    train_config = config.train.model_copy(deep=True)
    train_config.training_args.output_dir = str(folders["train"])
    result = train(folders["data"], base, train_config, callbacks=[DemoSchedule(config.train_minutes * 60)])
    seconds["train"] = time.monotonic() - started
    loss_before, loss_after = dev_losses(folders["train"])

    _step(4, "eval after: base + the trained adapter, same samples", folders["eval-after"])
    started = time.monotonic()
    after_config = eval_config.model_copy(update={"label": "LoRA"})
    after = evaluate_generation(
        _engine(base, adapter=result.final_dir), test_file, folders["eval-after"], after_config
    )
    comparison = compare_runs([folders["eval-before"], folders["eval-after"]], folders["comparison"])
    seconds["eval_after"] = time.monotonic() - started
    out.write(comparison.markdown)

    _step(5, "merge: fold the adapter into the base model", folders["merged"])
    started = time.monotonic()
    merge(
        result.final_dir,
        folders["merged"],
        base=base,
        dtype=config.merge_dtype,
        eval_dirs=[folders["eval-before"], folders["eval-after"]],
    )
    seconds["merge"] = time.monotonic() - started

    _step(6, "answer the sample questions with the merged model", folders["merged"])
    started = time.monotonic()
    answers = answer_questions(folders["merged"], config, out)
    seconds["answers"] = time.monotonic() - started
    seconds["total"] = time.monotonic() - clock

    report = DemoReport(
        base_model=str(base),
        steps={name: str(folder) for name, folder in folders.items()},
        seconds={name: round(value, 1) for name, value in seconds.items()},
        data={key: data_report[key] for key in ("read", "kept", "duplicates", "rejected", "splits")},
        training=result.summary,
        dev_loss_samples=min(
            data_report["splits"]["dev"], train_config.training_args.max_eval_samples or 10**9
        ),
        dev_loss_before=loss_before,
        dev_loss_after=loss_after,
        eval_before=before.metrics,
        eval_after=after.metrics,
        charts=[str(folders["comparison"] / chart) for chart in comparison.charts],
        answers=answers,
        serve_commands=serve_commands(folders["merged"]),
    )
    write_json(out_dir / REPORT_JSON, report.model_dump(mode="json"))
    write_text(out_dir / REPORT_MD, render_report(report, before, after))
    return report


def _engine(base: Path, adapter: Path | None = None) -> ChatEngine:
    """The one generation engine on `base` (plus `adapter`), through the one model loader."""
    return ChatEngine(load_model(base, adapter=adapter))


def answer_questions(model_dir: Path, config: DemoConfig, out: TextIO) -> list[dict[str, str]]:
    """Each sample question in a fresh conversation, answered as `wenzhen chat` answers (guard included)."""
    engine = _engine(model_dir)
    policy = ConsultationPolicy(engine)
    answers = []
    for question in config.questions:
        out.write(f"\n用户> {question}\n")
        result = chat_turn(policy, engine, Conversation(system_prompt=None), question, config.answer, out)
        answers.append({"question": question, "answer": result.text if result else ""})
    return answers


def serve_commands(model_dir: Path) -> list[str]:
    """How to open the merged model in the terminal chat, the web UI and the API."""
    return [
        f"wenzhen chat {model_dir}",
        f"wenzhen web {model_dir}",
        f"wenzhen api {model_dir}",
    ]


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}" if abs(value) < 10 else f"{value:.2f}"


def render_report(report: DemoReport, before: EvalReport, after: EvalReport) -> str:
    """The demo report as Markdown: steps and folders, training, before/after metrics, answers, next commands."""
    training = report.training
    lines = [
        "# wenzhen demo report",
        "",
        f"Base model: `{report.base_model}`",
        "",
        "| step | output folder | seconds |",
        "|---|---|---|",
    ]
    timing = {"data": "data", "eval-before": "eval_before", "train": "train", "eval-after": "eval_after"}
    timing |= {"merged": "merge"}
    for name, folder in report.steps.items():
        lines.append(f"| {name} | `{folder}` | {report.seconds.get(timing.get(name, ''), '')} |")
    lines += [
        "",
        f"Total: {report.seconds['total']:.0f} s (model conversion or cache: {report.seconds['model']:.0f} s).",
        "",
        "## Training",
        "",
        f"{training['method']}: {training['steps']} steps, {training['tokens']:,} tokens, "
        f"{training['tokens_per_second']} tokens/s; training loss {training['first_loss']} -> "
        f"{training['final_loss']}; {training['trainable_parameters']:,} trainable of "
        f"{training['total_parameters']:,} parameters. Curve: `{Path(report.steps['train']) / CURVE_FILE}`.",
        "",
        "## Before and after, on held-out data",
        "",
        f"Loss: dev split (up to {report.dev_loss_samples} conversations), measured by the Trainer before "
        f"the first update and after the last. Generation metrics: test split ({before.data.n_evaluated} "
        "conversations), greedy decoding.",
        "",
        "| metric | before | after |",
        "|---|---|---|",
        f"| dev loss (lower is better) | {_number(report.dev_loss_before)} | {_number(report.dev_loss_after)} |",
    ]
    for name, value in report.eval_before.items():
        label = before.metric_labels.get(name, name)
        lines.append(f"| {label} | {_number(value)} | {_number(report.eval_after.get(name))} |")
    lines += [
        "",
        f"Chart: {', '.join(f'`{chart}`' for chart in report.charts)}; details: "
        f"`{Path(report.steps['comparison']) / COMPARISON_MD}`.",
        "",
        "## Sample answers (merged model)",
        "",
    ]
    for item in report.answers:
        lines += [f"- **{item['question']}**", f"  {item['answer'] or '(empty)'}"]
    lines += [
        "",
        "SmolLM2-135M is a small English-first model: these answers show the pipeline, not medical skill.",
        "",
        "## Next",
        "",
        *[f"    {command}" for command in report.serve_commands],
    ]
    return "\n".join(lines) + "\n"
