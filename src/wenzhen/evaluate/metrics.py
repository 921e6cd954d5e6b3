"""Generation metrics for Chinese answers: one registry, each metric a pure function of (prediction, reference).

Peers report "ROUGE" and "BLEU" under the same names while tokenizing differently, so every metric here names its
tokenization and its source:

- word level (jieba), exactly as ChatGLM3's official `finetune_hf.py` `compute_metrics`: ROUGE-1/2/L F1 from
  `rouge_chinese` on jieba words joined by spaces, x100 and rounded to 4 decimals per sample; BLEU-4 from nltk
  `sentence_bleu` on the same jieba words with smoothing method3. The official code reports BLEU-4 unscaled
  (0..1) next to ROUGE x100; here it is x100 so the columns compare, and labelled so.
- character level: ROUGE-1/2/L F1 on characters as PromptCBLUE scores its generation tasks (transformers'
  `BasicTokenizer`: each CJK character a token, Latin words kept whole, punctuation split, lower-cased), and
  BLEU-4 on characters as LLaMA-Factory does (`list(text)`, method3, x100 rounded to 4 decimals).

Every metric is averaged per sample (macro mean), as all three sources do. An empty prediction (nothing but
whitespace) scores 0 on every metric and is counted, where the official code raises "Hypothesis is empty" and
PromptCBLUE substitutes the text "无 。".
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType

from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from rouge_chinese import Rouge
from transformers import BasicTokenizer

from wenzhen.errors import WenzhenError
from wenzhen.registry import Registry

_SMOOTHING = SmoothingFunction().method3
# PromptCBLUE's tokenizer for its character-level ROUGE (BasicTokenizer defaults: lower-case, strip accents).
_CHARACTER_TOKENIZER = BasicTokenizer(tokenize_chinese_chars=True)


@dataclass(frozen=True)
class Metric:
    """One generation metric: `score(prediction, reference)` gives a value in 0..100 for a non-empty pair."""

    name: str
    label: str
    definition: str
    score: Callable[[str, str], float]


METRICS: Registry[Metric] = Registry("metric")


@functools.cache
def _jieba() -> ModuleType:
    """jieba, imported on first use, so the character-level metrics also run where it is not installed (a GPU host
    given only some wheels)."""
    try:
        import jieba
    except ImportError:
        raise WenzhenError(
            "the word-level metrics (rouge-1, rouge-2, rouge-l, bleu-4) need jieba: `pip install jieba`, or choose "
            "character-level ones with --metrics rouge-1-char,rouge-2-char,rouge-l-char,bleu-4-char"
        ) from None
    jieba.setLogLevel(logging.WARNING)  # jieba prints its dictionary loading on every process start otherwise
    return jieba


@functools.lru_cache(maxsize=4096)
def jieba_words(text: str) -> tuple[str, ...]:
    """jieba's default (accurate mode) segmentation of `text`, whitespace pieces included, as the official code."""
    return tuple(_jieba().cut(text))


@functools.lru_cache(maxsize=4096)
def character_tokens(text: str) -> tuple[str, ...]:
    """PromptCBLUE's character tokens: one per CJK character, Latin words whole, punctuation split off."""
    return tuple(_CHARACTER_TOKENIZER.tokenize(text))


def _rouge_f(prediction_tokens: Sequence[str], reference_tokens: Sequence[str], variant: str) -> float:
    """`rouge_chinese` F1 (0..1) of space-joined tokens; 0 when either side has no token."""
    hypothesis = " ".join(prediction_tokens)
    reference = " ".join(reference_tokens)
    if not hypothesis.split() or not reference.split():
        return 0.0
    scores = Rouge(metrics=[variant]).get_scores(hypothesis, reference)
    return float(scores[0][variant]["f"])


def _bleu4(prediction_tokens: Sequence[str], reference_tokens: Sequence[str]) -> float:
    """nltk sentence BLEU-4 (uniform weights, smoothing method3), 0..1."""
    return float(
        sentence_bleu([list(reference_tokens)], list(prediction_tokens), smoothing_function=_SMOOTHING)
    )


def _word_rouge(variant: str) -> Callable[[str, str], float]:
    def score(prediction: str, reference: str) -> float:
        # The official code rounds each sample's F1 x100 to 4 decimals before averaging; kept for equal numbers.
        return round(_rouge_f(jieba_words(prediction), jieba_words(reference), variant) * 100, 4)

    return score


def _character_rouge(variant: str) -> Callable[[str, str], float]:
    def score(prediction: str, reference: str) -> float:
        return _rouge_f(character_tokens(prediction), character_tokens(reference), variant) * 100

    return score


def _word_bleu4(prediction: str, reference: str) -> float:
    return _bleu4(jieba_words(prediction), jieba_words(reference)) * 100


