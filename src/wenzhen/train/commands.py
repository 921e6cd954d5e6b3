"""`wenzhen train DATA_DIR MODEL_DIR CONFIG [AUTO_RESUME]`: the official finetune_hf.py arguments, plus options."""

import argparse
import logging
import os
from pathlib import Path
from typing import Any

import yaml

from wenzhen.config_options import ConfigOption, add_config_options, config_overrides
from wenzhen.errors import ConfigError
from wenzhen.train.config import TrainConfig

log = logging.getLogger(__name__)

DESCRIPTION = """\
Fine-tune MODEL_DIR on the conversations in DATA_DIR as CONFIG says, like the official ChatGLM3
`finetune_hf.py DATA_DIR MODEL_DIR CONFIG [AUTO_RESUME]`.

MODEL_DIR: an official ChatGLM3-6B download as is, a directory converted by `wenzhen convert`, or any local
Hugging Face chat model with a chat template.
DATA_DIR: holds the files named in the config's data_config (JSON Lines, one {"conversations": [...]} a line;
`wenzhen data prepare` writes them).
CONFIG: a YAML file; the official configs/lora.yaml, ptuning_v2.yaml and sft.yaml work unchanged, and
configs/*.yaml in this repository are tuned for medical consultation data.

The run folder (training_args.output_dir) receives checkpoint-N/, final/, metrics.jsonl, tensorboard/,
training_curve.png, summary.json and run.json. On a host with several GPUs the command starts one worker per
GPU itself (torch's elastic launcher, DDP); --gpus or CUDA_VISIBLE_DEVICES restrict it, and a run started with
`torchrun ... -m wenzhen train ...` or `accelerate launch -m wenzhen train ...` is left to that launcher.
"""


# The config keys `wenzhen train` offers as options; type, choices and help come from the fields themselves.
TRAIN_OPTIONS = [
    ConfigOption("training_args.output_dir"),
    ConfigOption("method"),
    ConfigOption("training_args.max_steps"),
    ConfigOption("training_args.learning_rate"),
    ConfigOption("training_args.per_device_train_batch_size", "--batch-size"),
    ConfigOption("training_args.save_steps"),
    ConfigOption("training_args.save_total_limit"),
    ConfigOption(
        "training_args.eval_steps", help="evaluate on the dev split every N steps (sets eval_strategy)"
    ),
    ConfigOption("training_args.deepspeed", help="DeepSpeed JSON config (needs deepspeed installed)"),
    ConfigOption("training_args.fsdp"),
    ConfigOption("training_args.gradient_checkpointing"),
    ConfigOption("packing"),
    ConfigOption("truncation"),
    ConfigOption("training_args.seed"),
    ConfigOption("training_args.use_cpu", "--cpu", sets=True),
    ConfigOption("performance.step_tokens"),
    ConfigOption("performance.row_tokens"),
    ConfigOption("performance.compile"),
    ConfigOption("performance.fused_loss"),
]


def parse_override(text: str) -> tuple[str, Any]:
    """`training_args.learning_rate=1e-4` -> ("training_args.learning_rate", 0.0001), values read as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got {text!r}")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise argparse.ArgumentTypeError(f"--set {key}: {value!r} is not a YAML value ({exc})") from None


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    """The options as dotted config keys; `--set` comes last and wins."""
    overrides = config_overrides(args)
    if "training_args.eval_steps" in overrides:
        overrides["training_args.eval_strategy"] = "steps"
    if "training_args.deepspeed" in overrides:
        # A path given on the command line is relative to where the command runs, not to the YAML file.
        overrides["training_args.deepspeed"] = str(Path(overrides["training_args.deepspeed"]).resolve())
    overrides.update(dict(args.set or []))
    return overrides


def run_train(args: argparse.Namespace) -> int:
    """Handler of `wenzhen train`."""
    import torch

    from wenzhen.train.config import load_train_config
    from wenzhen.train.launch import decide_launch, launch_workers
    from wenzhen.train.trainer import train

    if not Path(args.data_dir).is_dir():
        raise ConfigError(f"DATA_DIR {args.data_dir} is not a directory; pass the folder holding train.json")
    config = load_train_config(args.config, overrides_from(args))
    gpus = 0 if config.training_args.use_cpu else torch.cuda.device_count()
    launch = decide_launch(args.gpus, config.training_args.use_cpu, os.environ, gpus)
    if launch.workers:
        log.info(
            "starting %d training workers, one per GPU (%s; --gpus chooses others)",
            launch.workers,
            launch.reason,
        )
        launch_workers(launch.workers, args.command_line, launch.visible_devices)
        return 0
    result = train(
        args.data_dir, args.model_dir, config, args.auto_resume, config_dir=Path(args.config).resolve().parent
    )
    print(result.final_dir)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `wenzhen train`."""
    parser = subparsers.add_parser(
        "train",
        help="fine-tune with LoRA, P-Tuning v2, QLoRA or full SFT from a YAML config",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("data_dir", metavar="DATA_DIR", help="folder with the data_config files")
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="base model directory")
    parser.add_argument("config", metavar="CONFIG", help="training YAML (official or wenzhen configs/*.yaml)")
    parser.add_argument(
        "auto_resume",
        metavar="AUTO_RESUME",
        nargs="?",
        default=None,
        help="`yes`: resume from the newest checkpoint in output_dir; a number N: from checkpoint-N; "
        "a checkpoint folder; `no` or left out: start over",
    )
    group = parser.add_argument_group("overrides (each replaces the config's value)")
    add_config_options(group, TrainConfig, TRAIN_OPTIONS)
    parser.add_argument(
        "--gpus",
        help="GPUs to train on: a count (2: the first two) or indices among the visible ones (0,2); default: all "
        "visible, one worker process each",
    )
    group.add_argument(
        "--set",
        action="append",
        type=parse_override,
        metavar="KEY=VALUE",
        help="any config key by its dotted path, e.g. --set peft_config.r=16 (repeatable)",
    )
    parser.set_defaults(handler=run_train)
