"""The guard's learned stage: a character n-gram softmax model over "no emergency" and the categories.

Why by hand rather than scikit-learn: inference is a dictionary lookup and a sum of a few hundred weight rows,
which numpy does in well under a millisecond, and the serving path should not pull in a training library.
Training (`wenzhen.safety.training`) is plain full-batch gradient descent in numpy, deterministic, so a test
can retrain it and compare the weights with the shipped ones.

Features: the character 1-, 2- and 3-grams of the normalised message (those inside a negation's scope marked
"~"), one feature per measurement fact (`normalise.measurement_facts`, e.g. "#血糖危急低") and one per speech
cue (`speech.cue_features`, e.g. "@past", "@about", "@negated"), each counted once. Weights live in
`resources/safety/classifier.npz`: `vocabulary` (n-grams), `weights` (float16, vocabulary x classes),
`bias`, `classes` ("none" first), `threshold` (chosen on a held-out split).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from wenzhen.safety.normalise import measured, measurement_facts
from wenzhen.safety.speech import cue_features, negated_spans

SHIPPED = "resources/safety/classifier.npz"
NONE = "none"
MAX_N = 3
# Texts shorter than this (after hyperbole is stripped) are not scored: too little to go on.
MIN_CHARS = 4
# The guard scores only messages at least this long: on a few words ("再说说发烧") the n-grams say too little,
# and short explicit emergencies ("我想自杀") are the rules' job.
MIN_SCORED_CHARS = 8


_DIGIT = re.compile(r"\d")


def _ngrams(segment: str, prefix: str = "") -> set[str]:
    segment = _DIGIT.sub("0", segment)  # numbers speak through the measurement facts, not their digits
    return {prefix + segment[i : i + n] for n in range(1, MAX_N + 1) for i in range(len(segment) - n + 1)}


def features(text: str) -> list[str]:
    """The distinct character 1..3-grams of normalised `text`, its measurement facts and speech cues.

    Words a negation denies ("没有胸痛") give n-grams marked "~" ("~胸痛"), so that a denied sign does not
    count as the sign: a bag of n-grams cannot otherwise tell "没有胸痛" from "胸痛". Digits are all "0": a
    reading's danger is in its measurement fact ("#血压危急高") beside "#读数血压", not in the digits."""
    grams: set[str] = set()
    start = 0
    for begin, end in negated_spans(text):
        grams |= _ngrams(text[start:begin]) | _ngrams(text[begin:end], "~")
        start = end
    grams |= _ngrams(text[start:])
    grams.update(f"#{fact}" for fact in measurement_facts(text))
    grams.update(f"#读数{kind}" for kind in measured(text))
    grams.update(cue_features(text))
    return sorted(grams)


@dataclass
class NgramClassifier:
    """Softmax over classes from summed n-gram weights."""

    vocabulary: dict[str, int]
    weights: np.ndarray  # (len(vocabulary), len(classes)) float32
    bias: np.ndarray  # (len(classes),)
    classes: list[str]
    threshold: float

    def probabilities(self, text: str) -> np.ndarray:
        """Class probabilities for one normalised message."""
        rows = [self.vocabulary[g] for g in features(text) if g in self.vocabulary]
        logits = self.bias + (self.weights[rows].sum(axis=0) if rows else 0.0)
        exp = np.exp(logits - logits.max())
        return exp / exp.sum()

    def predict(self, text: str) -> tuple[float, str]:
        """(emergency score = 1 - P(none), most likely category) for one normalised message."""
        probs = self.probabilities(text)
        best = 1 + int(np.argmax(probs[1:]))
        return float(1.0 - probs[0]), self.classes[best]

    def save(self, path: str | Path) -> None:
        """Write the weights (float16) and metadata as a compressed npz."""
        vocabulary = sorted(self.vocabulary, key=self.vocabulary.__getitem__)
        np.savez_compressed(
            path,
            vocabulary=np.array(vocabulary),
            weights=self.weights.astype(np.float16),
            bias=self.bias.astype(np.float32),
            classes=np.array(self.classes),
            threshold=np.array(self.threshold, dtype=np.float64),
        )

    @classmethod
    def load(cls, path: str | Path) -> NgramClassifier:
        """Read weights written by `save`."""
        with np.load(path) as data:
            vocabulary = {str(g): i for i, g in enumerate(data["vocabulary"])}
            return cls(
                vocabulary,
                data["weights"].astype(np.float32),
                data["bias"].astype(np.float32),
                [str(c) for c in data["classes"]],
                float(data["threshold"]),
            )


@lru_cache(maxsize=1)
def load_shipped() -> NgramClassifier | None:
    """The classifier shipped with the package, or None when none is shipped."""
    resource = resources.files("wenzhen") / SHIPPED
    if not resource.is_file():
        return None
    with resources.as_file(resource) as path:
        return NgramClassifier.load(path)
