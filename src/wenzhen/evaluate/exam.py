"""`wenzhen eval exam`: multiple-choice accuracy on CMMLU- or C-Eval-layout CSVs, zero- and few-shot.

Each question becomes one user message (CMMLU's own prompt: the subject line, the dev rows as solved shots, the
question and "答案是："), encoded by the model family's chat formatter. The answer is the option letter whose token
the model finds most likely next. The letter's position is found without knowing the family: the conversation is
encoded once per letter with that letter as the assistant's reply; the ids agree up to the letter and differ
there, so the shared prefix (ChatGLM3's "\\n" after `<|assistant|>` included) is the model input and the differing
ids are the candidates. Scoring goes through an injectable `LetterScorer`, so a stub with known answers tests the
accuracy arithmetic exactly.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
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
from wenzhen.generation import ChatEngine
from wenzhen.io import write_jsonl
from wenzhen.models import Message
from wenzhen.registry import Registry

LETTERS = ("A", "B", "C", "D")
ANSWERS = "answers.jsonl"

# CMMLU's Chinese subject names for its medical subjects and C-Eval's, used in the prompt's first line.
SUBJECT_NAMES = {
    "anatomy": "解剖学",
    "clinical_knowledge": "临床知识",
    "college_medicine": "大学医学",
    "college_medical_statistics": "大学医学统计",
    "genetics": "遗传学",
    "nutrition": "营养学",
    "professional_medicine": "专业医学",
    "traditional_chinese_medicine": "中医中药",
    "virology": "病毒学",
    "basic_medicine": "基础医学",
    "clinical_medicine": "临床医学",
    "physician": "医师资格",
    "veterinary_medicine": "兽医学",
}


@dataclass(frozen=True)
class Question:
    """One four-option question with its gold letter."""

    subject: str
    id: str
    question: str
    options: tuple[str, str, str, str]
    answer: str


@dataclass(frozen=True)
class Subject:
    """A subject's questions and, for few-shot prompts, its solved dev rows."""

    name: str
    questions: list[Question]
    shots: list[Question]


@dataclass(frozen=True)
class ExamLayout:
    """Where a benchmark keeps a subject's questions and dev rows."""

    describe: str
    question_files: Callable[[Path], list[Path]]
    subject_of: Callable[[Path], str]
    dev_file: Callable[[Path, str], Path]


LAYOUTS: Registry[ExamLayout] = Registry("exam layout")
LAYOUTS.add(
    "cmmlu",
    ExamLayout(
        "test/SUBJECT.csv with dev/SUBJECT.csv (columns ,Question,A,B,C,D,Answer)",
        lambda root: sorted((root / "test").glob("*.csv")),
        lambda file: file.stem,
        lambda root, subject: root / "dev" / f"{subject}.csv",
    ),
)
LAYOUTS.add(
    "ceval",
    ExamLayout(
        "val/SUBJECT_val.csv with dev/SUBJECT_dev.csv (columns id,question,A,B,C,D,answer); C-Eval's test "
        "split has no answers",
        lambda root: sorted((root / "val").glob("*_val.csv")),
        lambda file: file.stem.removesuffix("_val"),
        lambda root, subject: root / "dev" / f"{subject}_dev.csv",
    ),
)