def _character_bleu4(prediction: str, reference: str) -> float:
    return round(_bleu4(list(prediction), list(reference)) * 100, 4)


_ROUGE_KINDS = {
    "rouge-1": "unigram overlap F1",
    "rouge-2": "bigram overlap F1",
    "rouge-l": "longest-common-subsequence F1 (summary level)",
}
for _variant, _what in _ROUGE_KINDS.items():
    METRICS.add(
        _variant,
        Metric(
            name=_variant,
            label=f"{_variant.upper()} (jieba words, x100)",
            definition=f"{_what} of rouge_chinese on jieba words (distinct n-grams), x100, rounded to 4 decimals "
            "per sample; as ChatGLM3 finetune_hf.py compute_metrics",
            score=_word_rouge(_variant),
        ),
    )
METRICS.add(
    "bleu-4",
    Metric(
        name="bleu-4",
        label="BLEU-4 (jieba words, x100)",
        definition="nltk sentence_bleu on jieba words, weights (0.25,)*4, SmoothingFunction().method3, x100; "
        "ChatGLM3 finetune_hf.py reports the same value unscaled (divide by 100 to compare)",
        score=_word_bleu4,
    ),
)
for _variant, _what in _ROUGE_KINDS.items():
    METRICS.add(
        f"{_variant}-char",
        Metric(
            name=f"{_variant}-char",
            label=f"{_variant.upper()} (characters, x100)",
            definition=f"{_what} of rouge_chinese on characters (transformers BasicTokenizer with "
            "tokenize_chinese_chars: CJK characters, whole Latin words, punctuation split, lower-cased), x100; "
            "as PromptCBLUE calc_nlg_task_scores",
            score=_character_rouge(_variant),
        ),
    )
METRICS.add(
    "bleu-4-char",
    Metric(
        name="bleu-4-char",
        label="BLEU-4 (characters, x100)",
        definition="nltk sentence_bleu on list(text) (every character, spaces included), weights (0.25,)*4, "
        "SmoothingFunction().method3, x100 rounded to 4 decimals per sample; as LLaMA-Factory's ComputeSimilarity",
        score=_character_bleu4,
    ),
)


def resolve_metrics(names: Sequence[str] | None = None) -> list[Metric]:
    """The metrics called `names` (all registered ones when None), refusing unknown names."""
    if names is None:
        return [metric for _, metric in METRICS.items()]
    if not names:
        raise WenzhenError("no metric selected; name at least one of: " + ", ".join(METRICS.names()))
    return [METRICS.get(name) for name in names]


def is_empty(text: str) -> bool:
    """True for a prediction or reference with nothing but whitespace; it scores 0 on every metric."""
    return not text.strip()


def score_pair(prediction: str, reference: str, metrics: Sequence[Metric]) -> dict[str, float]:
    """Each metric's value for one pair; 0 for all when either text is empty."""
    if is_empty(prediction) or is_empty(reference):
        return {metric.name: 0.0 for metric in metrics}
    return {metric.name: metric.score(prediction, reference) for metric in metrics}


def score_pairs(
    predictions: Sequence[str], references: Sequence[str], names: Sequence[str] | None = None
) -> list[dict[str, float]]:
    """Per-sample metric values, in input order."""
    if len(predictions) != len(references):
        raise WenzhenError(
            f"got {len(predictions)} predictions for {len(references)} references; pass one prediction per reference"
        )
    metrics = resolve_metrics(names)
    return [
        score_pair(prediction, reference, metrics)
        for prediction, reference in zip(predictions, references, strict=True)
    ]


def summarize_scores(
    per_sample: Sequence[dict[str, float]], predictions: Sequence[str], references: Sequence[str]
) -> dict[str, float]:
    """Macro means of per-sample values plus the sample and empty-text counts."""
    names = list(per_sample[0]) if per_sample else []
    count = len(per_sample)
    summary: dict[str, float] = {
        name: (sum(row[name] for row in per_sample) / count if count else 0.0) for name in names
    }
    summary["n_samples"] = count
    summary["empty_predictions"] = sum(1 for text in predictions if is_empty(text))
    summary["empty_references"] = sum(1 for text in references if is_empty(text))
    return summary


def compute_generation_metrics(
    predictions: Sequence[str], references: Sequence[str], names: Sequence[str] | None = None
) -> dict[str, float]:
    """Mean of each metric over the pairs (values x100), with `n_samples`, `empty_predictions`, `empty_references`.

    Pure and reusable: the training stage calls it on decoded dev predictions, `wenzhen eval gen` on generated ones.
    """
    per_sample = score_pairs(predictions, references, names)
    return summarize_scores(per_sample, predictions, references)


def metric_definitions(names: Sequence[str] | None = None) -> dict[str, str]:
    """`{name: definition}` for the report's metric section."""
    return {metric.name: metric.definition for metric in resolve_metrics(names)}
