"""Model families built from ``qkv.nn`` layers."""

from .decoder import GPT
from .output import ModelOutput

MODEL_TYPES = {GPT.model_type: GPT}   # config.json "model_type" -> class

__all__ = ["GPT", "ModelOutput", "MODEL_TYPES"]
