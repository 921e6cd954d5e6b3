"""`wenzhen eval safety`: answer risky questions and judge the answers by rule, with and without the serving guard.

Probes come from files: Zhongjing's CMtMedQA test set (its 144 `{instruct, output}` items; the 1,000
consultations in the same file are skipped) or any JSON/JSONL of `{prompt, reference}`. The model answers each
once through the one engine; the guard (`wenzhen.safety`, when installed in this checkout) is then applied to the
same answer, so "with guard" and "without guard" differ only by the guard.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from pydantic import Field

from wenzhen.config import StrictModel
from wenzhen.errors import WenzhenError
from wenzhen.evaluate.loading import ModelOptions, adapter_path, describe_device, open_engine, run_label
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
from wenzhen.evaluate.safety_rules import RULES, Probe, judge_answer, passes
from wenzhen.evaluate.samples import read_records
from wenzhen.generation import ChatEngine, GenerationSettings
from wenzhen.io import write_jsonl
from wenzhen.models import Message

ANSWERS = "answers.jsonl"
DEFAULT_PROBES = "../shared/data/zhongjing-eval/CMtMedQA_test.json"


class Guard(Protocol):
    """The serving guard's interface: a verdict on the conversation, then the answer the user would see."""

    def check(self, messages: list[Message]) -> Any: ...

    def apply(self, verdict: Any, answer: str) -> str: ...


def load_guard() -> Guard | None:
    """The project's serving guard module, or None while this checkout has none."""
    if importlib.util.find_spec("wenzhen.safety") is None:
        return None
    module: Any = importlib.import_module("wenzhen.safety")
    return module  # the module itself provides check() and apply()


def read_probes(path: str | Path) -> list[Probe]:
    """The probes in one file; an error when it holds none."""
    source = Path(path)
    probes = []
    for index, record in enumerate(read_records(source)):
        if not isinstance(record, dict):
            raise WenzhenError(f"{source} record {index + 1} is not a JSON object")
        prompt = record.get("instruct", record.get("prompt"))
        if prompt is None or "history" in record:
            continue  # Zhongjing's consultations share the file with its probes
        reference = record.get("output", record.get("reference", ""))
        if not isinstance(prompt, str) or not prompt.strip() or not isinstance(reference, str):
            raise WenzhenError(
                f"{source} record {index + 1} needs a non-empty text prompt and a text reference"
            )
        probe_id = str(record.get("id", f"{source.stem}-{index}"))
        probes.append(Probe(probe_id, prompt.strip(), reference.strip(), source.name))
    if not probes:
        raise WenzhenError(
            f"{source} holds no safety probes; pass files of {{instruct, output}} or {{prompt, reference}} records"
        )
    return probes


RATE_DEFINITIONS = {
    "pass_rate": "percent of probes whose answer passes every rule that applies to it",
    **{
        f"{name}_rate": f"percent of the probes this rule applies to that pass it; {rule.description}"
        for name, rule in RULES.items()
    },
}


class SafetyConfig(StrictModel):
    """Options of `wenzhen eval safety`."""

    model: ModelOptions = Field(default_factory=ModelOptions)
    label: str | None = Field(None, description="name of this run in reports")
    limit: int | None = Field(None, ge=1, description="first N probes only")
    batch_size: int = Field(8, ge=1, description="probes answered together")
    generation: GenerationSettings = Field(
        default_factory=lambda: GenerationSettings(max_new_tokens=256, temperature=0.0),
        description="decoding; greedy by default",
    )
    use_guard: bool = Field(
        True, description="also score the answers after the serving guard, when it exists"
    )


def _judged(probe: Probe, answer: str) -> dict[str, Any]:
    verdicts = judge_answer(probe, answer)
    return {
        "answer": answer,
        "passed": passes(verdicts),
        "rules": {
            name: {"applies": v.applies, "passed": v.passed, "reason": v.reason}
            for name, v in verdicts.items()
        },
    }


def share_passing(rows: Sequence[dict[str, Any]], key: str) -> dict[str, float]:
    """Percent of probes passing overall and, per rule, of the probes it applies to; plus applicable counts."""
    shares: dict[str, float] = {"pass_rate": 100.0 * sum(r[key]["passed"] for r in rows) / len(rows)}
    for name in RULES.names():
        applicable = [r[key]["rules"][name] for r in rows if r[key]["rules"][name]["applies"]]
        shares[f"{name}_rate"] = (
            100.0 * sum(v["passed"] for v in applicable) / len(applicable) if applicable else 0.0
        )
        shares[f"{name}_applicable"] = float(len(applicable))
    return shares


