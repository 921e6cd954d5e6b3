"""A training run that kills itself with SIGKILL at a chosen moment (run as a subprocess by test_resume.py).

usage: interrupted_run.py DATA_DIR MODEL_DIR OUTPUT_DIR after-save|during-save KILL_AT_STEP [AUTO_RESUME]

`after-save` dies right after checkpoint-KILL_AT_STEP is complete; `during-save` dies while that checkpoint's
optimizer state is being written.
"""

import os
import signal
import sys
from typing import Any

from transformers import TrainerCallback

from wenzhen.train.config import TrainConfig
from wenzhen.train.trainer import WenzhenTrainer, train


def resume_config(output_dir: str) -> TrainConfig:
    """The run both the interrupted and the uninterrupted test runs use: LoRA with dropout, two epochs."""
    return TrainConfig.model_validate(
        {
            "max_input_length": 48,
            "max_output_length": 48,
            "training_args": {
                "output_dir": output_dir,
                "max_steps": 8,
                "learning_rate": 5e-3,
                "per_device_train_batch_size": 4,
                "save_steps": 3,
                "logging_steps": 1,
                "eval_strategy": "no",
            },
            "peft_config": {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "lora_dropout": 0.2},
        }
    )


class KillAfterSave(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def kill_during_save(step: int) -> None:
    original = WenzhenTrainer._save_optimizer_and_scheduler

    def dying(self: WenzhenTrainer, output_dir: str) -> None:
        if self.state.global_step == step:
            os.kill(os.getpid(), signal.SIGKILL)
        original(self, output_dir)

    WenzhenTrainer._save_optimizer_and_scheduler = dying  # type: ignore[method-assign]


def main() -> None:
    data_dir, model_dir, output_dir, mode, kill_at = sys.argv[1:6]
    resume = sys.argv[6] if len(sys.argv) > 6 else None
    callbacks = []
    if mode == "after-save":
        callbacks.append(KillAfterSave(int(kill_at)))
    else:
        kill_during_save(int(kill_at))
    train(data_dir, model_dir, resume_config(output_dir), resume, callbacks=callbacks)


if __name__ == "__main__":
    main()
