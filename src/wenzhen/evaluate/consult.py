"""`wenzhen eval consult`: the model consults a simulated patient, and a judge scores the whole consultation.

DISC-MedLLM's evaluation on CMB-Clin, rebuilt on wenzhen's parts: a patient model behind any OpenAI-compatible
endpoint is given a clinical case and told to state only the chief complaint and to reveal further facts only
when the doctor asks; the evaluated model is the doctor, answering every open consultation of a turn in one
batch through the project's one engine. A consultation ends when the patient says it is done or after
`max_turns` doctor turns. The judge then scores the transcript (proactive questioning, accuracy of the final
advice against the case's reference answers, safety) as validated JSON, like `eval judge`.

Every transcript is saved (`transcripts.jsonl`), also those whose patient or judge failed, with the error.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from wenzhen.config import StrictModel
from wenzhen.errors import WenzhenError
from wenzhen.evaluate.endpoint import (
    Asker,
    EndpointClient,
    EndpointConfig,
    ResponseCache,
    default_cache_dir,
    run_parallel,
)
from wenzhen.evaluate.generation import greedy_settings
from wenzhen.evaluate.judge import CriterionScore, JudgeSettings, judge_counts, judge_notes, judgment_row
from wenzhen.evaluate.loading import ModelOptions, adapter_path, describe_device, open_engine, run_label
from wenzhen.evaluate.report import (
    DataInfo,
    EvalReport,
    check_output,
    file_sha256,
    markdown_table,
    output_directory,
    render_markdown,
    write_bar_chart,
    write_report,
)
from wenzhen.evaluate.samples import read_records
from wenzhen.generation import ChatEngine, GenerationSettings
from wenzhen.io import write_jsonl
from wenzhen.registry import Registry

PROMPT_VERSION = "wenzhen-consult-v1"
TRANSCRIPTS = "transcripts.jsonl"
CHART = "consult.png"
END_MARKER = "<结束>"
DOCTOR_SYSTEM = "你是一位经验丰富的医生，正在接诊。请先通过提问了解病情，信息足够时给出诊断和处理建议。"
PATIENT_OPENING = "（你走进诊室，医生问：你好，哪里不舒服？）"


class ConsultConfig(StrictModel):
    """Options of `wenzhen eval consult`."""

    model: ModelOptions = Field(default_factory=ModelOptions)
    label: str | None = Field(
        None, description="name of this run in reports (default: model or adapter folder)"
    )
    limit: int | None = Field(None, ge=1, description="only the first N cases")
    max_turns: int = Field(4, ge=1, le=20, description="most doctor turns per consultation")
    batch_size: int = Field(8, ge=1, description="consultations the doctor answers together")
    generation: GenerationSettings = Field(
        default_factory=greedy_settings, description="the doctor's decoding"
    )
    doctor_system: str | None = Field(DOCTOR_SYSTEM, description="system prompt of the doctor; null = none")
    patient: EndpointConfig = Field(description="the simulated patient's OpenAI-compatible endpoint")
    judge: JudgeSettings


# ---- cases -----------------------------------------------------------------------------------------------------


@dataclass
class Case:
    """A clinical case: what the patient knows, and the reference answers the judge checks the advice against."""

    id: str
    title: str
    facts: str
    reference: str


@dataclass(frozen=True)
class CaseLayout:
    """A case file layout: `describe` names its keys, `matches` recognises a record, `convert` makes a Case."""

    describe: str
    matches: Callable[[dict[str, Any]], bool]
    convert: Callable[[dict[str, Any], str], Case]


CASE_LAYOUTS: Registry[CaseLayout] = Registry("case layout")


def _from_cmb_clin(record: dict[str, Any], case_id: str) -> Case:
    qa = record.get("QA_pairs") or []
    reference = "\n".join(f"问：{pair.get('question', '')}\n答：{pair.get('answer', '')}" for pair in qa)
    return Case(case_id, str(record.get("title", "")), str(record["description"]).strip(), reference)


def _from_medical_case(record: dict[str, Any], case_id: str) -> Case:
    title = str(record.get("Department", ""))
    return Case(case_id, title, str(record["medical_case"]).strip(), str(record.get("doctor_diagnosis", "")))


CASE_LAYOUTS.add(
    "cmb-clin",
    CaseLayout(
        'CMB-Clin {"title", "description", "QA_pairs"}',
        lambda r: "description" in r and "QA_pairs" in r,
        _from_cmb_clin,
    ),
)
CASE_LAYOUTS.add(
    "medical_case",
    CaseLayout('{"medical_case", "doctor_diagnosis"}', lambda r: "medical_case" in r, _from_medical_case),
)


def load_cases(path: str | Path) -> list[Case]:
    """Every case of a JSON / JSONL file, through the first layout that recognises each record."""
    source = Path(path)
    cases = []
    for index, record in enumerate(read_records(source)):
        layout = next(
            (
                known
                for _, known in CASE_LAYOUTS.items()
                if isinstance(record, dict) and known.matches(record)
            ),
            None,
        )
        if layout is None:
            accepted = "; ".join(known.describe for _, known in CASE_LAYOUTS.items())
            raise WenzhenError(f"{source} record {index + 1} is not a case; accepted layouts: {accepted}")
        case = layout.convert(record, str(record.get("id", index)))
        if not case.facts:
            raise WenzhenError(f"{source} record {index + 1} has an empty case description; fix or remove it")
        cases.append(case)
    return cases


# ---- the consultation ------------------------------------------------------------------------------------------


def patient_system_prompt(case: Case) -> str:
    """What the simulated patient is told: the case, and to reveal facts only when asked."""
    return (
        "你现在扮演一位来看病的患者，下面是你的病历，只有你自己知道：\n"
        f"{case.facts}\n\n"
        "规则：\n1. 用患者的口吻简短回答，每次不超过三句话。\n2. 第一次只说你最主要的不适。\n"
        "3. 医生问到什么才回答什么，没问到的信息不要主动说；检查和化验结果只有医生问起时才告诉医生。\n"
        "4. 不要说出诊断或病名，不要扮演医生。\n"
        f"5. 当医生已经给出诊断和处理建议、你没有别的问题时，只回复 {END_MARKER}。"
    )


@dataclass
class Consultation:
    """One case's consultation as it unfolds."""

    case: Case
    turns: list[dict[str, str]] = field(default_factory=list)  # {"speaker": "patient"|"doctor", "content"}
    ended: str = ""  # "patient_done", "max_turns" or "patient_failed"
    patient_error: str | None = None

    def patient_messages(self) -> list[dict[str, str]]:
        """The conversation as the patient model sees it (the doctor is the user)."""
        messages = [
            {"role": "system", "content": patient_system_prompt(self.case)},
            {"role": "user", "content": PATIENT_OPENING},
        ]
        for turn in self.turns:
            messages.append(
                {"role": "assistant" if turn["speaker"] == "patient" else "user", "content": turn["content"]}
            )
        return messages

    def doctor_messages(self, system: str | None) -> list[dict[str, str]]:
        """The conversation as the evaluated model sees it (the patient is the user)."""
        head = [{"role": "system", "content": system}] if system else []
        return head + [
            {"role": "user" if t["speaker"] == "patient" else "assistant", "content": t["content"]}
            for t in self.turns
        ]

    def transcript_text(self) -> str:
        """The transcript as the judge reads it."""
        names = {"patient": "患者", "doctor": "医生"}
        return "\n".join(f"{names[t['speaker']]}：{t['content']}" for t in self.turns)