def answer_probes(engine: ChatEngine, probes: Sequence[Probe], config: SafetyConfig) -> list[str]:
    """The model's answer to each probe, in order."""
    answers: list[str] = []
    with progress_bar(len(probes), "eval safety", unit="probe") as bar:
        for start in range(0, len(probes), config.batch_size):
            batch = probes[start : start + config.batch_size]
            results = engine.generate_batch(
                [[{"role": "user", "content": p.prompt}] for p in batch], config.generation
            )
            answers += [result.text for result in results]
            bar.update(len(batch))
    return answers


def evaluate_safety(
    engine_or_model_path: ChatEngine | str | Path,
    probe_files: Sequence[str | Path],
    out_dir: str | Path,
    config: SafetyConfig | None = None,
    force: bool = False,
    guard: Guard | None = None,
) -> EvalReport:
    """Answer the probes, judge each answer by rule without and with the guard, write the report and answers."""
    config = config or SafetyConfig()
    check_output(out_dir, force)
    if not probe_files:
        raise WenzhenError("no probe file given; pass --probes FILE (e.g. " + DEFAULT_PROBES + ")")
    available = [probe for file in probe_files for probe in read_probes(file)]
    probes = available[: config.limit]
    guard = guard or (load_guard() if config.use_guard else None)
    engine = open_engine(engine_or_model_path, config.model)

    started = time.monotonic()
    answers = answer_probes(engine, probes, config)
    rows: list[dict[str, Any]] = []
    for probe, answer in zip(probes, answers, strict=True):
        row: dict[str, Any] = {
            "id": probe.id,
            "source": probe.source,
            "prompt": probe.prompt,
            "reference": probe.reference,
        }
        row["without_guard"] = _judged(probe, answer)
        if guard is not None:
            messages: list[Message] = [{"role": "user", "content": probe.prompt}]
            row["with_guard"] = _judged(probe, guard.apply(guard.check(messages), answer))
        rows.append(row)
    elapsed = time.monotonic() - started

    without = share_passing(rows, "without_guard")
    metrics = {f"without_guard_{k}": v for k, v in without.items() if not k.endswith("_applicable")}
    with_guard = share_passing(rows, "with_guard") if guard is not None else {}
    metrics |= {f"with_guard_{k}": v for k, v in with_guard.items() if not k.endswith("_applicable")}
    definitions = {
        f"{side}_{name}": f"{'with' if side == 'with_guard' else 'without'} the serving guard: {text}"
        for side in ("without_guard", "with_guard")
        for name, text in RATE_DEFINITIONS.items()
        if f"{side}_{name}" in metrics
    }
    notes = (
        []
        if guard is not None
        else ["the serving guard (wenzhen.safety) is not available: only scored without it"]
    )
    report = EvalReport(
        kind="safety",
        label=run_label(engine, config.label),
        model=str(engine.loaded.path),
        adapter=adapter_path(engine),
        data=DataInfo(
            path=", ".join(str(f) for f in probe_files),
            sha256=file_sha256(Path(probe_files[0]))
            if len(probe_files) == 1
            else _combined_hash(probe_files),
            n_available=len(available),
            n_evaluated=len(probes),
            selection="all" if config.limit is None else f"first {config.limit}",
        ),
        settings={
            "batch_size": config.batch_size,
            "guard": guard is not None,
            **config.generation.model_dump(),
        },
        metrics=metrics,
        metric_labels={key: key.replace("_", " ") + " (%)" for key in metrics},
        metric_definitions=definitions,
        counts={
            "probes": len(probes),
            **{f"{k}": int(v) for k, v in without.items() if k.endswith("_applicable")},
        },
        notes=notes,
        device=describe_device(engine),
        elapsed_s=round(elapsed, 2),
    )
    failures = [
        (row["id"], row["prompt"][:50], name, verdict["reason"][:80])
        for row in rows
        for name, verdict in row["without_guard"]["rules"].items()
        if verdict["applies"] and not verdict["passed"]
    ][:10]
    section = "## First failures (without guard)\n\n" + markdown_table(
        ["probe", "question", "rule", "why"], failures
    )
    with output_directory(out_dir, force) as folder:
        write_jsonl(folder / ANSWERS, rows)
        return write_report(folder, report, render_markdown(report, "Safety probes", [section]))


def _combined_hash(files: Sequence[str | Path]) -> str:
    return hashlib.sha256("".join(file_sha256(Path(f)) for f in files).encode()).hexdigest()
