"""The fine-tuning config: the official ChatGLM3 `finetune_demo` YAML schema, typed and validated once.

The official `configs/lora.yaml`, `ptuning_v2.yaml` and `sft.yaml` load unchanged. Their `training_args` section
was written for transformers 4.x (`Seq2SeqTrainingArguments`); keys that transformers has since renamed are
translated here, with a notice, so an old config keeps working and its owner learns the new name.
"""

import logging
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SerializerFunctionWrapHandler, field_validator, model_serializer, model_validator

from wenzhen.config import StrictModel, load_yaml_config
from wenzhen.config_options import with_overrides

log = logging.getLogger(__name__)

# transformers 4.x name -> transformers 5 name. Applied before validation.
RENAMED_TRAINING_ARGS: dict[str, str] = {
    "evaluation_strategy": "eval_strategy",
    "no_cuda": "use_cpu",
    # transformers 5 reads a warmup_steps value below 1 as a ratio of the total steps.
    "warmup_ratio": "warmup_steps",
}

# `peft_type` values of the official configs and the tuning method each selects.
PEFT_TYPE_METHODS = {"LORA": "lora", "PREFIX_TUNING": "ptuning_v2"}


class DataConfig(StrictModel):
    """Where the splits are, relative to DATA_DIR (JSON Lines, one conversation a line, even when named .json).

    The defaults are what `wenzhen data prepare` writes; a `.json` name falls back to the `.jsonl` file and back.
    """

    train_file: str = "train.jsonl"
    val_file: str | None = "dev.jsonl"
    test_file: str | None = None
    num_proc: int | None = Field(
        default=None, ge=1, description="accepted for official configs; encoding runs in the training process"
    )