def read_questions(path: Path, subject: str) -> list[Question]:
    """The rows of one exam CSV; a missing column, option or answer letter is an error naming file and row."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise WenzhenError(f"{path} is not a readable UTF-8 CSV ({exc}); re-export it as UTF-8") from None
    if not rows:
        raise WenzhenError(f"{path} has no question rows; remove it or fill it")
    header = {name.strip().lower(): name for name in rows[0] if name is not None}
    missing = [
        column for column in ("question", *[c.lower() for c in LETTERS], "answer") if column not in header
    ]
    if missing:
        raise WenzhenError(
            f"{path} lacks column(s) {', '.join(missing)}; exam CSVs need Question,A,B,C,D,Answer (CMMLU/C-Eval)"
        )
    id_column = header.get("id", header.get(""))
    questions = []
    for number, row in enumerate(rows, start=2):
        answer = (row[header["answer"]] or "").strip().upper()
        options = tuple((row[header[letter.lower()]] or "").strip() for letter in LETTERS)
        text = (row[header["question"]] or "").strip()
        if answer not in LETTERS or not text:
            raise WenzhenError(
                f"{path}:{number} has answer {answer!r} or an empty question; each row needs a question and an "
                "answer among A, B, C, D"
            )
        row_id = (row.get(id_column) or "").strip() if id_column is not None else ""
        questions.append(Question(subject, row_id or str(number - 2), text, options, answer))  # type: ignore[arg-type]
    return questions


def load_exam(data_dir: str | Path, subjects: Sequence[str] | None = None) -> tuple[str, list[Subject]]:
    """The layout name and the subjects found under `data_dir` (all, or those named)."""
    root = Path(data_dir)
    if not root.is_dir():
        raise WenzhenError(
            f"exam directory {root} does not exist; pass --data with a CMMLU or C-Eval data folder"
        )
    for layout_name, layout in LAYOUTS.items():
        files = layout.question_files(root)
        if not files:
            continue
        found = {layout.subject_of(file): file for file in files}
        wanted = list(subjects) if subjects else list(found)
        unknown = [name for name in wanted if name not in found]
        if unknown:
            raise WenzhenError(f"no subject {', '.join(unknown)} in {root}; choose from: {', '.join(found)}")
        loaded = []
        for name in wanted:
            dev = layout.dev_file(root, name)
            shots = read_questions(dev, name) if dev.is_file() else []
            loaded.append(Subject(name, read_questions(found[name], name), shots))
        return layout_name, loaded
    layouts = "; ".join(f"{name}: {layout.describe}" for name, layout in LAYOUTS.items())
    raise WenzhenError(f"{root} holds no exam CSVs in a known layout ({layouts})")


def format_question(question: Question, answer: str | None) -> str:
    """CMMLU's question block; with the answer for a shot, ending in "答案是：" for the asked question."""
    lines = [f"题目：{question.question}"]
    lines += [f"{letter}. {option}" for letter, option in zip(LETTERS, question.options, strict=True)]
    lines.append(f"答案是：{answer or ''}")
    return "\n".join(lines)


def build_messages(question: Question, shots: Sequence[Question]) -> list[Message]:
    """One user message: CMMLU's subject line, the solved shots, then the question."""
    subject = SUBJECT_NAMES.get(question.subject, question.subject.replace("_", " "))
    parts = [f"以下是关于{subject}的单项选择题，请直接给出正确答案的选项。"]
    parts += [format_question(shot, shot.answer) for shot in shots]
    parts.append(format_question(question, None))
    return [{"role": "user", "content": "\n\n".join(parts)}]


class LetterScorer(Protocol):
    """Scores the option letters as the model's next token: one `{letter: log-probability}` per conversation."""

    def __call__(self, conversations: Sequence[list[Message]]) -> list[dict[str, float]]: ...


def letter_positions(engine: ChatEngine, messages: list[Message]) -> tuple[list[int], dict[str, int]]:
    """The prompt ids up to the answer letter and each letter's first token id there (see the module docstring)."""
    encodings = {
        letter: engine.family.encode_prompt(
            engine.tokenizer,
            [*messages, {"role": "assistant", "content": letter}],
            add_generation_prompt=False,
        )
        for letter in LETTERS
    }
    first = encodings[LETTERS[0]]
    shared = 0
    while (
        all(shared < len(ids) for ids in encodings.values())
        and len({ids[shared] for ids in encodings.values()}) == 1
    ):
        shared += 1
    if shared >= len(first) or len({ids[shared] for ids in encodings.values() if shared < len(ids)}) < len(
        LETTERS
    ):
        raise WenzhenError(
            f"the {engine.family.name} chat format does not give the letters A-D distinct tokens; "
            "this model cannot be scored by letter likelihood"
        )
    return first[:shared], {letter: ids[shared] for letter, ids in encodings.items()}


