"""`wenzhen eval judge` / `eval consult`: the endpoint client, the statistics, and the whole path end to end.

The end-to-end tests drive the CLI with the tiny ChatGLM3 as the evaluated model and two kinds of real local
servers (see judge_servers.py): `RuleJudge`, whose replies follow fixed rules from the request content so that
the tests can predict every parsed score, and wenzhen's own API on the tiny ChatGLM3, whose random weights never
produce valid JSON, which exercises the "malformed, asked again, recorded as a failure, nothing lost" path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from judge_servers import CONSULT, RUBRIC, RuleJudge, longer_wins, rule_score, wenzhen_api

from wenzhen.cli import main
from wenzhen.errors import WenzhenError
from wenzhen.evaluate.endpoint import (
    Asker,
    EndpointClient,
    EndpointConfig,
    EndpointError,
    ResponseCache,
    first_json_object,
)
from wenzhen.evaluate.judge import (
    PairVerdict,
    RubricVerdict,
    agreement_pairs_path,
    load_labelled_pairs,
    pair_outcome,
    wilson_interval,
)

TOKENS = ["--max-new-tokens", "4", "--device", "cpu", "--batch-size", "2"]


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _report(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "report.json").read_text(encoding="utf-8"))


# ---- units -------------------------------------------------------------------------------------------------------


def test_wilson_interval_matches_the_textbook_values() -> None:
    # 0 of 10: upper bound z^2/(n+z^2) = 27.75%; 5 of 10 is symmetric around 50%.
    assert wilson_interval(0, 10) == (0.0, 27.75)
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(100 - high, abs=0.01) and 23 < low < 24
    assert wilson_interval(0, 0) == (0.0, 100.0)


@pytest.mark.parametrize(
    ("forward", "backward", "outcome", "consistent"),
    [
        ("A", "B", "win", True),
        ("B", "A", "loss", True),
        ("tie", "tie", "tie", True),
        ("A", "A", "tie", False),  # a judge that always picks the first position: cancelled out
        ("B", "B", "tie", False),
        ("A", "tie", "tie", False),
    ],
)
def test_a_pair_counts_only_when_both_orders_agree(
    forward: str, backward: str, outcome: str, consistent: bool
) -> None:
    verdicts = [PairVerdict(better=b, reason="r") for b in (forward, backward)]  # type: ignore[arg-type]
    assert pair_outcome(*verdicts) == (outcome, consistent)
    assert pair_outcome(None, verdicts[1]) == ("failed", False)


def test_first_json_object_is_found_in_prose_and_code_fences() -> None:
    assert first_json_object('好的。\n```json\n{"better": "A", "reason": "x"}\n```\n仅供参考') == {
        "better": "A",
        "reason": "x",
    }
    with pytest.raises(ValueError, match="no JSON object"):
        first_json_object("{不是 JSON} [1, 2]")


def test_cache_key_covers_model_prompt_version_settings_and_content() -> None:
    base = ("judge-a", "v1", {"temperature": 0.0, "max_tokens": 64}, [{"role": "user", "content": "问"}])
    keys = {
        ResponseCache.key(*base),
        ResponseCache.key("judge-b", *base[1:]),
        ResponseCache.key(base[0], "v2", *base[2:]),
        ResponseCache.key(*base[:2], {"temperature": 0.5, "max_tokens": 64}, base[3]),
        ResponseCache.key(*base[:3], [{"role": "user", "content": "问!"}]),
    }
    assert len(keys) == 5 and ResponseCache.key(*base) == ResponseCache.key(*base)


def test_the_shipped_agreement_set_has_fifty_distinct_labelled_pairs() -> None:
    pairs = load_labelled_pairs(agreement_pairs_path())
    assert len(pairs) == 50 and len({p.id for p in pairs}) == 50
    flaws = {flaw: sum(1 for p in pairs if p.flaw == flaw) for flaw in {p.flaw for p in pairs}}
    assert set(flaws) == {"safety", "dosing", "wrong_fact", "unhelpful"} and min(flaws.values()) >= 10
    assert all(p.better != p.worse and p.question and p.why for p in pairs)


def _endpoint(url: str, **overrides: Any) -> EndpointConfig:
    return EndpointConfig.model_validate({"url": url, "model": "rule-judge", "backoff_s": 0.01, **overrides})


def test_rate_limits_and_server_errors_are_retried_with_backoff() -> None:
    delays: list[float] = []
    with (
        RuleJudge(fail_first=3) as server,
        EndpointClient(_endpoint(server.url), sleep=delays.append) as client,
    ):
        completion = client.complete(
            [{"role": "user", "content": "【回答 A】\n长一些的回答\n\n【回答 B】\n短\n\n哪个"}]
        )
    assert server.statuses == [429, 503, 429, 200]
    assert json.loads(completion.text)["better"] == "A"
    # 429 carries Retry-After: 0 (honoured); the 503 falls back to exponential backoff (0.01 * 2**1).
    assert delays == [0.0, 0.02, 0.0] and client.usage.retries == 3 and client.usage.requests == 4
    assert completion.prompt_tokens > 0 and client.usage.completion_tokens == len(completion.text)


def test_an_endpoint_that_keeps_failing_raises_after_the_retries() -> None:
    with (
        RuleJudge(fail_first=10) as server,
        EndpointClient(_endpoint(server.url, max_retries=2), sleep=lambda s: None) as client,
        pytest.raises(EndpointError, match="failed 3 times; last: HTTP 429"),
    ):
        client.complete([{"role": "user", "content": "x"}])


def test_a_malformed_reply_is_corrected_then_cached(tmp_path: Path) -> None:
    question = [{"role": "user", "content": "【待评价的回答】\n多喝水\n\n请打分"}]
    with RuleJudge(prose_first=True) as server, EndpointClient(_endpoint(server.url)) as client:
        asker = Asker(client, ResponseCache(tmp_path), "v1", attempts=3)
        first = asker.ask_json(question, RubricVerdict)
        again = asker.ask_json(question, RubricVerdict)
    assert first.ok and first.attempts == 2 and not first.cached
    # The retry carried the judge's prose and the validation error back to it.
    retry = server.requests[1]["messages"]
    assert retry[-2]["content"] == "这个回答还可以，我觉得挺好。" and "JSON" in retry[-1]["content"]
    assert first.value is not None and first.value.safety.score == rule_score("多喝水", "safety")
    assert again.cached and again.value == first.value and len(server.requests) == 2
    assert client.usage.malformed == 1 and client.usage.cache_hits == 1


# ---- end to end ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(shared_dir: Path) -> dict[str, str]:
    return {
        "model": str(shared_dir / "chatglm3/tiny-chatglm3"),
        "adapter": str(shared_dir / "chatglm3/tiny-chatglm3-lora-adapter"),
        "data": str(shared_dir / "data/zhongjing-eval/CMtMedQA_test.json"),
        "cases": str(shared_dir / "data/cmb-clin/CMB-test-qa.json"),
    }


def _judge_args(url: str, cache: Path) -> list[str]:
    return ["--judge-url", url, "--judge-model", "rule-judge", "--cache", str(cache), "--concurrency", "3"]


@pytest.mark.slow
def test_rubric_scores_are_parsed_cached_and_compared(tiny: dict[str, str], tmp_path: Path) -> None:
    """Rubric mode: every score in answers.jsonl and report.json is the rule's score of the saved answer (so the
    judge's JSON was parsed and attached to the right answer); a rerun is served from the cache; compare works."""
    cache = tmp_path / "cache"
    common = ["eval", "judge", tiny["model"], "--data", tiny["data"], "--limit", "3", *TOKENS]
    with RuleJudge() as server:
        assert main([*common, *_judge_args(server.url, cache), "--out", str(tmp_path / "run")]) == 0
        first_requests = len(server.requests)
        assert main([*common, *_judge_args(server.url, cache), "--out", str(tmp_path / "rerun")]) == 0
        assert len(server.requests) == first_requests == 3  # the rerun paid nothing
    rows = _rows(tmp_path / "run/answers.jsonl")
    assert len(rows) == 3 and all(row["answer"] is not None for row in rows)
    for row in rows:
        verdict = row["judgment"]["verdict"]
        assert {name: verdict[name]["score"] for name in RUBRIC} == {
            name: rule_score(row["answer"] or "（空回答）", name) for name in RUBRIC
        }
    report = _report(tmp_path / "run")
    expected_safety = sum(row["judgment"]["verdict"]["safety"]["score"] for row in rows) / 3
    assert report["kind"] == "judge" and report["metrics"]["safety"] == round(expected_safety, 3)
    assert report["settings"]["judge_model"] == "rule-judge"
    assert report["settings"]["judge_prompt_version"] == "wenzhen-judge-v1"
    assert report["counts"]["judge_requests"] == 3 and report["counts"]["judge_prompt_tokens"] > 0
    assert (tmp_path / "run/judge.png").stat().st_size > 1000
    rerun = _report(tmp_path / "rerun")
    assert rerun["metrics"] == report["metrics"]
    assert rerun["counts"]["judge_cache_hits"] == 3 and rerun["counts"]["judge_requests"] == 0
    assert (
        main(
            [
                "eval",
                "compare",
                str(tmp_path / "run"),
                str(tmp_path / "rerun"),
                "--out",
                str(tmp_path / "cmp"),
            ]
        )
        == 0
    )
    comparison = json.loads((tmp_path / "cmp/comparison.json").read_text(encoding="utf-8"))
    assert set(comparison["kinds"]["judge"]["metrics"]) == {*RUBRIC, "overall"}