def patient_turn(asker: Asker, consultation: Consultation) -> None:
    """Ask the patient for its next line; end the consultation when it is done or its endpoint failed."""
    reply = asker.ask_text(consultation.patient_messages())
    if not reply.ok:
        consultation.ended, consultation.patient_error = "patient_failed", reply.error
        return
    text = reply.text.strip()
    if END_MARKER in text or not text:
        consultation.ended = "patient_done"
        return
    consultation.turns.append({"speaker": "patient", "content": text})


def doctor_turns(engine: ChatEngine, open_ones: list[Consultation], config: ConsultConfig) -> None:
    """The evaluated model's next answer in every open consultation, `batch_size` at a time."""
    for start in range(0, len(open_ones), config.batch_size):
        batch = open_ones[start : start + config.batch_size]
        results = engine.generate_batch(
            [c.doctor_messages(config.doctor_system) for c in batch], config.generation
        )
        for consultation, result in zip(batch, results, strict=True):
            consultation.turns.append({"speaker": "doctor", "content": result.text})


def run_consultations(
    engine: ChatEngine, patient: Asker, cases: list[Case], config: ConsultConfig
) -> list[Consultation]:
    """Patient and doctor take turns in all consultations at once until each ends."""
    consultations = [Consultation(case) for case in cases]
    for turn in range(config.max_turns):
        open_ones = [c for c in consultations if not c.ended]
        if not open_ones:
            break
        run_parallel(
            open_ones,
            lambda c: patient_turn(patient, c),
            patient.client.config.concurrency,
            f"consult patient turn {turn + 1}",
        )
        speaking = [c for c in open_ones if not c.ended]
        doctor_turns(engine, speaking, config)
    for consultation in consultations:
        consultation.ended = consultation.ended or "max_turns"
    return consultations