class GenerationSettings(StrictModel):
    """`training_args.generation_config`: how dev-set answers are generated when `predict_with_generate` is on."""

    max_new_tokens: int = Field(default=512, ge=1)
    do_sample: bool = False
    temperature: float = Field(default=1.0, gt=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    repetition_penalty: float = Field(default=1.0, gt=0)


class TrainingArgs(StrictModel):
    """The supported subset of `transformers.TrainingArguments`, same names and meanings.

    Defaults are transformers' own except where noted; `output_dir` is relative to the current directory, as in
    the official demo.
    """

    output_dir: str = Field(default="./output", description="run folder")
    max_steps: int = Field(default=-1, description="optimizer steps; -1: num_train_epochs decides")
    num_train_epochs: float = Field(default=3.0, gt=0)
    learning_rate: float = Field(default=5e-5, gt=0, description="peak learning rate")
    lr_scheduler_type: str = "linear"
    warmup_steps: float = Field(default=0, ge=0)
    weight_decay: float = Field(default=0.0, ge=0)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = Field(default=1e-8, gt=0)
    optim: str = "adamw_torch"
    max_grad_norm: float = Field(default=1.0, ge=0)
    per_device_train_batch_size: int = Field(
        default=8,
        ge=1,
        description="per-GPU batch: conversations, or rows when performance.row_tokens is set",
    )
    per_device_eval_batch_size: int | None = Field(default=None, ge=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    dataloader_num_workers: int = Field(default=0, ge=0)
    remove_unused_columns: bool = False
    save_strategy: Literal["no", "steps", "epoch"] = "steps"
    save_steps: float = Field(default=500, gt=0, description="checkpoint every N steps (below 1: a fraction)")
    save_total_limit: int | None = Field(default=None, ge=1, description="keep only the newest K checkpoints")
    log_level: Literal["debug", "info", "warning", "error", "critical", "passive"] = "passive"
    logging_strategy: Literal["no", "steps", "epoch"] = "steps"
    logging_steps: float = Field(default=10, gt=0, description="wenzhen default 10 (transformers: 500)")
    logging_first_step: bool = True
    eval_strategy: Literal["no", "steps", "epoch"] = "no"
    eval_steps: float | None = Field(
        default=None, gt=0, description="evaluate on the dev split every N steps"
    )
    max_eval_samples: int | None = Field(
        default=50, ge=1, description="dev conversations evaluated each time (the official demo uses 50)"
    )
    seed: int = Field(default=42, description="random seed")
    data_seed: int | None = None
    bf16: bool | None = Field(default=None, description="None: bf16 where the GPU supports it")
    fp16: bool | None = None
    use_cpu: bool = Field(default=False, description="train on the CPU even when a GPU is present")
    gradient_checkpointing: bool | None = Field(
        default=None, description="recompute activations to save memory; None: chosen with `performance`"
    )
    debug: str = ""
    predict_with_generate: bool = False
    generation_config: GenerationSettings = Field(default_factory=GenerationSettings)
    deepspeed: str | dict[str, Any] | None = Field(
        default=None, description="DeepSpeed config: a JSON file (relative to the YAML file) or inline"
    )
    fsdp: str = Field(default="", description='FSDP mode for multi-GPU runs, e.g. "full_shard auto_wrap"')
    fsdp_config: dict[str, Any] | None = None
    ddp_find_unused_parameters: bool | None = None
    report_to: str | list[str] = "none"

    @field_validator("save_strategy", "logging_strategy", "eval_strategy", mode="before")
    @classmethod
    def yaml_no_is_a_strategy(cls, value: Any) -> Any:
        """YAML 1.1 reads an unquoted `no` as false; like transformers, take false as the strategy `no`."""
        return "no" if value is False else value

    @model_validator(mode="before")
    @classmethod
    def translate_renamed_keys(cls, data: Any) -> Any:
        """Rename transformers 4.x keys to their transformers 5 names, with a notice naming both."""
        if not isinstance(data, dict):
            return data
        translated = dict(data)
        for old, new in RENAMED_TRAINING_ARGS.items():
            if old not in translated:
                continue
            if new in translated:
                raise ValueError(f"both {old!r} and its new name {new!r} are set; keep only {new!r}")
            log.warning("notice: training_args.%s is now called %s in transformers 5; translated", old, new)
            translated[new] = translated.pop(old)
        return translated


class LoraSettings(StrictModel):
    """The settings of the `lora` and `qlora` methods (peft `LoraConfig`), with the defaults they train with."""

    r: int = Field(default=8, ge=1, description="adapter rank")
    lora_alpha: float = Field(default=32, gt=0, description="scale: updates are multiplied by lora_alpha / r")
    lora_dropout: float = Field(default=0.1, ge=0, lt=1)
    target_modules: list[str] | str | None = Field(
        default=None,
        description="None: the model family's attention projections (q/k/v for ChatGLM3; the official "
        "query_key_value is translated); all-linear: every linear layer",
    )
    bias: Literal["none", "all", "lora_only"] = "none"
    modules_to_save: list[str] | None = None


class PrefixSettings(StrictModel):
    """The settings of the `ptuning_v2` method (peft `PrefixTuningConfig`), with the defaults it trains with."""

    num_virtual_tokens: int = Field(
        default=128, ge=1, description="trained key/value prefix length per layer"
    )
    prefix_projection: bool = Field(default=False, description="reparameterise the prefix through an MLP")
    encoder_hidden_size: int | None = Field(
        default=None, ge=1, description="that MLP's width (None: hidden size)"
    )


# The peft_type of the official configs -> the settings its keys belong to.
PEFT_TYPE_SETTINGS: dict[str, type[StrictModel]] = {"LORA": LoraSettings, "PREFIX_TUNING": PrefixSettings}


class PeftConfig(LoraSettings, PrefixSettings):
    """`peft_config`: the official PEFT section; `peft_type` LORA takes the LoRA settings, PREFIX_TUNING the
    prefix settings (keys of the other kind are an error). Defaults are what the methods train with."""

    peft_type: Literal["LORA", "PREFIX_TUNING"]
    task_type: Literal["CAUSAL_LM"] = "CAUSAL_LM"

    def settings(self) -> StrictModel:
        """The typed settings of this section's method (LoraSettings or PrefixSettings)."""
        model = PEFT_TYPE_SETTINGS[self.peft_type]
        return model.model_validate({name: getattr(self, name) for name in model.model_fields})

    @field_validator("peft_type", mode="before")
    @classmethod
    def upper_case_type(cls, value: Any) -> Any:
        """peft accepts `lora` as well as `LORA`; so do we."""
        return value.upper() if isinstance(value, str) else value

    @model_serializer(mode="wrap")
    def own_keys_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Dump only this type's keys, so a resolved config (run.json, a demo config) loads back unchanged."""
        own = set(PEFT_TYPE_SETTINGS[self.peft_type].model_fields) | {"peft_type", "task_type"}
        return {key: value for key, value in handler(self).items() if key in own}

    @model_validator(mode="after")
    def keys_fit_the_type(self) -> "PeftConfig":
        """A LoRA key under PREFIX_TUNING (or the reverse) is a mistake, not something to ignore."""
        own = set(PEFT_TYPE_SETTINGS[self.peft_type].model_fields)
        foreign = sorted(key for key in self.model_fields_set - {"peft_type", "task_type"} if key not in own)
        if foreign:
            raise ValueError(f"{', '.join(foreign)} do not apply to peft_type {self.peft_type}")
        return self


class QuantizationConfig(StrictModel):
    """4-bit loading for QLoRA (bitsandbytes)."""

    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True


class PerformanceConfig(StrictModel):
    """Speed switches. Left at `auto`, they are chosen for the GPU, the model and the data at the start of each run
    from a memory and speed model calibrated on benchmarks/results/train_throughput.json (see
    `wenzhen.train.performance.plan_performance` and docs/training.md); an explicit value always wins."""

    attention: Literal["auto", "sdpa", "flex_attention", "flash_attention_2", "eager"] = Field(
        default="auto",
        description="auto: on GPU flash-attention 2 where installed, else flex attention when packing; SDPA on CPU",
    )
    row_tokens: Annotated[int, Field(ge=16)] | Literal["auto"] | None = Field(
        default="auto",
        description="pack samples into fixed rows of this many tokens (per_device_train_batch_size then counts "
        "rows); auto: on GPU the longest rows that fit the memory, with the batch kept at step_tokens (or the "
        "recipe's conversations' worth of tokens); None and auto on CPU: concatenate per_device_train_batch_size "
        "samples per step",
    )
    step_tokens: int | None = Field(
        default=None,
        ge=16,
        description="tokens per optimizer step over all GPUs when rows are chosen (row_tokens auto); sets "
        "per_device_train_batch_size and gradient_accumulation_steps; None: per_device_train_batch_size x "
        "gradient_accumulation_steps x GPUs conversations of the data's mean length",
    )
    memory_gib: float | None = Field(
        default=None,
        gt=0,
        description="GPU memory the automatic choice may plan for; None: the card's (within any per-process cap)",
    )
    sparse_logits: bool = Field(
        default=True, description="compute the 65k-vocab logits only where the next token is labelled"
    )
    loss_chunk: int | None = Field(
        default=1024,
        ge=1,
        description="labelled positions per fp32 cross-entropy chunk (recomputed in backward, so only the bf16 "
        "logits stay in memory); None: one piece",
    )
    fused_loss: bool | Literal["auto"] = Field(
        default="auto",
        description="lm_head and cross-entropy fused in chunks by liger-kernel (no logits kept; CUDA, with "
        "sparse_logits); auto: on where liger-kernel is installed, training runs on a GPU and the lm_head is "
        "frozen (adapter methods)",
    )
    compile: bool | Literal["auto"] = Field(
        default="auto",
        description="torch.compile each decoder layer in place (CUDA; one compilation reused by every layer); "
        "auto: on for fixed-length rows on a GPU with Triton",
    )


# Preference objectives (`method: dpo | orpo | kto`) and the tuning methods they can run on.
PREFERENCE_METHODS = ("dpo", "orpo", "kto")
PREFERENCE_TUNINGS = ("lora", "qlora", "full")
# The `preference` keys each objective reads (the others are an error when set, not something to ignore).
PREFERENCE_KEYS = {
    "dpo": {"tuning", "beta", "loss_type", "label_smoothing", "precompute_ref_log_probs", "max_eval_pairs"},
    "orpo": {"tuning", "beta", "max_eval_pairs"},
    "kto": {
        "tuning",
        "beta",
        "desirable_weight",
        "undesirable_weight",
        "precompute_ref_log_probs",
        "max_eval_pairs",
    },
}


class PreferenceConfig(StrictModel):
    """`preference`: settings of `method: dpo`, `orpo` or `kto`, with TRL's names and defaults.

    A key the method does not read (see PREFERENCE_KEYS) is an error, not something to ignore."""

    tuning: Literal["lora", "qlora", "full"] | None = Field(
        default=None,
        description="which weights train: None: lora with peft_config (or an adapter MODEL_DIR), full without",
    )
    beta: float = Field(
        default=0.1,
        gt=0,
        description="dpo/kto: how far the policy may move from the reference (higher: less far); orpo: the weight "
        "(lambda) of the odds-ratio term beside the answer's NLL",
    )
    loss_type: Literal[
        "sigmoid", "hinge", "ipo", "robust", "bco_pair", "sppo_hard", "nca_pair", "apo_zero"
    ] = Field(default="sigmoid", description="dpo: the loss (sigmoid: the DPO paper's)")
    label_smoothing: float = Field(default=0.0, ge=0, lt=0.5, description="dpo: label noise (robust/cDPO)")
    desirable_weight: float = Field(default=1.0, gt=0, description="kto: weight of desirable answers")
    undesirable_weight: float = Field(default=1.0, gt=0, description="kto: weight of undesirable answers")
    precompute_ref_log_probs: bool = Field(
        default=False,
        description="dpo/kto: compute the reference log-probabilities once before training (one inference pass "
        "over the pairs instead of a reference forward per step; pays off over several epochs)",
    )
    max_eval_pairs: int | None = Field(
        default=200, ge=1, description="dev pairs scored for held-out preference accuracy before and after"
    )


class TrainConfig(StrictModel):
    """A whole fine-tuning run: the official keys plus wenzhen's own (method, packing, truncation)."""

    data_config: DataConfig = Field(default_factory=DataConfig)
    max_input_length: int = Field(ge=1)
    max_output_length: int = Field(ge=1)
    training_args: TrainingArgs = Field(default_factory=TrainingArgs)
    peft_config: PeftConfig | None = None
    method: Literal["lora", "qlora", "ptuning_v2", "prefix", "full", "dpo", "orpo", "kto"] | None = Field(
        default=None,
        description="tuning method, or dpo / orpo / kto: preference alignment on pairs (settings under "
        "preference); None: from peft_config.peft_type (none: full fine-tuning)",
    )
    preference: PreferenceConfig = Field(default_factory=PreferenceConfig)
    packing: bool = Field(default=True, description="padding-free packed training batches")
    truncation: Literal["keep_eos", "official"] = Field(
        default="keep_eos", description="keep_eos: a cut sample still ends with eos; official: plain cut"
    )
    quantization: QuantizationConfig = Field(default_factory=QuantizationConfig)
    performance: PerformanceConfig = Field(default_factory=PerformanceConfig)

    @property
    def max_length(self) -> int:
        """Token budget of one training sample, as the official demo computes it."""
        return self.max_input_length + self.max_output_length + 1

    @property
    def objective(self) -> str:
        """What training optimises: `sft` (next-token loss on answers), `dpo`, `orpo` or `kto`."""
        return self.method if self.method in PREFERENCE_METHODS else "sft"

    @property
    def method_name(self) -> str:
        """The tuning method (which weights train): explicit `method`, else what `peft_config` implies."""
        if self.method in PREFERENCE_METHODS:
            if self.preference.tuning is not None:
                return self.preference.tuning
            return "lora" if self.peft_config is not None else "full"
        if self.method is not None:
            return "ptuning_v2" if self.method == "prefix" else self.method
        if self.peft_config is None:
            return "full"
        return PEFT_TYPE_METHODS[self.peft_config.peft_type]

    @model_validator(mode="after")
    def method_fits_peft_config(self) -> "TrainConfig":
        """`method` and `peft_config` must agree (QLoRA trains a LoRA adapter)."""
        needs = {"lora": "LORA", "qlora": "LORA", "ptuning_v2": "PREFIX_TUNING", "prefix": "PREFIX_TUNING"}
        wanted = needs.get(self.method or "")
        if wanted and self.peft_config is not None and self.peft_config.peft_type != wanted:
            raise ValueError(f"method {self.method} needs peft_config.peft_type {wanted}")
        if self.method == "full" and self.peft_config is not None:
            raise ValueError("method full trains every weight; remove peft_config")
        if self.objective != "sft":
            if self.peft_config is not None and self.peft_config.peft_type != "LORA":
                raise ValueError(f"method {self.method} trains LoRA or full weights; use peft_type LORA")
            if self.preference.tuning == "full" and self.peft_config is not None:
                raise ValueError("preference.tuning full trains every weight; remove peft_config")
            # Defaults are what a dumped config (run.json) carries back; only real settings are a mistake.
            defaults = PreferenceConfig()
            foreign = sorted(
                key
                for key in self.preference.model_fields_set - PREFERENCE_KEYS[self.objective]
                if getattr(self.preference, key) != getattr(defaults, key)
            )
            if foreign:
                raise ValueError(
                    f"preference.{', preference.'.join(foreign)} do not apply to method {self.method}"
                )
        elif "preference" in self.model_fields_set and self.preference != PreferenceConfig():
            # Defaults are what a dumped config (run.json, a resolved demo config) carries back: only real settings
            # for an SFT run are a mistake.
            raise ValueError(
                "preference settings apply to method dpo, orpo or kto; set method or remove preference"
            )
        return self


def load_train_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read and validate a training YAML; `overrides` (dotted keys) are applied before validation."""
    return with_overrides(load_yaml_config(TrainConfig, path), overrides or {}, str(path))
