"""Preference alignment after SFT (`method: dpo`, `orpo` or `kto`) on TRL's `DPOTrainer`, `ORPOTrainer` and
`KTOTrainer`.

The losses, the reference model and the reward metrics are TRL's; what wenzhen adds is what TRL cannot know:

* the chat format. Pairs are encoded by the model family's one formatter, exactly as SFT samples are
  (`encode_conversation`), so prompt + chosen of a ChatGLM3 pair is token for token the SFT sample of the same
  conversation, and TRL's own tokenization (which needs a Jinja chat template ChatGLM3 does not have) is skipped;
* the parameterisation. LoRA, QLoRA and full weights come from the tuning methods registry. With LoRA no second
  model is loaded: TRL keeps a frozen copy of the adapter's initial weights as adapter `ref` (adapter weights
  only, the base is shared), which for a new adapter is the base itself (LoRA starts at zero) and for an SFT
  adapter MODEL_DIR, which trains on, is the SFT model. A merged SFT model is just a MODEL_DIR. Full tuning loads a
  frozen reference copy;
* held-out preference accuracy: for each dev pair, whether the implicit reward beta * log(pi / pi_ref) of the
  chosen answer beats the rejected one's (ties half, so the untrained policy scores chance, 0.5), measured before
  and after training, per kind of pair (`wenzhen data pairs` marks answer and safety pairs). ORPO has no
  reference: its reward is TRL's, beta x the answer's mean token log-probability, so "before" is the model's own
  preference. TRL logs its own batch-mean reward accuracy and margins during training (`eval_rewards/*`).

Packing does not apply: TRL 1.16 disabled DPO's `padding_free` ("temporarily unavailable after a refactor"), and
ORPO and KTO have none, so pairs train as right-padded batches. What does apply (`plan_preference_performance`):
the micro-batch size and checkpointing chosen for the GPU's memory, batches of similar lengths (transformers'
length-grouped sampler) padded to a multiple of 64 (bounded shapes for the compiled layers), `performance.compile`
and `attention`, and DPO's `precompute_ref_log_probs`. TRL computes DPO's log-probabilities only at answer
positions (its fused LM head) already; ORPO's experimental trainer still materialises the full logits.
"""

import contextlib
import logging
import random
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from wenzhen.errors import WenzhenError
from wenzhen.io import write_json
from wenzhen.models import LoadedModel
from wenzhen.models.family import Message, ModelFamily
from wenzhen.models.loading import is_adapter_dir, resolve_base
from wenzhen.registry import Registry
from wenzhen.runinfo import RunInfo, write_run_info
from wenzhen.train.callbacks import (
    CURVE_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    MetricsLog,
    ProgressBar,
    StepClock,
    peak_memory_bytes,
    plot_curve,
    read_metrics,
    world_size,
)
from wenzhen.train.config import TrainConfig
from wenzhen.train.encoding import IGNORE, encode_conversation
from wenzhen.train.methods import METHODS, count_parameters, enable_gradient_checkpointing
from wenzhen.train.performance import (
    ROW_MULTIPLE,
    PairLengths,
    SpeedPlan,
    choose_attention,
    compile_decoder_layers,
    describe,
    measure_hardware,
    plan_preference_performance,
)

log = logging.getLogger(__name__)

PAIRS_FILE = "preference.json"
REFERENCE_ADAPTER = "ref"  # the adapter name TRL uses as the reference when it is present


# ---------------------------------------------------------------------------------------------- data


@dataclass
class PreferenceExample:
    """One prompt with a chosen and a rejected answer, or (KTO) one answer and its label."""

    prompt: list[Message]
    chosen: str
    rejected: str | None = None
    label: bool | None = None
    kind: str = "pair"  # `wenzhen data pairs` marks answer and safety pairs; accuracy is reported per kind