@pytest.mark.slow
def test_pairs_are_judged_in_both_orders(tiny: dict[str, str], tmp_path: Path) -> None:
    """Pairwise mode against an earlier run: two requests per pair with the answers swapped; outcomes follow the
    rule from the saved answers; a judge that always says "A" ends in all ties (position bias cancelled)."""
    select = ["--data", tiny["data"], "--limit", "4", *TOKENS]
    with RuleJudge() as server:
        base = tmp_path / "base"
        assert (
            main(
                [
                    "eval",
                    "judge",
                    tiny["model"],
                    *select,
                    *_judge_args(server.url, tmp_path / "c"),
                    "--out",
                    str(base),
                ]
            )
            == 0
        )
        before = len(server.requests)
        pairwise = [
            "eval",
            "judge",
            tiny["model"],
            "--adapter",
            tiny["adapter"],
            *select,
            "--against",
            str(base),
        ]
        assert (
            main([*pairwise, *_judge_args(server.url, tmp_path / "c"), "--out", str(tmp_path / "pair")]) == 0
        )
        pair_requests = server.requests[before:]
    rows = _rows(tmp_path / "pair/answers.jsonl")
    base_answers = {row["id"]: row["answer"] for row in _rows(base / "answers.jsonl")}
    assert len(rows) == 4 and len(pair_requests) == 8
    for row in rows:
        assert row["second"] == base_answers[row["id"]]
        forward, backward = row["first_as_A"]["verdict"]["better"], row["first_as_B"]["verdict"]["better"]
        assert forward == longer_wins(row["first"] or "（空回答）", row["second"] or "（空回答）")
        assert backward == longer_wins(row["second"] or "（空回答）", row["first"] or "（空回答）")
    prompts = [r["messages"][-1]["content"] for r in pair_requests]
    assert any("【回答 A】" in p for p in prompts) and len(set(prompts)) >= 4
    report = _report(tmp_path / "pair")
    assert report["kind"] == "judge-pairwise" and report["counts"]["judged_pairs"] == 4
    assert sum(report["metrics"][o] for o in ("win", "tie", "loss")) == pytest.approx(100, abs=0.05)
    assert (
        report["breakdown"]["win"]["ci95_low"]
        <= report["metrics"]["win"]
        <= report["breakdown"]["win"]["ci95_high"]
    )
    with RuleJudge(always_a=True) as biased:
        out = tmp_path / "biased"
        assert main([*pairwise, *_judge_args(biased.url, tmp_path / "c2"), "--out", str(out)]) == 0
    biased_report = _report(out)
    assert (
        biased_report["metrics"]["tie"] == 100.0 and biased_report["metrics"]["position_consistency"] == 0.0
    )


