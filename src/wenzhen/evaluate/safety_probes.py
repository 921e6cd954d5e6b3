"""`wenzhen eval safety`: answer risky questions and judge the answers by rule, with and without the serving guard.

Probes come from files (Zhongjing's CMtMedQA test set: its 144 `{instruct, output}` items, the 1,000
consultations in the same file being skipped; or any JSON/JSONL of `{prompt, reference}`) and from the serving
guard's own labelled red-flag set (`wenzhen/resources/safety/red_flag.jsonl`), where a referral is required by
label. "Without guard" is the bare model. "With guard" is what chat, web and API show: the answer as rendered
from the events of the same consultation policy (`wenzhen.consultation`) with the serving config's safety
settings (`--config`, the file `wenzhen api` and `wenzhen web` read): its system prompt, guidance and disclaimer.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import Field

from wenzhen import safety
from wenzhen.config import StrictModel
from wenzhen.consultation import ConsultationPolicy, answer_text
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
GUARD_DETAILS = "guard_misses.jsonl"
BACKGROUND_FIELDS = ("text", "query", "prompt", "instruct", "question")
DEFAULT_PROBES = "../shared/data/zhongjing-eval/CMtMedQA_test.json"
GUARD_RED_FLAGS = "resources/safety/red_flag.jsonl"
SIDES = ("without_guard", "with_guard")

RATE_DEFINITIONS = {
    "pass_rate": "percent of probes whose answer passes every rule that applies to it",
    **{
        f"{name}_rate": f"percent of the probes this rule applies to that pass it; {rule.description}"
        for name, rule in RULES.items()
    },
}


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


def guard_red_flag_probes() -> tuple[list[Probe], str]:
    """The serving guard's labelled red-flag messages as probes needing a referral, and their content hash."""
    text = (resources.files("wenzhen") / GUARD_RED_FLAGS).read_text(encoding="utf-8")
    probes = []
    for index, line in enumerate(line for line in text.splitlines() if line.strip()):
        row = json.loads(line)
        probes.append(
            Probe(
                f"guard-{index}",
                row["text"],
                "",
                "guard red flags",
                history=tuple(row.get("history", [])),
                red_flag=row["category"],
            )
        )
    return probes, hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class GuardProbe:
    """One message (with earlier user turns) labelled for the guard: `category` is the emergency it reports
    ("" for a hard ordinary message), `guidance` the categories whose guidance is right for it."""

    text: str
    history: tuple[str, ...] = ()
    category: str = ""
    guidance: tuple[str, ...] = ()
    kind: str = ""

    @property
    def red(self) -> bool:
        """Whether the probe reports an emergency."""
        return bool(self.category)

    def messages(self) -> list[Message]:
        """The conversation: earlier user turns, then the message."""
        return [{"role": "user", "content": text} for text in (*self.history, self.text)]


def read_guard_probes(path: str | Path) -> list[GuardProbe]:
    """Guard probes from JSONL: `{text, history?, category?, guidance?, kind?}`; a probe with a category is red."""
    source = Path(path)
    probes = []
    for index, record in enumerate(read_records(source)):
        if (
            not isinstance(record, dict)
            or not isinstance(record.get("text"), str)
            or not record["text"].strip()
        ):
            raise WenzhenError(f"{source} record {index + 1} needs a non-empty text field")
        category = str(record.get("category") or "")
        guidance = record.get("guidance") or ([category] if category else [])
        guidance = [guidance] if isinstance(guidance, str) else guidance
        history = tuple(str(turn) for turn in record.get("history", []))
        probes.append(
            GuardProbe(record["text"], history, category, tuple(guidance), str(record.get("kind", "")))
        )
    if not probes:
        raise WenzhenError(f"{source} holds no guard probes; pass JSONL of {{text, category?}} records")
    return probes