def read_examples(rows: Sequence[Any], source: str) -> tuple[list[PreferenceExample], list[str]]:
    """The pairs and labelled answers of a prepared split (`wenzhen data prepare` output), with the problems."""
    examples: list[PreferenceExample] = []
    problems: list[str] = []
    for number, row in enumerate(rows, start=1):
        prompt = row.get("conversations") if isinstance(row, dict) else None
        if not isinstance(prompt, list) or not prompt or prompt[-1].get("role") != "user":
            problems.append(f"{source} row {number}: no conversations prompt ending with a user turn")
        elif isinstance(row.get("chosen"), str) and isinstance(row.get("rejected"), str):
            kind = str(row.get("kind") or "pair")
            examples.append(PreferenceExample(prompt, row["chosen"], rejected=row["rejected"], kind=kind))
        elif isinstance(row.get("completion"), str) and isinstance(row.get("label"), bool):
            examples.append(PreferenceExample(prompt, row["completion"], label=row["label"]))
        else:
            problems.append(
                f"{source} row {number}: neither chosen/rejected nor completion/label "
                "(prepare preference data with `wenzhen data prepare`)"
            )
    return examples, problems


def encode_answer(
    family: ModelFamily,
    tokenizer: PreTrainedTokenizerBase,
    prompt: list[Message],
    answer: str,
    max_input_length: int,
    max_output_length: int,
) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) split from the SFT encoding of prompt + answer, so the two tokenize identically.

    The answer keeps the turn's stop token; one cut to `max_output_length + 1` tokens ends with it still (the SFT
    `keep_eos` rule). A prompt longer than `max_input_length` raises: cutting it would change the question.
    """
    sample = encode_conversation(family, tokenizer, [*prompt, {"role": "assistant", "content": answer}])
    prompt_ids = family.encode_prompt(tokenizer, prompt, add_generation_prompt=True)
    if sample.input_ids[: len(prompt_ids)] != prompt_ids:
        raise WenzhenError(
            "the chat template renders the prompt differently once answered; answers cannot be cut"
        )
    if len(prompt_ids) > max_input_length:
        raise WenzhenError(
            f"the prompt has {len(prompt_ids)} tokens, more than max_input_length {max_input_length}"
        )
    completion = sample.input_ids[len(prompt_ids) :]
    budget = max_output_length + 1
    if len(completion) > budget:
        completion = completion[: budget - 1] + completion[-1:]
    return prompt_ids, completion


@dataclass
class PreferenceReport:
    """What happened to a split's pairs."""

    kept: int = 0
    skipped: int = 0
    tokens: int = 0  # prompt + chosen + rejected, each prompt once
    sequence_tokens: int = 0  # what the model reads: prompt + chosen and prompt + rejected
    problems: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)  # per kept example

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (the first problems only)."""
        return {
            "kept": self.kept,
            "skipped": self.skipped,
            "tokens": self.tokens,
            "kinds": dict(Counter(self.kinds)),
            "problems": self.problems[:20],
        }


def encode_examples(
    examples: Sequence[PreferenceExample], loaded: LoadedModel, config: TrainConfig, paired: bool, source: str
) -> tuple[list[dict[str, Any]], PreferenceReport]:
    """TRL's tokenized rows: `prompt_ids` + `chosen_ids` + `rejected_ids` (DPO) or `completion_ids` + `label` (KTO).

    For KTO a pair becomes two labelled answers (chosen: desirable, rejected: undesirable); DPO needs pairs.
    """
    report = PreferenceReport()
    rows: list[dict[str, Any]] = []
    limits = (config.max_input_length, config.max_output_length)
    for number, example in enumerate(examples, start=1):
        try:
            if paired and example.rejected is None:
                raise WenzhenError(
                    "a single labelled answer; DPO needs chosen/rejected pairs (use method kto)"
                )
            prompt_ids, chosen = encode_answer(
                loaded.family, loaded.tokenizer, example.prompt, example.chosen, *limits
            )
            rejected = None
            if example.rejected is not None:
                rejected = encode_answer(
                    loaded.family, loaded.tokenizer, example.prompt, example.rejected, *limits
                )[1]
        except WenzhenError as exc:
            report.skipped += 1
            report.problems.append(f"{source} row {number}: {exc}")
            continue
        if paired:
            longest = len(prompt_ids) + max(len(chosen), len(rejected or []))
            # `length`: the padded width, read by the length-grouped sampler (TRL's collators ignore it)
            rows.append(
                {"prompt_ids": prompt_ids, "chosen_ids": chosen, "rejected_ids": rejected, "length": longest}
            )
        elif rejected is not None:
            rows.append({"prompt_ids": prompt_ids, "completion_ids": chosen, "label": True})
            rows.append({"prompt_ids": prompt_ids, "completion_ids": rejected, "label": False})
        else:
            rows.append({"prompt_ids": prompt_ids, "completion_ids": chosen, "label": bool(example.label)})
        report.kept += 1
        report.kinds.append(example.kind)
        report.tokens += len(prompt_ids) + len(chosen) + len(rejected or [])
        report.sequence_tokens += (
            len(prompt_ids) + len(chosen) + (len(prompt_ids) + len(rejected) if rejected else 0)
        )
    return rows, report


# ---------------------------------------------------------------------------------------------- held-out accuracy


def answer_log_probs(model: torch.nn.Module, prompt_ids: list[int], answers: list[list[int]]) -> list[float]:
    """Summed log-probability of each answer after the prompt, under `model` as it is now."""
    device = next(model.parameters()).device
    sequences = [prompt_ids + answer for answer in answers]
    width = max(len(sequence) for sequence in sequences)
    input_ids = torch.zeros(len(sequences), width, dtype=torch.long, device=device)
    mask = torch.zeros_like(input_ids)
    for row, sequence in enumerate(sequences):
        input_ids[row, : len(sequence)] = torch.tensor(sequence, device=device)
        mask[row, : len(sequence)] = 1
    logits = model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits.float()
    log_probs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    totals = []
    for row, answer in enumerate(answers):
        start = len(prompt_ids) - 1
        totals.append(float(log_probs[row, start : start + len(answer)].sum()))
    return totals


@contextlib.contextmanager
def reference_model(policy: torch.nn.Module, ref_model: torch.nn.Module | None) -> Iterator[torch.nn.Module]:
    """The reference the policy is measured against: a separate model (full tuning), the frozen `ref` adapter (an
    SFT adapter trained on), or the base with the adapter disabled (a new adapter), as TRL's trainers do."""
    if ref_model is not None:
        yield ref_model
        return
    peft_config = getattr(policy, "peft_config", None)
    if peft_config is None:
        raise WenzhenError("full fine-tuning needs a reference model")
    if REFERENCE_ADAPTER in peft_config:
        active = policy.active_adapter
        policy.set_adapter(REFERENCE_ADAPTER)  # type: ignore[operator]
        try:
            yield policy
        finally:
            policy.set_adapter(active)  # type: ignore[operator]
        return
    with policy.disable_adapter():  # type: ignore[operator]
        yield policy


