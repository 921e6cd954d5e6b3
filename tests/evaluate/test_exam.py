"""Exam scoring: CSV layouts, the CMMLU prompt, exact accuracy with a stub scorer, and the real letter positions."""

import csv
from collections.abc import Sequence
from pathlib import Path

import pytest

from wenzhen.errors import WenzhenError
from wenzhen.evaluate.exam import (
    LETTERS,
    ModelLetterScorer,
    build_messages,
    letter_positions,
    load_exam,
    predicted_letter,
    read_questions,
    run_exam,
)
from wenzhen.models import Message


def _csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _cmmlu(root: Path, subject: str, golds: str) -> None:
    header = ["", "Question", "A", "B", "C", "D", "Answer"]
    rows = [[str(i), f"{subject}问题{i}", "甲", "乙", "丙", "丁", gold] for i, gold in enumerate(golds)]
    _csv(root / "test" / f"{subject}.csv", header, rows)
    _csv(root / "dev" / f"{subject}.csv", header, [["0", f"{subject}例题", "甲", "乙", "丙", "丁", "B"]])


class StubScorer:
    """Answers from a fixed table question text -> letter; counts the conversations it saw."""

    def __init__(self, choices: dict[str, str]) -> None:
        self.choices = choices
        self.seen: list[list[Message]] = []

    def __call__(self, conversations: Sequence[list[Message]]) -> list[dict[str, float]]:
        results = []
        for messages in conversations:
            self.seen.append(messages)
            asked = messages[-1]["content"].rsplit("题目：", 1)[1].split("\n", 1)[0]
            results.append({letter: (0.0 if letter == self.choices[asked] else -5.0) for letter in LETTERS})
        return results


def test_stub_scorer_gives_the_exact_accuracy(tmp_path: Path) -> None:
    _cmmlu(tmp_path, "anatomy", "ABCD")  # the stub gets 3 of 4 right
    _cmmlu(tmp_path, "virology", "AAAAAA")  # and 2 of 6 right
    layout, subjects = load_exam(tmp_path)
    assert layout == "cmmlu" and [s.name for s in subjects] == ["anatomy", "virology"]
    choices = {f"anatomy问题{i}": letter for i, letter in enumerate("ABCA")}
    choices |= {f"virology问题{i}": letter for i, letter in enumerate("AABBCD")}
    scorer = StubScorer(choices)
    outcome = run_exam(subjects, scorer, shots=[0, 1])
    for count in (0, 1):
        assert outcome.metrics[f"accuracy-{count}shot"] == pytest.approx(50.0)  # 5 of 10 pooled
        assert outcome.metrics[f"accuracy-{count}shot-macro"] == pytest.approx((75.0 + 100 / 3) / 2)
        assert outcome.breakdown["anatomy"][f"accuracy-{count}shot"] == pytest.approx(75.0)
    assert len(scorer.seen) == 20 and len(outcome.answers) == 20
    assert "例题" not in scorer.seen[0][0]["content"] and "例题" in scorer.seen[10][0]["content"]
    limited = run_exam(subjects, StubScorer(choices), shots=[0], limit=2)
    assert limited.metrics["accuracy-0shot"] == pytest.approx(100.0)  # first two of each are right


def test_cmmlu_prompt_has_subject_shots_and_open_answer(tmp_path: Path) -> None:
    _cmmlu(tmp_path, "anatomy", "C")
    _, (subject,) = load_exam(tmp_path)
    (message,) = build_messages(subject.questions[0], subject.shots)
    text = message["content"]
    assert text.startswith(
        "以下是关于解剖学的单项选择题，请直接给出正确答案的选项。\n\n题目：anatomy例题\nA. 甲"
    )
    assert "答案是：B\n\n题目：anatomy问题0" in text
    assert text.endswith("D. 丁\n答案是：")


def test_ties_go_to_the_earliest_letter() -> None:
    assert predicted_letter({"A": -1.0, "B": -0.5, "C": -0.5, "D": -2.0}) == "B"