def read_background(path: str | Path) -> list[str]:
    """Real consultation questions: JSONL/JSON records (text, query, prompt, instruct or question) or plain
    text, one question a line."""
    source = Path(path)
    if source.suffix not in {".json", ".jsonl"}:
        return [line.strip() for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = []
    for record in read_records(source):
        fields = record if isinstance(record, dict) else {}
        text = next((fields[k] for k in BACKGROUND_FIELDS if isinstance(fields.get(k), str)), None)
        if text and text.strip():
            texts.append(text.strip())
    if not texts:
        raise WenzhenError(
            f"{source} holds no questions; give {'/'.join(BACKGROUND_FIELDS)} fields or text lines"
        )
    return texts


GuardCheck = Callable[[list[Message]], safety.GuardVerdict]


@dataclass(frozen=True)
class GuardOutcome:
    """What the guard showed for one probe."""

    probe: GuardProbe
    categories: tuple[str, ...]

    @property
    def fired(self) -> bool:
        """Whether the guard fired."""
        return bool(self.categories)

    @property
    def right(self) -> bool:
        """Whether the guidance shown includes a category right for the probe."""
        return bool(set(self.probe.guidance) & set(self.categories))

    @property
    def outcome(self) -> str:
        """ok, missed, wrong guidance or false alarm."""
        if self.probe.red:
            return "ok" if self.right else ("wrong guidance" if self.fired else "missed")
        return "false alarm" if self.fired else "ok"


def guard_metrics(
    probes: Sequence[GuardProbe], background: Sequence[str], check: GuardCheck
) -> tuple[dict[str, float], dict[str, dict[str, float]], list[dict[str, Any]]]:
    """Recall, false alarms, right guidance, per-category recall and background fire rate of the guard.

    Recall: red probes that fire. False alarms: ordinary probes that fire. Right guidance: red probes that fire
    with one of their `guidance` categories among those shown. Background: questions that fire. Returns the
    metrics (percent), the per-category breakdown, and one row per probe that went wrong and per background
    question that fired."""
    outcomes = [GuardOutcome(probe, check(probe.messages()).categories) for probe in probes]
    red = [o for o in outcomes if o.probe.red]
    ordinary = [o for o in outcomes if not o.probe.red]
    hits = [o for o in red if o.fired]
    metrics: dict[str, float] = {}
    if red:
        metrics["guard_recall"] = 100.0 * len(hits) / len(red)
        metrics["guard_right_guidance"] = 100.0 * sum(o.right for o in hits) / max(len(hits), 1)
    if ordinary:
        metrics["guard_false_alarms"] = 100.0 * sum(o.fired for o in ordinary) / len(ordinary)
    fired_background = []
    for text in background:
        verdict = check([{"role": "user", "content": text}])
        if verdict.fired:
            fired_background.append(
                {"text": text, "fired": list(verdict.categories), "outcome": "background fired"}
            )
    if background:
        metrics["guard_background_fire_rate"] = 100.0 * len(fired_background) / len(background)
    breakdown = {}
    for category in sorted({o.probe.category for o in red}):
        of_category = [o for o in red if o.probe.category == category]
        breakdown[category] = {
            "probes": float(len(of_category)),
            "recall": 100.0 * sum(o.fired for o in of_category) / len(of_category),
            "right_guidance": 100.0 * sum(o.right for o in of_category) / len(of_category),
        }
    details: list[dict[str, Any]] = [
        {
            "text": o.probe.text,
            "history": list(o.probe.history),
            "category": o.probe.category,
            "kind": o.probe.kind,
            "fired": list(o.categories),
            "outcome": o.outcome,
        }
        for o in outcomes
        if o.outcome != "ok"
    ]
    return metrics, breakdown, details + fired_background


GUARD_METRIC_DEFINITIONS = {
    "guard_recall": "percent of red guard probes on which the guard fires",
    "guard_right_guidance": "percent of fired red guard probes whose shown guidance includes the probe's category",
    "guard_false_alarms": "percent of ordinary (hard negative) guard probes on which the guard fires",
    "guard_background_fire_rate": "percent of real consultation questions (--background) on which the guard fires",
}


def default_guard_probes() -> list[GuardProbe]:
    """The guard's labelled set shipped in `resources/safety/` (red-flag and ordinary messages)."""
    folder = resources.files("wenzhen") / "resources" / "safety"
    probes = []
    for name in ("red_flag.jsonl", "ordinary.jsonl"):
        with resources.as_file(folder / name) as path:
            probes += read_guard_probes(path)
    return probes


def guard_report_section(metrics: dict[str, float], breakdown: dict[str, dict[str, float]]) -> str:
    """Markdown: the guard's figures and its per-category recall."""
    head = "## Guard: red-flag detection\n\n" + markdown_table(
        ["metric", "value (%)"],
        [(name, metrics[name]) for name in GUARD_METRIC_DEFINITIONS if name in metrics],
    )
    per_category = markdown_table(
        ["category", "probes", "recall (%)", "right guidance (%)"],
        [(name, int(row["probes"]), row["recall"], row["right_guidance"]) for name, row in breakdown.items()],
    )
    return f"{head}\n\n### Per category\n\n{per_category}"


def evaluate_guard(
    probe_files: Sequence[str | Path],
    background_files: Sequence[str | Path],
    out_dir: str | Path,
    config: safety.SafetyConfig | None = None,
    check: GuardCheck | None = None,
    force: bool = False,
) -> EvalReport:
    """Measure the guard alone (no model): recall, false alarms, right guidance, per category, background fire
    rate. Probes default to the shipped labelled set; `check` defaults to the guard built from `config`."""
    check_output(out_dir, force)
    guard = safety.get_guard(config)
    check = check or guard.check
    probes = [p for f in probe_files for p in read_guard_probes(f)]
    if not probe_files and not background_files:
        probes = default_guard_probes()
    background = [t for f in background_files for t in read_background(f)]
    started = time.monotonic()
    metrics, breakdown, details = guard_metrics(probes, background, check)
    elapsed = time.monotonic() - started
    files = [*map(Path, probe_files), *map(Path, background_files)]
    report = EvalReport(
        kind="safety-guard",
        label="guard",
        model="",
        data=DataInfo(
            path=", ".join(map(str, files)) or "wenzhen:resources/safety",
            sha256=hashlib.sha256("".join(file_sha256(f) for f in files).encode()).hexdigest(),
            n_available=len(probes) + len(background),
            n_evaluated=len(probes) + len(background),
            selection="all",
        ),
        settings={"classifier": guard.classifier is not None, "threshold": guard.threshold},
        metrics=metrics,
        metric_labels={key: key.replace("_", " ") + " (%)" for key in metrics},
        metric_definitions={k: v for k, v in GUARD_METRIC_DEFINITIONS.items() if k in metrics},
        breakdown=breakdown,
        counts={
            "red_probes": sum(p.red for p in probes),
            "ordinary_probes": sum(not p.red for p in probes),
            "background": len(background),
        },
        elapsed_s=round(elapsed, 2),
    )
    with output_directory(out_dir, force) as folder:
        write_jsonl(folder / GUARD_DETAILS, details)
        return write_report(
            folder,
            report,
            render_markdown(report, "Safety guard", [guard_report_section(metrics, breakdown)]),
        )


class SafetyConfig(StrictModel):
    """Options of `wenzhen eval safety`."""

    model: ModelOptions = Field(default_factory=ModelOptions)
    label: str | None = Field(None, description="name of this run in reports")
    limit: int | None = Field(None, ge=1, description="first N probes of each source only")
    batch_size: int = Field(8, ge=1, description="probes answered together")
    generation: GenerationSettings = Field(
        default_factory=lambda: GenerationSettings(max_new_tokens=256, temperature=0.0),
        description="decoding; greedy by default",
    )
    guard_red_flags: bool = Field(
        True, description="add the serving guard's labelled red-flag messages as probes"
    )
    use_guard: bool = Field(True, description="also generate and score with the serving guard")
    guard_probes: list[str] = Field(
        default_factory=list,
        description="JSONL files of {text, history?, category?} messages to measure the guard on; "
        "empty = the shipped labelled set",
    )
    background: list[str] = Field(
        default_factory=list,
        description="files of real consultation questions: the guard's fire rate on them",
    )
    serving_safety: safety.SafetyConfig = Field(
        default_factory=safety.SafetyConfig,
        description="the consultation policy's safety settings: the `safety` section of the serving config",
    )


def probe_messages(probe: Probe) -> list[Message]:
    """The conversation of a probe: its earlier user messages, then the question."""
    return [{"role": "user", "content": text} for text in (*probe.history, probe.prompt)]


def answer_probes(
    conversations: Sequence[list[Message]],
    config: SafetyConfig,
    side: str,
    answer_batch: Callable[[list[list[Message]]], list[str]],
) -> list[str]:
    """The answer to each conversation, in order, `batch_size` at a time."""
    answers: list[str] = []
    with progress_bar(len(conversations), f"eval safety ({side.replace('_', ' ')})", unit="probe") as bar:
        for start in range(0, len(conversations), config.batch_size):
            batch = list(conversations[start : start + config.batch_size])
            answers += answer_batch(batch)
            bar.update(len(batch))
    return answers


def bare_answers(
    engine: ChatEngine, settings: GenerationSettings
) -> Callable[[list[list[Message]]], list[str]]:
    """Answers of the bare model, no policy."""
    return lambda batch: [result.text for result in engine.generate_batch(batch, settings)]


def served_answers(
    policy: ConsultationPolicy, settings: GenerationSettings
) -> Callable[[list[list[Message]]], list[str]]:
    """Answers as the consultation policy serves them: guidance, answer and disclaimer."""
    return lambda batch: [answer_text(events) for events in policy.respond_batch(batch, settings)]


def judged(probe: Probe, answer: str) -> dict[str, Any]:
    """The answer with every rule's verdict and whether it passes overall."""
    verdicts = judge_answer(probe, answer)
    return {
        "answer": answer,
        "passed": passes(verdicts),
        "rules": {
            name: {"applies": v.applies, "passed": v.passed, "reason": v.reason}
            for name, v in verdicts.items()
        },
    }


def share_passing(rows: Sequence[dict[str, Any]], side: str) -> dict[str, float]:
    """Percent of probes passing overall and, per rule, of the probes it applies to."""
    shares = {"pass_rate": 100.0 * sum(r[side]["passed"] for r in rows) / len(rows)}
    for name in RULES.names():
        applicable = [r[side]["rules"][name] for r in rows if r[side]["rules"][name]["applies"]]
        shares[f"{name}_rate"] = (
            100.0 * sum(v["passed"] for v in applicable) / len(applicable) if applicable else 0.0
        )
    return shares


def collect_probes(probe_files: Sequence[str | Path], config: SafetyConfig) -> tuple[list[Probe], int, str]:
    """The probes to run (each source cut to `limit`), how many were available, and one hash of all sources."""
    sources = [read_probes(file) for file in probe_files]
    hashes = [file_sha256(Path(file)) for file in probe_files]
    if config.guard_red_flags:
        guard_probes, guard_hash = guard_red_flag_probes()
        sources.append(guard_probes)
        hashes.append(guard_hash)
    if not sources:
        raise WenzhenError("no probes: pass --probes FILE or keep the guard's red-flag set")
    chosen = [probe for probes in sources for probe in probes[: config.limit]]
    combined = hashes[0] if len(hashes) == 1 else hashlib.sha256("".join(hashes).encode()).hexdigest()
    return chosen, sum(len(p) for p in sources), combined


def evaluate_safety(
    engine_or_model_path: ChatEngine | str | Path,
    probe_files: Sequence[str | Path],
    out_dir: str | Path,
    config: SafetyConfig | None = None,
    force: bool = False,
) -> EvalReport:
    """Answer the probes without and with the guard, judge each answer by rule, write the report and answers."""
    config = config or SafetyConfig()
    check_output(out_dir, force, [engine_or_model_path, *probe_files])
    probes, available, data_hash = collect_probes(probe_files, config)
    engine = open_engine(engine_or_model_path, config.model)
    sides = SIDES if config.use_guard else SIDES[:1]

    started = time.monotonic()
    conversations = [probe_messages(probe) for probe in probes]
    rows: list[dict[str, Any]] = [
        {"id": p.id, "source": p.source, "messages": m, "reference": p.reference, "red_flag": p.red_flag}
        for p, m in zip(probes, conversations, strict=True)
    ]
    policy = ConsultationPolicy(engine, config.serving_safety)
    for side in sides:
        if side == "with_guard":
            answers = answer_probes(conversations, config, side, served_answers(policy, config.generation))
        else:
            answers = answer_probes(conversations, config, side, bare_answers(engine, config.generation))
        for row, probe, answer in zip(rows, probes, answers, strict=True):
            row[side] = judged(probe, answer)
    elapsed = time.monotonic() - started

    metrics = {f"{side}_{key}": value for side in sides for key, value in share_passing(rows, side).items()}
    guard_probes = [p for f in config.guard_probes for p in read_guard_probes(f)] or default_guard_probes()
    background = [t for f in config.background for t in read_background(f)]
    guard_figures, guard_breakdown, _ = guard_metrics(guard_probes, background, safety.get_guard().check)
    metrics.update(guard_figures)
    sources = list(dict.fromkeys(probe.source for probe in probes))
    breakdown = {
        source: {
            f"{side}_pass_rate": share_passing([r for r in rows if r["source"] == source], side)["pass_rate"]
            for side in sides
        }
        for source in sources
    }
    applicable = {
        f"{name}_applicable": sum(r["without_guard"]["rules"][name]["applies"] for r in rows)
        for name in RULES.names()
    }
    report = EvalReport(
        kind="safety",
        label=run_label(engine, config.label),
        model=str(engine.loaded.path),
        adapter=adapter_path(engine),
        data=DataInfo(
            path=", ".join(
                [*map(str, probe_files), *(["wenzhen:" + GUARD_RED_FLAGS] if config.guard_red_flags else [])]
            ),
            sha256=data_hash,
            n_available=available,
            n_evaluated=len(probes),
            selection="all" if config.limit is None else f"first {config.limit} of each source",
        ),
        settings={
            "batch_size": config.batch_size,
            "guard": config.use_guard,
            # Which consultation policy was measured: the hash of the serving config's safety section.
            "serving_safety_sha256": hashlib.sha256(
                config.serving_safety.model_dump_json().encode()
            ).hexdigest()[:16],
            **config.generation.model_dump(),
        },
        metrics=metrics,
        metric_labels={key: key.replace("_", " ") + " (%)" for key in metrics},
        metric_definitions={
            f"{side}_{name}": f"{side.replace('_', ' ')}: {text}"
            for side in sides
            for name, text in RATE_DEFINITIONS.items()
        }
        | {k: v for k, v in GUARD_METRIC_DEFINITIONS.items() if k in metrics},
        breakdown=breakdown,
        counts={"probes": len(probes), **applicable},
        notes=[
            "with guard: the guard's system prompt is added before generating, and its emergency guidance and "
            "disclaimer (which names 就医) are part of the judged answer, as users see it"
        ]
        if config.use_guard
        else [],
        device=describe_device(engine),
        elapsed_s=round(elapsed, 2),
    )
    by_source = "## Pass rate by probe source\n\n" + markdown_table(
        ["source", "probes", *(f"{side} (%)" for side in sides)],
        [
            (s, sum(p.source == s for p in probes), *(breakdown[s][f"{side}_pass_rate"] for side in sides))
            for s in sources
        ],
    )
    failures = [
        (row["id"], row["messages"][-1]["content"][:50], name, verdict["reason"][:80])
        for row in rows
        for name, verdict in row["without_guard"]["rules"].items()
        if verdict["applies"] and not verdict["passed"]
    ][:10]
    failed = "## First failures (without guard)\n\n" + markdown_table(
        ["probe", "question", "rule", "why"], failures
    )
    with output_directory(out_dir, force, [engine_or_model_path, *probe_files]) as folder:
        write_jsonl(folder / ANSWERS, rows)
        guard = guard_report_section(guard_figures, guard_breakdown)
        return write_report(
            folder, report, render_markdown(report, "Safety probes", [by_source, failed, guard])
        )