def preference_metrics(
    policy: torch.nn.Module,
    ref_model: torch.nn.Module | None,
    pairs: Sequence[dict[str, Any]],
    kinds: Sequence[str],
    beta: float,
    reference_free: bool = False,
) -> dict[str, Any]:
    """Held-out preference metrics of dev pairs, overall and per kind (answer / safety pairs):

    * `reward_accuracy`: share of pairs whose reward is higher for the chosen answer. The reward is DPO's implicit
      beta * (log pi/pi_ref) (ties count half, so the untrained policy, equal to its reference, scores chance: 0.5),
      or for a reference-free objective (ORPO) TRL's beta x mean token log-probability of the answer;
    * `reward_margin`: mean reward of chosen minus rejected;
    * `logp_accuracy`: share of pairs whose chosen answer the model itself finds more likely.
    """
    if not pairs:
        return {}
    was_training = policy.training
    policy.eval()
    rows: list[tuple[str, float, float]] = []
    try:
        with torch.no_grad():
            for pair, kind in zip(pairs, kinds, strict=True):
                answers = [pair["chosen_ids"], pair["rejected_ids"]]
                chosen, rejected = answer_log_probs(policy, pair["prompt_ids"], answers)
                if reference_free:
                    margin = beta * (chosen / len(answers[0]) - rejected / len(answers[1]))
                else:
                    with reference_model(policy, ref_model) as reference:
                        ref_chosen, ref_rejected = answer_log_probs(reference, pair["prompt_ids"], answers)
                    margin = beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
                rows.append((kind, margin, chosen - rejected))
    finally:
        policy.train(was_training)

    def summary(selected: list[tuple[str, float, float]]) -> dict[str, Any]:
        wins = sum(1.0 if margin > 1e-6 else 0.5 if abs(margin) <= 1e-6 else 0.0 for _, margin, _ in selected)
        return {
            "pairs": len(selected),
            "reward_accuracy": round(wins / len(selected), 4),
            "reward_margin": round(sum(margin for _, margin, _ in selected) / len(selected), 4),
            "logp_accuracy": round(sum(1 for *_, gap in selected if gap > 0) / len(selected), 4),
        }

    result = summary(rows)
    result["by_kind"] = {
        kind: summary([row for row in rows if row[0] == kind]) for kind in sorted(set(kinds))
    }
    return result