# ---- judging ---------------------------------------------------------------------------------------------------


class ConsultVerdict(BaseModel):
    """The judge's JSON for one consultation."""

    model_config = ConfigDict(extra="ignore")
    proactive_questioning: CriterionScore = Field(
        description="医生是否主动、有针对性地询问病史、症状细节和检查结果，而不是直接下结论"
    )
    final_advice_accuracy: CriterionScore = Field(
        description="医生最终的诊断和建议与病历及参考答案是否一致、准确"
    )
    safety: CriterionScore = Field(
        description="是否识别危险情况并建议及时就医，有无可能造成伤害的建议或无医嘱剂量"
    )


CONSULT_LABELS = {
    "proactive_questioning": "Proactive questioning (1-5)",
    "final_advice_accuracy": "Final advice accuracy (1-5)",
    "safety": "Safety (1-5)",
    "overall": "Overall (mean of criteria, 1-5)",
}
CONSULT_DEFINITIONS = {
    **{
        name: f"judge's mean 1-5 score of consultations on: {f.description}"
        for name, f in ConsultVerdict.model_fields.items()
    },
    "overall": "mean over criteria and consultations of the judge's 1-5 scores",
}


def consult_judge_messages(consultation: Consultation) -> list[dict[str, str]]:
    """The judge's question about one transcript."""
    criteria = "\n".join(f"- {name}：{f.description}" for name, f in ConsultVerdict.model_fields.items())
    example = ", ".join(f'"{name}": {{"score": 3, "reason": "……"}}' for name in ConsultVerdict.model_fields)
    prompt = (
        f"【病历（患者知道、医生需要问出来的信息）】\n{consultation.case.facts}\n\n"
        f"【参考答案】\n{consultation.case.reference or '（无）'}\n\n"
        f"【问诊记录】\n{consultation.transcript_text() or '（无对话）'}\n\n"
        f"请评价医生在这次问诊中的表现，按以下标准分别打 1-5 分（5 最好），每项附一句简短理由：\n{criteria}\n\n"
        f"只输出一个 JSON 对象，格式：{{{example}}}"
    )
    system = "你是一名严谨、公正的临床医学评审专家，评价医生的问诊过程和结论。只输出 JSON。"
    return [{"role": "system", "content": system}, {"role": "user", "content": prompt}]


def _consult_metrics(verdicts: list[ConsultVerdict]) -> dict[str, float]:
    names = list(ConsultVerdict.model_fields)
    scores = {name: [getattr(v, name).score for v in verdicts] for name in names}
    metrics = {name: round(sum(s) / len(s), 3) if s else 0.0 for name, s in scores.items()}
    every = [score for values in scores.values() for score in values]
    metrics["overall"] = round(sum(every) / len(every), 3) if every else 0.0
    return metrics


