"""qkv: a from-scratch transformer library you can read top to bottom and use for real work."""

from .version import __version__ as __version__  # re-exported: qkv.__version__

from . import runtime  # noqa: F401  (first: it notes torch's thread count before user code can change it)
from .config import ModelConfig, TrainConfig
from .presets import PRESETS
from .errors import CheckpointError, ConfigError, DataError, InputError, MissingExtraError, QkvError
from .models import GPT, ModelOutput
from .tokenizers import Tokenizer
from .checkpoint import save
from .loading import load
from .runtime.inference import for_inference
from .generate import GenerationConfig, generate, stream
from .conversation import ChatSession, chat, chat_stream

__all__ = ["GPT", "Tokenizer", "load", "save", "for_inference", "generate", "stream", "chat", "chat_stream",
           "ChatSession", "GenerationConfig", "ModelConfig", "ModelOutput", "TrainConfig", "PRESETS",
           "QkvError", "ConfigError", "InputError", "DataError", "CheckpointError", "MissingExtraError"]
