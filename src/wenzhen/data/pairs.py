"""`build_pairs(sft_dir, model, out_dir, config)`: preference pairs where none exist, from an SFT set.

Each split of a prepared SFT folder (train/dev/test.jsonl) becomes the same split of pairs, so a question never
crosses splits. For each conversation the current model answers its last question (in batches, through the one
generation engine), and:

* an `answer` pair: chosen = the doctor's answer, rejected = the model's own answer;
* a `safety` pair when the guard finds a red flag in the question: chosen = the model's answer led by the guard's
  emergency guidance for the categories that fired, rejected = the same answer without it. Only the guidance
  differs, so the pair teaches exactly that.

Conversations that give no pair are written to rejects.jsonl with the reason; report.json accounts for every
conversation read (`read == used + rejected`).
"""

import logging
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import Field

from wenzhen.config import StrictModel
from wenzhen.data.split import SPLITS
from wenzhen.errors import WenzhenError
from wenzhen.generation import ChatEngine, GenerationSettings
from wenzhen.io import atomic_directory, read_jsonl, write_json, write_jsonl
from wenzhen.models import LoadedModel, load_model
from wenzhen.safety import Guard, get_guard

log = logging.getLogger(__name__)


class PairsConfig(StrictModel):
    """Configuration of `wenzhen data pairs`."""

    answers: bool = Field(True, description="answer pairs: the doctor's answer over the model's own")
    safety: bool = Field(
        True, description="safety pairs for questions the guard flags: guidance first over none"
    )
    batch_size: int = Field(8, ge=1, description="questions answered per generation batch")
    max_new_tokens: int = Field(192, ge=1, description="length of the model's answers")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0: greedy (the model's most likely answer)")
    repetition_penalty: float = Field(1.1, ge=0.5, le=2.0)
    limit: int | None = Field(None, ge=1, description="at most this many conversations per split")
    device: str | None = Field(None, description="cpu, cuda, ...; default: the GPU when present")


def split_prompt(row: Any) -> tuple[list[dict[str, Any]], str] | None:
    """(conversation up to the last answer, that answer), or None when the row has no final answer."""
    turns = row.get("conversations") if isinstance(row, dict) else None
    if not isinstance(turns, list) or len(turns) < 2 or turns[-1].get("role") != "assistant":
        return None
    prompt = turns[:-1]
    if prompt[-1].get("role") != "user" or not str(turns[-1].get("content") or "").strip():
        return None
    return prompt, str(turns[-1]["content"])


def pairs_for(
    prompt: list[dict[str, Any]], reference: str, answer: str, guard: Guard, config: PairsConfig
) -> tuple[list[dict[str, Any]], str | None]:
    """The pairs of one conversation, or the reason there are none."""
    answer = answer.strip()
    if not answer:
        return [], "empty_model_answer"
    pairs = []
    if config.answers and answer != reference.strip():
        pairs.append({"conversations": prompt, "chosen": reference, "rejected": answer, "kind": "answer"})
    verdict = guard.check(prompt)
    if config.safety and verdict.fired:
        guidance = guard.emergency_text(verdict.categories)
        if not answer.startswith(guidance):
            pairs.append(
                {
                    "conversations": prompt,
                    "chosen": f"{guidance}\n\n{answer}",
                    "rejected": answer,
                    "kind": "safety",
                    "categories": list(verdict.categories),
                }
            )
    if pairs:
        return pairs, None
    return [], "model_matches_reference" if config.answers else "no_red_flag"


def answer_all(engine: ChatEngine, prompts: list[list[dict[str, Any]]], config: PairsConfig) -> list[str]:
    """The model's answers, batch by batch."""
    settings = GenerationSettings(
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        repetition_penalty=config.repetition_penalty,
        seed=0,
    )
    answers: list[str] = []
    for start in range(0, len(prompts), config.batch_size):
        batch = prompts[start : start + config.batch_size]
        answers += [result.text for result in engine.generate_batch(batch, settings)]
        log.info("answered %d of %d questions", len(answers), len(prompts))
    return answers


def build_split(
    rows: list[Any], engine: ChatEngine, guard: Guard, config: PairsConfig, source: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """(pairs, rejects, counts) of one split."""
    rows = rows[: config.limit] if config.limit else rows
    usable: list[tuple[int, list[dict[str, Any]], str]] = []
    rejects: list[dict[str, Any]] = []
    for number, row in enumerate(rows, start=1):
        parts = split_prompt(row)
        if parts is None:
            rejects.append({"source": source, "line": number, "reason": "no_final_answer", "raw": row})
        else:
            usable.append((number, *parts))
    answers = answer_all(engine, [prompt for _, prompt, _ in usable], config)
    pairs: list[dict[str, Any]] = []
    for (number, prompt, reference), answer in zip(usable, answers, strict=True):
        made, reason = pairs_for(prompt, reference, answer, guard, config)
        if reason is not None:
            rejects.append({"source": source, "line": number, "reason": reason, "model_answer": answer})
        pairs += made
    kinds = Counter(pair["kind"] for pair in pairs)
    used = len(usable) - sum(1 for reject in rejects if "model_answer" in reject)
    if len(rows) != used + len(rejects):
        raise RuntimeError(
            f"conversations lost while building pairs: {len(rows)} read, {used} used, {len(rejects)} rejected"
        )
    counts: dict[str, Any] = {
        "read": len(rows),
        "used": used,
        "rejected": len(rejects),
        "pairs": len(pairs),
        "answer_pairs": kinds["answer"],
        "safety_pairs": kinds["safety"],
        "rejected_by_reason": dict(Counter(reject["reason"] for reject in rejects)),
        "safety_categories": dict(Counter(c for pair in pairs for c in pair.get("categories", []))),
    }
    return pairs, rejects, counts


def build_pairs(
    sft_dir: str | Path,
    model: str | Path | LoadedModel,
    out_dir: str | Path,
    config: PairsConfig,
    *,
    force: bool = False,
) -> dict[str, Any]:
    """Pairs for every split file in `sft_dir`, answered by `model`; writes `out_dir` and returns the report."""
    sft_dir = Path(sft_dir)
    splits = [name for name in SPLITS if (sft_dir / f"{name}.jsonl").is_file()]
    if not splits:
        raise WenzhenError(
            f"{sft_dir} has no train/dev/test.jsonl; pass a folder that `wenzhen data prepare` wrote"
        )
    loaded = model if isinstance(model, LoadedModel) else load_model(model, device=config.device)
    engine = ChatEngine(loaded)
    guard = get_guard()
    report: dict[str, Any] = {
        "model": str(loaded.adapter or loaded.path),
        "config": config.model_dump(),
        "splits": {},
    }
    with atomic_directory(out_dir, force=force) as staging:
        all_rejects: list[dict[str, Any]] = []
        for name in splits:
            pairs, rejects, counts = build_split(
                read_jsonl(sft_dir / f"{name}.jsonl"), engine, guard, config, f"{name}.jsonl"
            )
            write_jsonl(staging / f"{name}.jsonl", pairs)
            all_rejects += rejects
            report["splits"][name] = counts
        write_jsonl(staging / "rejects.jsonl", all_rejects)
        write_json(staging / "report.json", report)
    return report


def format_pairs_report(report: dict[str, Any]) -> str:
    """One line per split."""
    lines = []
    for name, counts in report["splits"].items():
        lines.append(
            f"{name:6} read {counts['read']:>6}  pairs {counts['pairs']:>6} (answer {counts['answer_pairs']}, "
            f"safety {counts['safety_pairs']})  rejected {counts['rejected']} {counts['rejected_by_reason'] or ''}"
        )
    return "\n".join(lines)
