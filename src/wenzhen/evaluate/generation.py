"""`wenzhen eval gen`: answer held-out consultations in batches and score them against the references.

Generation is the project's one engine (`ChatEngine.generate_batch`: left padding, the family's stop tokens);
scoring is `metrics.score_pairs`. Predictions are saved beside the scores, one JSON line per sample.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

from wenzhen.config import StrictModel
from wenzhen.evaluate.loading import ModelOptions, adapter_path, describe_device, open_engine, run_label
from wenzhen.evaluate.metrics import (
    METRICS,
    metric_definitions,
    resolve_metrics,
    score_pair,
    summarize_scores,
)
from wenzhen.evaluate.report import (
    DataInfo,
    EvalReport,
    check_output,
    file_sha256,
    markdown_table,
    output_directory,
    progress_bar,
    render_markdown,
    write_report,
)
from wenzhen.evaluate.samples import EvalSample, load_samples, select
from wenzhen.generation import ChatEngine, ChatResult, GenerationSettings
from wenzhen.io import write_jsonl

PREDICTIONS = "predictions.jsonl"


def greedy_settings() -> GenerationSettings:
    """The evals' default decoding: greedy, up to 256 new tokens (answers comparable run to run)."""
    return GenerationSettings(max_new_tokens=256, temperature=0.0)


class GenEvalConfig(StrictModel):
    """Options of `wenzhen eval gen`."""

    model: ModelOptions = Field(default_factory=ModelOptions)
    label: str | None = Field(
        None, description="name of this run in reports (default: model or adapter folder)"
    )
    limit: int | None = Field(None, ge=1, description="evaluate a random subset of this many samples")
    seed: int = Field(0, description="seed of the random subset")
    batch_size: int = Field(8, ge=1, description="conversations generated together (left-padded)")
    generation: GenerationSettings = Field(
        default_factory=greedy_settings, description="decoding; greedy by default"
    )
    metrics: list[str] | None = Field(None, description="metric names (default: all registered)")


def generate_answers(
    engine: ChatEngine, samples: Sequence[EvalSample], settings: GenerationSettings, batch_size: int
) -> list[ChatResult]:
    """The engine's answer to each sample, in input order; batches group prompts of similar length."""
    by_length = sorted(range(len(samples)), key=lambda i: sum(len(m["content"]) for m in samples[i].messages))
    results: dict[int, ChatResult] = {}
    with progress_bar(len(samples), "eval gen") as bar:
        for start in range(0, len(by_length), batch_size):
            batch = by_length[start : start + batch_size]
            answers = engine.generate_batch([samples[i].messages for i in batch], settings)
            results.update(zip(batch, answers, strict=True))
            bar.update(len(batch))
    return [results[i] for i in range(len(samples))]


def prediction_rows(
    samples: Sequence[EvalSample], answers: Sequence[ChatResult], scores: Sequence[dict[str, float]]
) -> list[dict[str, Any]]:
    """What `predictions.jsonl` holds: prompt, reference, prediction, how generation ended, the sample's scores."""
    return [
        {
            "id": sample.id,
            "messages": sample.messages,
            "reference": sample.reference,
            "prediction": answer.text,
            "finish_reason": answer.finish_reason,
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
            "scores": score,
            **({"meta": sample.meta} if sample.meta else {}),
        }
        for sample, answer, score in zip(samples, answers, scores, strict=True)
    ]


def _examples_section(rows: Sequence[dict[str, Any]], count: int = 3) -> str:
    shown = [
        (
            row["id"],
            row["messages"][-1]["content"][:80],
            row["reference"][:80],
            row["prediction"][:80] or "(empty)",
        )
        for row in rows[:count]
    ]
    return "## First predictions\n\n" + markdown_table(["id", "prompt", "reference", "prediction"], shown)


def evaluate_generation(
    engine_or_model_path: ChatEngine | str | Path,
    data_path: str | Path,
    out_dir: str | Path,
    config: GenEvalConfig | None = None,
    force: bool = False,
) -> EvalReport:
    """Generate answers for (a subset of) the eval file, score them, write report + predictions into `out_dir`."""
    config = config or GenEvalConfig()
    check_output(out_dir, force, [engine_or_model_path, data_path])
    metrics = resolve_metrics(config.metrics)
    names = [metric.name for metric in metrics]
    available = load_samples(data_path)
    samples, selection = select(available, config.limit, config.seed)
    engine = open_engine(engine_or_model_path, config.model)

    started = time.monotonic()
    answers = generate_answers(engine, samples, config.generation, config.batch_size)
    scores = [
        score_pair(answer.text, sample.reference, metrics)
        for sample, answer in zip(samples, answers, strict=True)
    ]
    elapsed = time.monotonic() - started

    predictions = [answer.text for answer in answers]
    references = [sample.reference for sample in samples]
    summary = summarize_scores(scores, predictions, references)
    rows = prediction_rows(samples, answers, scores)
    report = EvalReport(
        kind="gen",
        label=run_label(engine, config.label),
        model=str(engine.loaded.path),
        adapter=adapter_path(engine),
        data=DataInfo(
            path=str(data_path),
            sha256=file_sha256(Path(data_path)),
            n_available=len(available),
            n_evaluated=len(samples),
            selection=selection,
        ),
        settings={"batch_size": config.batch_size, **config.generation.model_dump()},
        metrics={name: summary[name] for name in names},
        metric_labels={name: METRICS.get(name).label for name in names},
        metric_definitions=metric_definitions(names),
        counts={
            "samples": len(samples),
            "empty_predictions": int(summary["empty_predictions"]),
            "empty_references": int(summary["empty_references"]),
            "stopped_by_length": sum(1 for answer in answers if answer.finish_reason == "length"),
        },
        notes=["empty predictions score 0 on every metric and are counted, never skipped"],
        device=describe_device(engine),
        elapsed_s=round(elapsed, 2),
    )
    with output_directory(out_dir, force, [engine_or_model_path, data_path]) as folder:
        write_jsonl(folder / PREDICTIONS, rows)
        return write_report(
            folder, report, render_markdown(report, "Generation eval", [_examples_section(rows)])
        )
