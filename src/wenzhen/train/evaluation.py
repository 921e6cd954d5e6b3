"""Generation metrics on the dev split during training (`training_args.predict_with_generate`).

The official demo generates an answer for each dev conversation at every evaluation and scores it with
ROUGE/BLEU. Here generation is the project's one engine (`ChatEngine`, the family's stop tokens) and scoring is
the evaluation module's `compute_generation_metrics`, which scores an empty prediction 0 instead of crashing.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from wenzhen.errors import WenzhenError
from wenzhen.evaluate.samples import EvalSample, to_sample
from wenzhen.generation import ChatEngine, GenerationSettings
from wenzhen.models import LoadedModel
from wenzhen.train.config import GenerationSettings as ConfigGeneration


@dataclass
class DevGeneration:
    """The dev prompts and how to answer them."""

    samples: list[EvalSample]
    settings: GenerationSettings
    batch_size: int

    @classmethod
    def from_rows(
        cls, rows: list[Any], source: Path, limit: int | None, generation: ConfigGeneration, batch_size: int
    ) -> "DevGeneration":
        """Prompts = each dev conversation up to its last answer; reference = that answer.

        Rows the evaluation module cannot read were already counted as skipped by the encoder (encoding.json).
        """
        samples = []
        for index, row in enumerate(rows):
            try:
                samples.append(to_sample(row, index, source))
            except WenzhenError:
                continue
        settings = GenerationSettings(
            max_new_tokens=generation.max_new_tokens,
            temperature=generation.temperature if generation.do_sample else 0.0,
            top_p=generation.top_p,
            repetition_penalty=generation.repetition_penalty,
            seed=0,
        )
        return cls(samples=samples[:limit] if limit else samples, settings=settings, batch_size=batch_size)

    def score(self, loaded: LoadedModel) -> dict[str, float]:
        """Generate every answer with the model as it is now and return the mean scores."""
        model = loaded.model
        was_training = model.training
        model.eval()
        engine = ChatEngine(loaded, static_cache=False)
        predictions: list[str] = []
        try:
            with torch.no_grad():
                for start in range(0, len(self.samples), self.batch_size):
                    batch = self.samples[start : start + self.batch_size]
                    answers = engine.generate_batch([sample.messages for sample in batch], self.settings)
                    predictions += [answer.text for answer in answers]
        finally:
            model.train(was_training)
        # Imported here: the word segmenter and BLEU/ROUGE packages are needed only when dev answers are scored.
        from wenzhen.evaluate.metrics import compute_generation_metrics

        return compute_generation_metrics(predictions, [sample.reference for sample in self.samples])