# ---------------------------------------------------------------------------------------------- objectives


@dataclass(frozen=True)
class PreferenceObjective:
    """A preference loss: whether it needs pairs and a reference model, and how to build its TRL trainer
    (`build(config, training-argument kwargs, model=..., train_dataset=rows, ...)`)."""

    name: str
    paired: bool
    build: Callable[..., Any]
    uses_reference: bool = True
    full_logits: bool = False  # the trainer materialises (sequences, positions, vocabulary) logits


def as_datasets(
    kwargs: dict[str, Any], convert: Callable[[dict[str, Any]], dict[str, Any]] | None = None
) -> None:
    """The trainer's train and eval rows as `datasets.Dataset`s (each row converted first where given)."""
    from datasets import Dataset

    for key in ("train_dataset", "eval_dataset"):
        if kwargs.get(key) is not None:
            kwargs[key] = Dataset.from_list([convert(row) if convert else row for row in kwargs[key]])


def _dpo_trainer(config: TrainConfig, arguments: dict[str, Any], **kwargs: Any) -> Any:
    from trl import DPOConfig, DPOTrainer

    as_datasets(kwargs)

    class FamilyEncodedDPOTrainer(DPOTrainer):
        """DPOTrainer on rows the model family already encoded (TRL would re-render them with a Jinja template)."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    settings = config.preference
    args = DPOConfig(
        **arguments,
        beta=settings.beta,
        loss_type=[settings.loss_type],
        label_smoothing=settings.label_smoothing,
        max_length=config.max_length,
        precompute_ref_log_probs=settings.precompute_ref_log_probs,
        padding_free=False,  # TRL 1.16: "temporarily unavailable after a refactor" (it warns and pads)
        # A bounded set of shapes for the compiled decoder layers (each new width can recompile).
        pad_to_multiple_of=ROW_MULTIPLE if config.performance.compile is True else None,
    )
    return FamilyEncodedDPOTrainer(args=args, **kwargs)


def orpo_row(row: dict[str, Any]) -> dict[str, Any]:
    """A family-encoded pair in the tokenized form of TRL's ORPO collator (prompt + answer, labels on the answer)."""
    prompt = row["prompt_ids"]
    encoded: dict[str, Any] = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
    for side in ("chosen", "rejected"):
        answer = row[f"{side}_ids"]
        encoded[f"{side}_input_ids"] = prompt + answer
        encoded[f"{side}_attention_mask"] = [1] * (len(prompt) + len(answer))
        encoded[f"{side}_labels"] = [IGNORE] * len(prompt) + answer
    encoded["length"] = row["length"]
    return encoded


def _orpo_trainer(config: TrainConfig, arguments: dict[str, Any], **kwargs: Any) -> Any:
    with warnings.catch_warnings():
        # TRL 1.16 ships ORPO only under trl.experimental, which warns on import that the API may change. wenzhen pins
        # TRL's version (pyproject.toml) and its tests train through this trainer, so the notice is not the user's.
        warnings.filterwarnings("ignore", message="You are importing from 'trl.experimental'")
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    class FamilyEncodedORPOTrainer(ORPOTrainer):
        """ORPOTrainer on rows the model family already encoded (TRL would re-tokenize rendered text)."""

        def tokenize_row(self, feature, model=None):
            return feature

        def _track_num_input_tokens(self, inputs):
            # ORPO's batches have no `input_ids` for transformers to count: the tokens the model reads are prompt +
            # chosen and prompt + rejected (padding left out), as DPO's count.
            if self.args.include_num_input_tokens_seen != "no":
                tokens = inputs["chosen_attention_mask"].sum() + inputs["rejected_attention_mask"].sum()
                self.state.num_input_tokens_seen += self.accelerator.gather(tokens).sum().item()

    kwargs.pop("ref_model")  # ORPO's point: no reference model
    as_datasets(kwargs, orpo_row)
    args = ORPOConfig(**arguments, beta=config.preference.beta, max_length=config.max_length)
    return FamilyEncodedORPOTrainer(args=args, **kwargs)