class ModelLetterScorer:
    """Next-token log-probabilities of each letter from one forward pass per batch (left-padded)."""

    def __init__(self, engine: ChatEngine, batch_size: int = 8) -> None:
        self.engine = engine
        self.batch_size = batch_size

    @torch.inference_mode()
    def __call__(self, conversations: Sequence[list[Message]]) -> list[dict[str, float]]:
        scored: list[dict[str, float]] = []
        for start in range(0, len(conversations), self.batch_size):
            prepared = [
                letter_positions(self.engine, c) for c in conversations[start : start + self.batch_size]
            ]
            last_logits = self._last_logits([prompt for prompt, _ in prepared])
            log_probs = torch.log_softmax(last_logits.float(), dim=-1)
            for row, (_, letter_ids) in enumerate(prepared):
                scored.append({letter: float(log_probs[row, token]) for letter, token in letter_ids.items()})
        return scored

    def _last_logits(self, prompts: list[list[int]]) -> torch.Tensor:
        """Logits after each prompt's last token; left padding keeps every prompt's end in the last column."""
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.engine.pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt)
            attention[row, width - len(prompt) :] = 1
        # Positions count real tokens only, so a left-padded prompt is scored exactly as it would be alone.
        positions = (attention.cumsum(dim=-1) - 1).clamp(min=0)
        device = self.engine.device
        output = self.engine.model(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            position_ids=positions.to(device),
            logits_to_keep=1,
        )
        return output.logits[:, -1, :]


def predicted_letter(scores: dict[str, float]) -> str:
    """The highest-scoring letter; ties go to the earliest letter so results are deterministic."""
    return max(LETTERS, key=lambda letter: (scores[letter], -LETTERS.index(letter)))


class ExamConfig(StrictModel):
    """Options of `wenzhen eval exam`."""

    model: ModelOptions = Field(default_factory=ModelOptions)
    label: str | None = Field(None, description="name of this run in reports")
    shots: list[int] = Field(
        default_factory=lambda: [0, 5], description="few-shot counts to run (0 = zero-shot)"
    )
    subjects: list[str] | None = Field(None, description="subjects to run (default: all found)")
    limit_per_subject: int | None = Field(None, ge=1, description="first N questions of each subject")
    batch_size: int = Field(8, ge=1, description="questions scored per forward pass")


@dataclass
class ExamOutcome:
    """Accuracy per shot count, overall (micro), macro over subjects and per subject, with every answer."""

    metrics: dict[str, float]
    breakdown: dict[str, dict[str, float]]
    answers: list[dict[str, object]]


def run_exam(
    subjects: Sequence[Subject], scorer: LetterScorer, shots: Sequence[int], limit: int | None = None
) -> ExamOutcome:
    """Ask every question of every subject with each shot count; pure apart from the scorer."""
    metrics: dict[str, float] = {}
    breakdown: dict[str, dict[str, float]] = {subject.name: {} for subject in subjects}
    answers: list[dict[str, object]] = []
    total = sum(len(s.questions[:limit]) for s in subjects) * len(shots)
    with progress_bar(total, "eval exam", unit="question") as bar:
        for count in shots:
            key = f"accuracy-{count}shot"
            correct_all = asked_all = 0
            for subject in subjects:
                questions = subject.questions[:limit]
                conversations = [build_messages(q, subject.shots[:count]) for q in questions]
                scores = scorer(conversations)
                correct = 0
                for question, score in zip(questions, scores, strict=True):
                    choice = predicted_letter(score)
                    correct += choice == question.answer
                    answers.append(
                        {
                            "subject": subject.name,
                            "id": question.id,
                            "shots": count,
                            "gold": question.answer,
                            "predicted": choice,
                            "scores": score,
                        }
                    )
                bar.update(len(questions))
                breakdown[subject.name][key] = 100.0 * correct / len(questions)
                correct_all += correct
                asked_all += len(questions)
            metrics[key] = 100.0 * correct_all / asked_all
            metrics[f"{key}-macro"] = sum(breakdown[s.name][key] for s in subjects) / len(subjects)
    return ExamOutcome(metrics, breakdown, answers)