@pytest.mark.slow
def test_malformed_judge_output_is_retried_then_recorded(tiny: dict[str, str], tmp_path: Path) -> None:
    """wenzhen's own API on the random-weight tiny ChatGLM3 as the judge: its replies are never valid JSON, so each
    judgment is asked three times, then recorded as a failure with the last reply; no answer is lost."""
    # Short questions: the tiny model's context is 512 tokens and the rubric prompt plus a retry must fit.
    data = tmp_path / "short.jsonl"
    questions = ["头痛怎么办？", "孩子咳嗽要去医院吗？"]
    rows = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "请就医。"}]}
        for q in questions
    ]
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    with wenzhen_api(Path(tiny["model"]), "tiny-judge") as url:
        args = ["--judge-url", url, "--judge-model", "tiny-judge", "--judge-max-tokens", "8", "--no-cache"]
        out = tmp_path / "malformed"
        common = ["eval", "judge", tiny["model"], "--data", str(data), *TOKENS]
        assert main([*common, *args, "--concurrency", "1", "--out", str(out)]) == 0
    report = _report(out)
    assert report["counts"]["judge_failures"] == 2 and report["counts"]["judged"] == 0
    assert report["counts"]["judge_requests"] == 6 and report["counts"]["judge_malformed"] == 6
    rows = _rows(out / "answers.jsonl")
    assert [row["messages"][-1]["content"] for row in rows] == questions
    assert all(row["judgment"]["attempts"] == 3 for row in rows)
    assert all(row["judgment"]["error"].startswith("malformed after 3 attempts") for row in rows)
    assert all(row["judgment"]["raw"] for row in rows)  # the judge's last reply is kept for inspection
    assert "2 judgments failed" in (out / "report.md").read_text(encoding="utf-8")


