"""Model families built from ``qkv.nn`` layers."""

from .decoder import GPT
from .output import ModelOutput
from .seq2seq import EncoderDecoder

MODEL_TYPES = {GPT.model_type: GPT, EncoderDecoder.model_type: EncoderDecoder}   # config.json "model_type" -> class

__all__ = ["GPT", "EncoderDecoder", "ModelOutput", "MODEL_TYPES"]
