"""Generation metrics: hand-computed values, the official ChatGLM3 formula, empty texts, errors."""

import math
import sys

import jieba
import numpy as np
import pytest
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from rouge_chinese import Rouge

from wenzhen.errors import WenzhenError
from wenzhen.evaluate.metrics import (
    METRICS,
    character_tokens,
    compute_generation_metrics,
    metric_definitions,
    score_pairs,
)


def official_compute_metrics(predictions: list[str], references: list[str]) -> dict[str, float]:
    """ChatGLM3 finetune_demo/finetune_hf.py `compute_metrics` from its decoded texts onwards (the oracle)."""
    scores: dict[str, list[float]] = {"rouge-1": [], "rouge-2": [], "rouge-l": [], "bleu-4": []}
    for pred_txt, label_txt in zip(predictions, references, strict=True):
        pred_tokens = list(jieba.cut(pred_txt.strip()))
        label_tokens = list(jieba.cut(label_txt.strip()))
        result = Rouge().get_scores(" ".join(pred_tokens), " ".join(label_tokens))
        for key, value in result[0].items():
            scores[key].append(round(value["f"] * 100, 4))
        scores["bleu-4"].append(
            sentence_bleu([label_tokens], pred_tokens, smoothing_function=SmoothingFunction().method3)
        )
    return {key: float(np.mean(values)) for key, values in scores.items()}


def test_word_level_values_computed_by_hand() -> None:
    # jieba: 我/爱/北京/天安门 against 我/爱/北京.
    scores = score_pairs(["我爱北京天安门"], ["我爱北京"], ["rouge-1", "rouge-2", "rouge-l", "bleu-4"])[0]
    # ROUGE-1: P = 3/4, R = 1, F = 2PR/(P+R) = 6/7.
    assert scores["rouge-1"] == pytest.approx(85.7143, abs=1e-4)
    # ROUGE-2: bigrams {我爱, 爱北京, 北京天安门} vs {我爱, 爱北京}: P = 2/3, R = 1, F = 4/5.
    assert scores["rouge-2"] == pytest.approx(80.0, abs=1e-4)
    assert scores["rouge-l"] == pytest.approx(85.7143, abs=1e-4)
    # BLEU-4: p1..p3 = 3/4, 2/3, 1/2; p4 has no match, method3 makes it 1/(2 * 1); no brevity penalty.
    expected = math.exp(0.25 * sum(math.log(p) for p in (3 / 4, 2 / 3, 1 / 2, 1 / 2))) * 100
    assert scores["bleu-4"] == pytest.approx(expected, rel=1e-9)


def test_character_level_values_computed_by_hand() -> None:
    scores = score_pairs(["高血压"], ["高血糖"], ["rouge-1", "rouge-1-char", "rouge-2-char", "bleu-4-char"])[
        0
    ]
    assert scores["rouge-1"] == 0.0  # jieba keeps each as one word: no overlap
    assert scores["rouge-1-char"] == pytest.approx(200 / 3, abs=1e-5)  # 2 of 3 characters
    assert scores["rouge-2-char"] == pytest.approx(50.0, abs=1e-5)  # 高血 of {高血, 血压}
    # LLaMA-Factory's character BLEU is nltk's on list(text), x100 rounded to 4 decimals.
    bleu = sentence_bleu([list("高血糖")], list("高血压"), smoothing_function=SmoothingFunction().method3)
    assert scores["bleu-4-char"] == round(bleu * 100, 4)
    five = score_pairs(["abcde"], ["abcdf"], ["bleu-4-char"])[0]["bleu-4-char"]
    # p1..p4 = 4/5, 3/4, 2/3, 1/2 -> geometric mean 0.2 ** 0.25.
    assert five == pytest.approx(round(0.2**0.25 * 100, 4))


def test_character_tokens_follow_promptcblue() -> None:
    assert character_tokens("Hello, 高血压ABC") == ("hello", ",", "高", "血", "压", "abc")


def test_equals_the_official_formula_with_bleu_scaled() -> None:
    predictions = [
        "您好，根据您的描述，可能是胃炎引起的，建议您到医院做胃镜检查。",
        "多喝水，注意休息，如果发烧超过三天请及时就医。",
        "这种情况可能与长期熬夜有关。",
    ]
    references = [
        "您好，您的症状可能是慢性胃炎，建议尽快到消化内科做胃镜。",
        "建议多休息多喝水，发热持续请到医院就诊。",
        "可能是作息不规律导致的，建议调整作息。",
    ]
    ours = compute_generation_metrics(predictions, references, ["rouge-1", "rouge-2", "rouge-l", "bleu-4"])
    official = official_compute_metrics(predictions, references)
    for key in ("rouge-1", "rouge-2", "rouge-l"):
        assert ours[key] == pytest.approx(official[key], abs=1e-9)
    assert ours["bleu-4"] == pytest.approx(official["bleu-4"] * 100, rel=1e-9)
    assert 0 < official["bleu-4"] < 1  # the official value is unscaled; ours is x100


def test_empty_predictions_score_zero_and_are_counted() -> None:
    with pytest.raises(ValueError, match="Hypothesis is empty"):
        official_compute_metrics([""], ["参考答案"])  # what the official demo does
    result = compute_generation_metrics(["", "  \n", "头痛"], ["参考答案", "参考", "头痛"])
    assert result["n_samples"] == 3
    assert result["empty_predictions"] == 2
    assert result["empty_references"] == 0
    assert result["rouge-1"] == pytest.approx(100 / 3, abs=1e-3)  # only the third pair, 100 each
    assert all(0.0 <= result[name] <= 100.0 for name in METRICS.names())


def test_errors_are_clear() -> None:
    with pytest.raises(WenzhenError, match="2 predictions for 1 references"):
        compute_generation_metrics(["a", "b"], ["a"])
    with pytest.raises(WenzhenError, match="unknown metric 'bleu'"):
        compute_generation_metrics(["a"], ["a"], ["bleu"])


def test_every_metric_is_defined() -> None:
    definitions = metric_definitions()
    assert list(definitions) == METRICS.names()
    assert all(len(text) > 40 for text in definitions.values())


def test_without_jieba_character_metrics_run_and_word_metrics_say_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from wenzhen.evaluate import metrics

    monkeypatch.setitem(sys.modules, "jieba", None)  # as on a host without the jieba package
    metrics._jieba.cache_clear()
    metrics.jieba_words.cache_clear()
    try:
        scores = score_pairs(["我爱北京"], ["我爱北京天安门"], ["rouge-1-char", "bleu-4-char"])
        assert scores[0]["rouge-1-char"] > 0
        with pytest.raises(WenzhenError, match=r"pip install jieba.*--metrics rouge-1-char"):
            score_pairs(["我爱北京"], ["我爱北京天安门"], ["rouge-1"])
    finally:
        metrics._jieba.cache_clear()
        metrics.jieba_words.cache_clear()
