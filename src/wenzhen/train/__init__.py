"""Fine-tuning: LoRA, P-Tuning v2, full SFT and QLoRA from the official ChatGLM3 YAML config."""

from wenzhen.train.config import TrainConfig, load_train_config
from wenzhen.train.trainer import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "load_train_config", "train"]