def _kto_trainer(config: TrainConfig, arguments: dict[str, Any], **kwargs: Any) -> Any:
    from trl import KTOConfig, KTOTrainer

    class FamilyEncodedKTOTrainer(KTOTrainer):
        """KTOTrainer on rows the model family already encoded; adds TRL's mismatched KL completions itself."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if not self.calculate_KL:
                return dataset

            # As TRL: each example's KL completion is its batch neighbour's (rotated by one within the batch).
            def add_kl_completion_ids(examples: dict[str, list[Any]]) -> dict[str, list[Any]]:
                examples["KL_completion_ids"] = [
                    examples["completion_ids"][-1],
                    *examples["completion_ids"][:-1],
                ]
                return examples

            return dataset.map(
                add_kl_completion_ids, batched=True, batch_size=args.per_device_train_batch_size
            )

    settings = config.preference
    # The KL completions are fixed per batch position, so TRL needs the data in order: shuffled once here instead.
    random.Random(config.training_args.seed).shuffle(kwargs["train_dataset"])
    as_datasets(kwargs)
    args = KTOConfig(
        **{**arguments, "train_sampling_strategy": "sequential"},
        beta=settings.beta,
        desirable_weight=settings.desirable_weight,
        undesirable_weight=settings.undesirable_weight,
        max_length=config.max_length,
        precompute_ref_log_probs=settings.precompute_ref_log_probs,
    )
    return FamilyEncodedKTOTrainer(args=args, **kwargs)


OBJECTIVES: Registry[PreferenceObjective] = Registry("preference objective")
OBJECTIVES.add("dpo", PreferenceObjective("dpo", paired=True, build=_dpo_trainer))
OBJECTIVES.add(
    "orpo",
    PreferenceObjective("orpo", paired=True, build=_orpo_trainer, uses_reference=False, full_logits=True),
)
OBJECTIVES.add("kto", PreferenceObjective("kto", paired=False, build=_kto_trainer))


# ---------------------------------------------------------------------------------------------- the run


def tuning_method(config: TrainConfig, model_dir: Path) -> str:
    """lora, qlora or full: the configured one; else LoRA when MODEL_DIR is an adapter or peft_config is set."""
    if config.preference.tuning is None and is_adapter_dir(model_dir):
        return "lora"
    return config.method_name


def load_base(model_dir: Path, config: TrainConfig, device: torch.device) -> LoadedModel:
    """The base model the tuning method trains on (an adapter MODEL_DIR's base)."""
    method = METHODS.get(tuning_method(config, model_dir))
    method.check_available(device)
    base_dir = resolve_base(model_dir, None) if is_adapter_dir(model_dir) else model_dir
    loaded = method.load(base_dir, device, config)
    loaded.model.config.use_cache = False
    return loaded


def prepare_policy(
    loaded: LoadedModel, model_dir: Path, config: TrainConfig, device: torch.device, uses_reference: bool
) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """(the policy with the tuning method's trainable weights, a separate reference or None).

    An SFT adapter MODEL_DIR goes on training (as adapter `default`; TRL freezes a copy as `ref`, the reference),
    so the policy starts where SFT ended and is held near it, not near the base. LoRA needs no second model (the
    reference is the adapter switched off, or the `ref` adapter); full tuning loads a frozen copy where the
    objective has a reference (not ORPO).
    """
    from peft import PeftModel
    from transformers import set_seed

    method = METHODS.get(tuning_method(config, model_dir))
    adapter = model_dir if is_adapter_dir(model_dir) else None
    if config.training_args.gradient_checkpointing:
        enable_gradient_checkpointing(loaded.model)
    set_seed(config.training_args.seed)
    reference = None
    if adapter is None:
        policy = method.prepare(loaded.model, config, loaded.family)
        if not method.trains_adapter and uses_reference:
            reference = method.load(loaded.path, device, config).model.eval().requires_grad_(False)
    elif not method.trains_adapter:
        raise WenzhenError(
            "MODEL_DIR is an adapter; preference.tuning full needs a merged model (`wenzhen merge`)"
        )
    else:
        # TRL's trainers copy a trained-on adapter into a frozen `ref` adapter: the reference (adapter weights only).
        policy = PeftModel.from_pretrained(loaded.model, str(adapter), is_trainable=True)
    policy.train()
    return policy, reference


def plan_speed(
    config: TrainConfig,
    loaded: LoadedModel,
    rows: list[dict[str, Any]],
    device: torch.device,
    objective: PreferenceObjective,
) -> tuple[TrainConfig, SpeedPlan]:
    """The run's speed settings for this GPU and these pairs (`plan_preference_performance`)."""
    hardware = None
    if device.type == "cuda":
        full = config.method_name == "full"
        hardware = measure_hardware(loaded.model, device, full, config.performance.memory_gib)
    lengths = [
        PairLengths(len(row["prompt_ids"]) + len(row["chosen_ids"]) + len(row["rejected_ids"]), row["length"])
        for row in rows
        if objective.paired
    ]
    # Full logits: bf16 logits and their gradient, fp32 log-softmax and its gradient, a token each.
    vocabulary = loaded.model.get_output_embeddings().weight.shape[0] if objective.full_logits else 0
    return plan_preference_performance(
        config, hardware, lengths, world_size(), objective.paired, vocabulary * 12
    )


@dataclass
class PreferenceData:
    """The encoded splits: TRL's train and dev rows, and the dev pairs scored before and after."""

    train_rows: list[dict[str, Any]]
    dev_rows: list[dict[str, Any]]
    dev_pairs: list[dict[str, Any]]
    reports: dict[str, PreferenceReport]


def encode_splits(data_dir: Path, config: TrainConfig, loaded: LoadedModel, paired: bool) -> PreferenceData:
    """Read and encode train (required) and dev (optional, at most `preference.max_eval_pairs` examples)."""
    from wenzhen.train.trainer import read_split

    files = config.data_config
    examples: dict[str, list[PreferenceExample]] = {}
    problems: dict[str, list[str]] = {}
    for split, name, required in (("train", files.train_file, True), ("dev", files.val_file, False)):
        rows = read_split(data_dir, name, split, required) or []
        examples[split], problems[split] = read_examples(rows, str(name))
    limit = config.preference.max_eval_pairs
    dev_examples = examples["dev"][:limit] if limit else examples["dev"]
    train_rows, train_report = encode_examples(examples["train"], loaded, config, paired, files.train_file)
    dev_pairs, dev_report = encode_examples(dev_examples, loaded, config, True, str(files.val_file))
    for split, report in (("train", train_report), ("dev", dev_report)):
        report.problems[:0] = problems[split]
        report.skipped += len(problems[split])
    if not train_rows:
        raise WenzhenError(
            f"no usable preference example in {data_dir / files.train_file} ({'; '.join(train_report.problems[:3])})"
        )
    dev_rows = dev_pairs if paired else encode_examples(dev_examples, loaded, config, False, "dev")[0]
    return PreferenceData(train_rows, dev_rows, dev_pairs, {"train": train_report, "dev": dev_report})


def trl_arguments(
    config: TrainConfig, output_dir: Path, device: torch.device, has_dev: bool, config_dir: Path | None
) -> dict[str, Any]:
    """The run's `TrainingArguments` (built as for SFT) as keyword arguments for TRL's config classes."""
    from wenzhen.train.trainer import build_training_arguments

    built = build_training_arguments(config, output_dir, device, has_dev, config_dir).to_dict()
    arguments = {
        key: value for key, value in built.items() if not key.startswith("_") and key != "local_rank"
    }
    arguments["remove_unused_columns"] = False  # TRL's collators read prompt_ids, chosen_ids, ...
    arguments["gradient_checkpointing"] = False  # switched on the model already, by the project's one switch
    return arguments


def train_preference(
    data_dir: Path,
    model_dir: Path,
    config: TrainConfig,
    resume_from: Path | None,
    *,
    config_dir: Path | None = None,
    callbacks: Sequence[TrainerCallback] = (),
) -> dict[str, Any]:
    """Align `model_dir` on the preference data of `data_dir`; write the run folder and return the summary."""
    from wenzhen.train.trainer import save_final, training_device

    objective = OBJECTIVES.get(config.objective)
    device = training_device(config)
    output_dir = Path(config.training_args.output_dir)
    loaded = load_base(model_dir, config, device)
    data = encode_splits(data_dir, config, loaded, objective.paired)
    config, plan = plan_speed(config, loaded, data.train_rows, device, objective)
    attention = choose_attention(loaded.model, device, config.performance.attention, packed=False)
    log.info("%s", describe(plan, attention))
    policy, reference = prepare_policy(loaded, model_dir, config, device, objective.uses_reference)
    if config.performance.compile is True and device.type == "cuda":
        compile_decoder_layers(policy)
    if config.packing:
        log.info("notice: TRL trains preference pairs as padded batches (no padding-free mode); no packing")
    dev_kinds = data.reports["dev"].kinds
    clock = StepClock()
    arguments = trl_arguments(config, output_dir, device, bool(data.dev_rows), config_dir)
    if plan.length_grouped:
        arguments["train_sampling_strategy"] = "group_by_length"  # rows carry `length`
    trainer = objective.build(
        config,
        arguments,
        model=policy,
        ref_model=reference,
        train_dataset=data.train_rows,
        eval_dataset=data.dev_rows or None,
        processing_class=loaded.tokenizer,
        # The bar's steady tokens/s counts sequence tokens (each prompt once per answer); summary.json has the
        # prompt + chosen + rejected rate.
        callbacks=[clock, ProgressBar(clock), MetricsLog(output_dir), *callbacks],
    )
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    # Scored once the trainer has set up the reference (a `ref` adapter copy where the adapter was trained before).
    beta, reference_free = config.preference.beta, not objective.uses_reference
    before = preference_metrics(policy, reference, data.dev_pairs, dev_kinds, beta, reference_free)
    if trainer.args.should_save:
        record_run(output_dir, config, model_dir, loaded, data_dir, objective.name, data.reports, plan)

    started = time.monotonic()
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    seconds = time.monotonic() - started
    after = preference_metrics(policy, reference, data.dev_pairs, dev_kinds, beta, reference_free)
    if REFERENCE_ADAPTER in getattr(policy, "peft_config", {}):
        policy.delete_adapter(REFERENCE_ADAPTER)  # type: ignore[operator]  # the reference is not the result
    final = save_final(trainer, output_dir)
    summary = summarise(
        trainer, config, objective.name, data.reports["train"], seconds, device, final, before, after, clock
    )
    if trainer.args.should_save:
        write_json(output_dir / SUMMARY_FILE, summary)
        plot_curve(read_metrics(output_dir / METRICS_FILE), output_dir / CURVE_FILE)
        log.info("%s", format_preference_summary(summary))
    return summary


def record_run(
    output_dir: Path,
    config: TrainConfig,
    model_dir: Path,
    loaded: LoadedModel,
    data_dir: Path,
    objective: str,
    reports: dict[str, PreferenceReport],
    plan: SpeedPlan,
) -> None:
    """run.json (the resolved config and speed plan; the base model, so the adapter merges and serves like an SFT
    one) and preference.json (what happened to each split's examples)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    write_run_info(
        output_dir,
        RunInfo(
            stage="train",
            base_model=str(loaded.path.resolve()),
            chat_format=loaded.family.name,
            config=config.model_dump(mode="json"),
            extra={
                "method": tuning_method(config, model_dir),
                "objective": objective,
                "start": str(model_dir.resolve()),
                "data_dir": str(data_dir.resolve()),
                "performance_plan": plan.as_dict(),
            },
        ),
    )
    write_json(output_dir / PAIRS_FILE, {split: report.as_dict() for split, report in reports.items()})


def summarise(
    trainer: Any,
    config: TrainConfig,
    objective: str,
    report: PreferenceReport,
    seconds: float,
    device: torch.device,
    final: Path,
    before: dict[str, float],
    after: dict[str, float],
    clock: StepClock,
) -> dict[str, Any]:
    """summary.json: the SFT summary's keys plus the preference metrics.

    Rates: `pair_tokens_per_second` over the whole run (prompt + chosen + rejected, each prompt once);
    `steady_tokens_per_second` the tokens the model read (each prompt once per answer, padding left out) per second
    after the first steps (StepClock); `steady_pair_tokens_per_second` that rate x the data's ratio of the two counts.
    """
    rows = read_metrics(Path(trainer.args.output_dir) / METRICS_FILE)
    steady = clock.tokens_per_second
    losses = [row["loss"] for row in rows if "loss" in row]
    evals = [row for row in rows if "eval_loss" in row]
    trainable, total = count_parameters(trainer.model)
    model: PreTrainedModel = trainer.model
    epochs = trainer.state.epoch or 0.0
    return {
        "method": config.method_name,
        "objective": objective,
        "steps": trainer.state.global_step,
        "train_pairs": report.kept,
        # prompt + chosen + rejected tokens of the pairs trained on (each prompt counted once)
        "pair_tokens": int(report.tokens * epochs),
        "train_seconds": round(seconds, 3),
        "pair_tokens_per_second": round(report.tokens * epochs / seconds, 1) if seconds > 0 else 0.0,
        "steady_tokens_per_second": round(steady, 1) if steady is not None else None,
        "steady_pair_tokens_per_second": round(steady * report.tokens / report.sequence_tokens, 1)
        if steady is not None and report.sequence_tokens
        else None,
        "first_loss": round(losses[0], 6) if losses else None,
        "final_loss": round(losses[-1], 6) if losses else None,
        "final_eval_loss": round(evals[-1]["eval_loss"], 6) if evals else None,
        "eval_reward_accuracy": evals[-1].get("eval_rewards/accuracies") if evals else None,
        "eval_reward_margin": evals[-1].get("eval_rewards/margins") if evals else None,
        "dev_preference_before": before,
        "dev_preference_after": after,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "peak_memory_bytes": peak_memory_bytes(device),
        "peak_memory_kind": "GPU allocated" if device.type == "cuda" else "process RSS",
        "device": str(device),
        "world_size": trainer.args.world_size,
        "attention": str(model.config._attn_implementation),
        "final_dir": str(final),
    }


def format_preference_summary(summary: dict[str, Any]) -> str:
    """The lines printed at the end of a preference run."""
    before, after = summary["dev_preference_before"], summary["dev_preference_after"]
    lines = [
        f"trained {summary['objective']} ({summary['method']}) for {summary['steps']} steps on "
        f"{summary['train_pairs']} examples in {summary['train_seconds']:.1f} s "
        f"({summary['pair_tokens_per_second']:,.0f} prompt+answer tokens/s overall"
        + (
            f", {summary['steady_pair_tokens_per_second']:,.0f} steady)"
            if summary.get("steady_pair_tokens_per_second") is not None
            else ")"
        ),
        f"loss {summary['first_loss']} -> {summary['final_loss']}",
    ]
    for kind, after_kind in (after.get("by_kind") or {}).items():
        before_kind = before["by_kind"][kind]
        lines.append(
            f"dev {kind} pairs ({after_kind['pairs']}): reward accuracy {before_kind['reward_accuracy']:.3f} -> "
            f"{after_kind['reward_accuracy']:.3f}, reward margin {after_kind['reward_margin']:.3f}, "
            f"log-prob accuracy {before_kind['logp_accuracy']:.3f} -> {after_kind['logp_accuracy']:.3f}"
        )
    lines.append(
        f"peak memory {summary['peak_memory_bytes'] / 2**30:.2f} GiB ({summary['peak_memory_kind']})"
    )
    lines.append(f"saved {summary['final_dir']}")
    return "\n".join(lines)
