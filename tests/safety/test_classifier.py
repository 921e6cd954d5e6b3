"""The learned stage: the shipped weights load and score, and retraining reproduces them."""

from pathlib import Path

import numpy as np
import pytest

from wenzhen import safety
from wenzhen.safety.classifier import NONE, features, load_shipped
from wenzhen.safety.normalise import normalise


def test_shipped_classifier_scores_an_emergency_above_an_ordinary_question() -> None:
    model = load_shipped()
    assert model is not None and model.classes[0] == NONE
    assert set(model.classes[1:]) == set(safety.CATEGORIES.names())
    high, category = model.predict(normalise("我爸突然胸口剧痛，满头大汗，喘不上气"))
    low, _ = model.predict(normalise("感冒了流鼻涕，吃什么药好"))
    assert high >= model.threshold > low and category == "cardiac"


def test_features_include_measurement_facts() -> None:
    assert "#血糖危急低" in features(normalise("血糖1.9"))


def test_features_mark_denied_words_and_mask_digits() -> None:
    grams = features(normalise("没有胸痛，血压130/80"))
    assert "~胸痛" in grams and "胸痛" not in grams
    assert "#读数血压" in grams and not any(ch in g for g in grams for ch in "1389")


def test_a_denied_sign_scores_below_the_same_sign_reported() -> None:
    model = load_shipped()
    assert model is not None
    reported, _ = model.predict(normalise("孩子口吐白沫，全身抽搐"))
    denied, _ = model.predict(normalise("孩子没有口吐白沫，也没有全身抽搐，就是有点咳嗽"))
    assert reported >= model.threshold > denied


def test_the_guard_uses_the_learned_stage_only_when_configured() -> None:
    assert safety.Guard(safety.SafetyConfig(classifier=False)).classifier is None
    assert safety.Guard().classifier is not None


@pytest.mark.slow
def test_retraining_reproduces_the_shipped_weights(shared_dir: Path, tmp_path: Path) -> None:
    from wenzhen.safety.classifier import NgramClassifier
    from wenzhen.safety.training import train

    model, report = train(shared_dir)
    model.save(tmp_path / "retrained.npz")
    retrained, shipped = NgramClassifier.load(tmp_path / "retrained.npz"), load_shipped()
    assert shipped is not None
    assert retrained.vocabulary == shipped.vocabulary and retrained.classes == shipped.classes
    np.testing.assert_allclose(retrained.weights, shipped.weights, atol=2e-3)
    assert abs(retrained.threshold - shipped.threshold) < 2e-3
    assert report["held_out_recall"] > 0.9