def _check_shots(subjects: Sequence[Subject], shots: Sequence[int]) -> list[str]:
    """Notes where a subject has fewer dev rows than asked for (it then uses all it has)."""
    return [
        f"{s.name}: {len(s.shots)} dev rows, fewer than the {n} shots asked; used {len(s.shots)}"
        for s in subjects
        for n in shots
        if n > len(s.shots)
    ]


def evaluate_exam(
    engine_or_model_path: ChatEngine | str | Path,
    data_dir: str | Path,
    out_dir: str | Path,
    config: ExamConfig | None = None,
    force: bool = False,
    scorer: LetterScorer | None = None,
) -> EvalReport:
    """Run the exam, write `report.json`, `report.md` and `answers.jsonl` into `out_dir`, return the report."""
    config = config or ExamConfig()
    check_output(out_dir, force, [engine_or_model_path, data_dir])
    layout, subjects = load_exam(data_dir, config.subjects)
    engine = open_engine(engine_or_model_path, config.model)
    scorer = scorer or ModelLetterScorer(engine, config.batch_size)
    started = time.monotonic()
    outcome = run_exam(subjects, scorer, config.shots, config.limit_per_subject)
    elapsed = time.monotonic() - started
    asked = sum(len(s.questions[: config.limit_per_subject]) for s in subjects)
    available = sum(len(s.questions) for s in subjects)
    labels = {}
    definitions = {}
    for count in config.shots:
        labels[f"accuracy-{count}shot"] = f"accuracy, {count}-shot (% of all questions)"
        labels[f"accuracy-{count}shot-macro"] = f"accuracy, {count}-shot (mean of subjects, %)"
        definitions[f"accuracy-{count}shot"] = (
            f"share of questions (all subjects pooled) whose most likely next-token letter after the {count}-shot "
            "CMMLU prompt equals the gold letter, x100"
        )
        definitions[f"accuracy-{count}shot-macro"] = (
            f"unweighted mean over subjects of the {count}-shot accuracy"
        )
    report = EvalReport(
        kind="exam",
        label=run_label(engine, config.label),
        model=str(engine.loaded.path),
        adapter=adapter_path(engine),
        data=DataInfo(
            path=str(data_dir),
            sha256=file_sha256(Path(data_dir)),
            n_available=available,
            n_evaluated=asked,
            selection="all"
            if config.limit_per_subject is None
            else f"first {config.limit_per_subject} per subject",
        ),
        settings={
            "layout": layout,
            "shots": config.shots,
            "subjects": len(subjects),
            "batch_size": config.batch_size,
        },
        metrics=outcome.metrics,
        metric_labels=labels,
        metric_definitions=definitions,
        breakdown=outcome.breakdown,
        counts={"questions": asked, "subjects": len(subjects)},
        notes=_check_shots(subjects, config.shots),
        device=describe_device(engine),
        elapsed_s=round(elapsed, 2),
    )
    keys = list(outcome.metrics)[::2]
    per_subject = "## Per subject\n\n" + markdown_table(
        ["subject", "questions", *keys],
        [
            (
                s.name,
                len(s.questions[: config.limit_per_subject]),
                *(outcome.breakdown[s.name][k] for k in keys),
            )
            for s in subjects
        ],
    )
    with output_directory(out_dir, force, [engine_or_model_path, data_dir]) as folder:
        write_jsonl(folder / ANSWERS, outcome.answers)
        return write_report(folder, report, render_markdown(report, "Medical exam", [per_subject]))
