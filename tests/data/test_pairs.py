"""`wenzhen data pairs` on the tiny ChatGLM3: the doctor's answer over the model's, guidance first for red flags."""

from pathlib import Path

import pytest

from wenzhen.cli import main
from wenzhen.io import read_jsonl, write_jsonl
from wenzhen.safety import get_guard

CHEST = "我爸突然胸口剧痛，出了一身冷汗，怎么办"


def conversation(question: str, answer: str) -> dict:
    return {
        "conversations": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    }


@pytest.mark.slow
def test_pairs_from_an_sft_set_with_safety_pairs_for_flagged_questions(
    chatglm3_dir: Path, tmp_path: Path
) -> None:
    sft = tmp_path / "sft"
    sft.mkdir()
    write_jsonl(
        sft / "train.jsonl",
        [
            conversation("最近总是失眠怎么办", "建议规律作息，睡前少看手机。"),
            conversation(CHEST, "这可能是心肌梗死，请立即拨打120。"),
            {"conversations": [{"role": "user", "content": "只有问题"}]},
        ],
    )
    write_jsonl(sft / "dev.jsonl", [conversation("咳嗽有黄痰", "多见于细菌感染，建议查血常规。")])
    out = tmp_path / "pairs"
    model = chatglm3_dir / "tiny-chatglm3"
    assert (
        main(
            [
                "data",
                "pairs",
                str(sft),
                str(model),
                "--out",
                str(out),
                "--max-new-tokens",
                "6",
                "--device",
                "cpu",
            ]
        )
        == 0
    )

    report = read_jsonl(out / "rejects.jsonl")
    assert [row["reason"] for row in report] == ["no_final_answer"]
    train = read_jsonl(out / "train.jsonl")
    answers = [row for row in train if row["kind"] == "answer"]
    safety = [row for row in train if row["kind"] == "safety"]
    assert [row["chosen"] for row in answers] == [
        "建议规律作息，睡前少看手机。",
        "这可能是心肌梗死，请立即拨打120。",
    ]
    assert len(safety) == 1 and safety[0]["categories"] == ["cardiac"]
    guidance = get_guard().emergency_text(["cardiac"])
    model_answer = answers[1]["rejected"]
    assert safety[0]["chosen"] == f"{guidance}\n\n{model_answer}" and safety[0]["rejected"] == model_answer
    assert not model_answer.startswith(guidance)
    assert [row["kind"] for row in read_jsonl(out / "dev.jsonl")] == ["answer"]