def test_ceval_layout_uses_val_and_dev(tmp_path: Path) -> None:
    header = ["id", "question", "A", "B", "C", "D", "answer", "explanation"]
    _csv(tmp_path / "val" / "physician_val.csv", header, [["0", "问", "1", "2", "3", "4", "D", ""]])
    _csv(tmp_path / "dev" / "physician_dev.csv", header, [["0", "例", "1", "2", "3", "4", "A", "因为"]])
    layout, (subject,) = load_exam(tmp_path)
    assert layout == "ceval" and subject.name == "physician"
    assert subject.questions[0].answer == "D" and subject.shots[0].answer == "A"


@pytest.mark.parametrize(
    ("header", "row", "message"),
    [
        (["", "Question", "A", "B", "C", "Answer"], ["0", "q", "a", "b", "c", "A"], "lacks column"),
        (
            ["", "Question", "A", "B", "C", "D", "Answer"],
            ["0", "q", "a", "b", "c", "d", "E"],
            "t.csv:2 has answer 'E'",
        ),
        (
            ["", "Question", "A", "B", "C", "D", "Answer"],
            ["0", "", "a", "b", "c", "d", "A"],
            "an empty question",
        ),
    ],
)
def test_malformed_exam_csv_is_a_clear_error(
    tmp_path: Path, header: list[str], row: list[str], message: str
) -> None:
    _csv(tmp_path / "t.csv", header, [row])
    with pytest.raises(WenzhenError, match=message):
        read_questions(tmp_path / "t.csv", "t")


def test_missing_directory_unknown_subject_and_no_layout(tmp_path: Path) -> None:
    with pytest.raises(WenzhenError, match="does not exist"):
        load_exam(tmp_path / "nope")
    with pytest.raises(WenzhenError, match="no exam CSVs in a known layout"):
        load_exam(tmp_path)
    _cmmlu(tmp_path, "anatomy", "A")
    with pytest.raises(WenzhenError, match="no subject genetics"):
        load_exam(tmp_path, ["genetics"])


def test_shared_cmmlu_medical_loads(shared_dir: Path) -> None:
    layout, subjects = load_exam(shared_dir / "data/cmmlu-medical")
    assert layout == "cmmlu" and len(subjects) == 9
    assert sum(len(s.questions) for s in subjects) == 1815
    assert all(len(s.shots) == 5 for s in subjects)


def test_letter_positions_on_chatglm3_follow_the_official_format(chatglm3_dir: Path) -> None:
    from wenzhen.evaluate.loading import ModelOptions, open_engine

    engine = open_engine(chatglm3_dir / "tiny-chatglm3", ModelOptions(device="cpu"))
    prompt, letters = letter_positions(
        engine, [{"role": "user", "content": "题目：1+1\nA. 1\nB. 2\n答案是："}]
    )
    generation_prompt = engine.encode([{"role": "user", "content": "题目：1+1\nA. 1\nB. 2\n答案是："}])
    assert prompt[: len(generation_prompt)] == generation_prompt  # ... <|assistant|>
    assert (
        engine.tokenizer.decode(prompt[len(generation_prompt) :]).strip() == ""
    )  # then the "\n" of the turn
    assert [engine.tokenizer.decode([letters[x]]).strip() for x in LETTERS] == list(LETTERS)


def test_batched_scoring_equals_one_at_a_time(chatglm3_dir: Path, shared_dir: Path) -> None:
    from wenzhen.evaluate.loading import ModelOptions, open_engine

    engine = open_engine(chatglm3_dir / "tiny-chatglm3", ModelOptions(device="cpu", dtype="fp32"))
    _, (subject,) = load_exam(shared_dir / "data/cmmlu-medical", ["anatomy"])
    conversations = [
        build_messages(q, subject.shots[:k]) for q, k in zip(subject.questions, (0, 5, 1), strict=False)
    ]
    batched = ModelLetterScorer(engine, batch_size=3)(conversations)  # prompts of very different lengths
    alone = ModelLetterScorer(engine, batch_size=1)(conversations)
    for together, single in zip(batched, alone, strict=True):
        assert together == pytest.approx(single, abs=1e-4)