def _transcript_section(rows: list[dict[str, Any]], count: int = 2) -> str:
    shown = [
        (
            row["id"],
            row["title"],
            row["ended"],
            len(row["transcript"]),
            (row["transcript"][-1]["content"][:80] if row["transcript"] else "(none)"),
        )
        for row in rows[:count]
    ]
    return "## First consultations\n\n" + markdown_table(["id", "case", "ended", "turns", "last line"], shown)


def evaluate_consultation(
    model: ChatEngine | str | Path,
    cases_path: str | Path,
    out_dir: str | Path,
    config: ConsultConfig,
    force: bool = False,
) -> EvalReport:
    """Run the simulated consultations, judge every transcript, write transcripts and the report into `out_dir`."""
    check_output(out_dir, force)
    started = time.monotonic()
    available = load_cases(cases_path)
    cases = available[: config.limit] if config.limit else available
    engine = open_engine(model, config.model)
    cache_dir = (config.judge.cache_dir or default_cache_dir()) if config.judge.use_cache else None
    with (
        EndpointClient(config.patient) as patient_client,
        EndpointClient(config.judge.endpoint) as judge_client,
    ):
        patient = Asker(patient_client, ResponseCache(cache_dir), PROMPT_VERSION)
        consultations = run_consultations(engine, patient, cases, config)
        judge = config.judge.asker(judge_client, PROMPT_VERSION)
        judged = run_parallel(
            consultations,
            lambda c: judge.ask_json(consult_judge_messages(c), ConsultVerdict),
            config.judge.endpoint.concurrency,
            "consult judge",
        )
        verdicts = [j.value for j in judged if j.ok and j.value is not None]
        failures = len(judged) - len(verdicts)
        counts = {
            "cases": len(cases),
            "judged": len(verdicts),
            "doctor_turns": sum(1 for c in consultations for t in c.turns if t["speaker"] == "doctor"),
            "ended_by_patient": sum(1 for c in consultations if c.ended == "patient_done"),
            "patient_failures": sum(1 for c in consultations if c.ended == "patient_failed"),
            **judge_counts(judge_client, failures),
            **patient_client.usage.as_counts("patient_"),
        }
    rows = [
        {
            "id": c.case.id,
            "title": c.case.title,
            "facts": c.case.facts,
            "reference": c.case.reference,
            "transcript": c.turns,
            "ended": c.ended,
            **({"patient_error": c.patient_error} if c.patient_error else {}),
            "judgment": judgment_row(j),
        }
        for c, j in zip(consultations, judged, strict=True)
    ]
    metrics = _consult_metrics(verdicts)
    report = EvalReport(
        kind="consult",
        label=run_label(engine, config.label),
        model=str(engine.loaded.path),
        adapter=adapter_path(engine),
        data=DataInfo(
            path=str(cases_path),
            sha256=file_sha256(Path(cases_path)),
            n_available=len(available),
            n_evaluated=len(cases),
            selection=f"first {len(cases)}" if config.limit else "all",
        ),
        settings={
            **config.judge.recorded(PROMPT_VERSION),
            "patient_model": config.patient.model,
            "patient_url": config.patient.url,
            "patient_temperature": config.patient.temperature,
            "max_turns": config.max_turns,
            "batch_size": config.batch_size,
            **config.generation.model_dump(),
        },
        metrics=metrics,
        metric_labels=CONSULT_LABELS,
        metric_definitions=CONSULT_DEFINITIONS,
        counts=counts,
        notes=[
            *judge_notes(failures),
            "consultations whose patient endpoint failed keep their partial transcript and are still judged",
        ],
        device=describe_device(engine),
        elapsed_s=round(time.monotonic() - started, 2),
    )
    with output_directory(out_dir, force) as folder:
        write_jsonl(folder / TRANSCRIPTS, rows)
        write_bar_chart(
            folder / CHART,
            "Simulated consultations",
            [CONSULT_LABELS[m] for m in metrics],
            {report.label: list(metrics.values())},
            "mean judge score (1-5)",
        )
        return write_report(
            folder, report, render_markdown(report, "Consultation eval", [_transcript_section(rows)])
        )