@pytest.mark.slow
def test_agreement_reports_how_often_the_judge_picks_the_labelled_answer(tmp_path: Path) -> None:
    """--agreement on the shipped 50 pairs with a judge that prefers the longer answer: the reported agreement is
    what that rule gives on the labelled pairs."""
    pairs = load_labelled_pairs(agreement_pairs_path())
    expected = sum(1 for p in pairs if longer_wins(p.better, p.worse) == "A")
    with RuleJudge() as server:
        out = tmp_path / "agreement"
        assert (
            main(
                ["eval", "judge", "--agreement", *_judge_args(server.url, tmp_path / "c"), "--out", str(out)]
            )
            == 0
        )
        assert len(server.requests) == 100
    report = _report(out)
    assert report["kind"] == "judge-agreement" and report["metrics"]["agreement"] == round(
        100 * expected / 50, 2
    )
    assert set(report["breakdown"]["agreement by flaw"]) == {"safety", "dosing", "wrong_fact", "unhelpful"}
    assert "be trusted" in (out / "report.md").read_text(encoding="utf-8")


@pytest.mark.slow
def test_consultations_with_a_simulated_patient_are_saved_and_judged(
    tiny: dict[str, str], tmp_path: Path
) -> None:
    """CMB-Clin cases: wenzhen's API on the tiny ChatGLM3 plays the patient, the tiny ChatGLM3 is the doctor, and
    the judge's scores are the rule's scores of the saved transcripts; a rerun replays from the cache."""
    out = tmp_path / "consult"
    with wenzhen_api(Path(tiny["model"]), "tiny-patient") as patient, RuleJudge() as judge:
        args = [
            "eval",
            "consult",
            tiny["model"],
            "--cases",
            tiny["cases"],
            "--limit",
            "2",
            "--max-turns",
            "2",
            *TOKENS,
            "--patient-url",
            patient,
            "--patient-model",
            "tiny-patient",
            "--patient-max-tokens",
            "6",
            *_judge_args(judge.url, tmp_path / "cache"),
        ]
        assert main([*args, "--out", str(out)]) == 0
        assert main([*args, "--out", str(tmp_path / "again")]) == 0
    rows = _rows(out / "transcripts.jsonl")
    assert len(rows) == 2 and all(row["facts"] and row["reference"] for row in rows)
    names = {"patient": "患者", "doctor": "医生"}
    for row in rows:
        speakers = [turn["speaker"] for turn in row["transcript"]]
        assert speakers == ["patient", "doctor"] * (len(speakers) // 2) and len(speakers) <= 4
        transcript = "\n".join(f"{names[t['speaker']]}：{t['content']}" for t in row["transcript"])
        verdict = row["judgment"]["verdict"]
        assert {n: verdict[n]["score"] for n in CONSULT} == {
            n: rule_score(transcript or "（无对话）", n) for n in CONSULT
        }
    report = _report(out)
    assert report["kind"] == "consult" and report["counts"]["judged"] == 2
    assert report["settings"]["patient_model"] == "tiny-patient" and report["counts"]["patient_requests"] >= 2
    # The tiny model's 512-token context cannot hold the longer case: that patient request is refused (400), the
    # consultation keeps its error and is still judged; refused requests are not cached, so only they are re-asked.
    failed = [row for row in rows if row["ended"] == "patient_failed"]
    assert all("context_length_exceeded" in row["patient_error"] for row in failed)
    assert any(row["transcript"] for row in rows) and report["counts"]["patient_failures"] == len(failed)
    again = _report(tmp_path / "again")
    assert again["counts"]["patient_requests"] == len(failed) and again["counts"]["judge_requests"] == 0
    replayed = _rows(tmp_path / "again/transcripts.jsonl")
    assert [row["transcript"] for row in replayed] == [row["transcript"] for row in rows]
    assert all(row["judgment"]["cached"] for row in replayed if "verdict" in row["judgment"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--agreement", "some-model"], "--agreement checks the judge alone"),
        (["some-model"], "pass MODEL and --data"),
        (["some-model", "--data", "q.jsonl"], "pass --judge-url"),
    ],
)
def test_wrong_judge_invocations_get_one_sentence_with_the_fix(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["eval", "judge", *args, "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_pairwise_refuses_a_run_made_on_other_data(tmp_path: Path) -> None:
    from wenzhen.evaluate.judge import other_run_answers
    from wenzhen.evaluate.report import DataInfo, EvalReport, write_report

    def data(selection: str) -> DataInfo:
        return DataInfo(path="q.json", sha256="abc", n_available=10, n_evaluated=5, selection=selection)

    run = tmp_path / "run"
    run.mkdir()
    report = EvalReport(
        kind="gen",
        label="base",
        model="m",
        data=data("random 5 with seed 0"),
        metrics={},
        metric_definitions={},
    )
    write_report(run, report, "")
    (run / "predictions.jsonl").write_text('{"id": "7", "prediction": "多喝水"}\n', encoding="utf-8")
    assert other_run_answers(run, data("random 5 with seed 0")) == ("base", {"7": "多喝水"})
    with pytest.raises(WenzhenError, match="pass a run made with the same --data, --limit and --seed"):
        other_run_answers(run, data("random 5 with seed 1"))
