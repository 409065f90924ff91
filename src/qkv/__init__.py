"""qkv: a from-scratch transformer library you can read top to bottom and use for real work."""

from .config import PRESETS, ModelConfig, TrainConfig
from .errors import CheckpointError, ConfigError, DataError, InputError, QkvError
from .models import GPT, ModelOutput

__version__ = "0.1.0"

__all__ = ["GPT", "ModelConfig", "ModelOutput", "TrainConfig", "PRESETS",
           "QkvError", "ConfigError", "InputError", "DataError", "CheckpointError"]
