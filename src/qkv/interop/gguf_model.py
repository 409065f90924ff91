"""A GGUF file as a qkv ``GPT``: float32 weights (``qkv.weights.model_from_state``, as every loader builds a
model) or the file's own quantized blocks (``gguf_quant``), with its tokenizer and sampling defaults.
The format itself (metadata, tensors, the Q/K permutation) is ``gguf.py``'s.
"""

from __future__ import annotations

from pathlib import Path

from ..generation_defaults import from_gguf
from ..models.decoder import GPT
from ..weights import model_from_state
from .gguf import float_state, open_gguf
from .gguf_quant import quantized_gpt
from .gguf_tokenizer import tokenizer_from_gguf


def load_gguf(path: str | Path, quantized: bool = False) -> GPT:
    """A GPT (eval mode) with ``.tokenizer`` from a GGUF file; ``quantized`` keeps Q8_0 / Q4_x weights in
    int8 / 4-bit modules (``qkv.interop.gguf_quant``) instead of dequantizing every tensor to float32."""
    f, cfg = open_gguf(path)
    if quantized:
        model = quantized_gpt(f, cfg)
    else:
        model = model_from_state(lambda: GPT(cfg), float_state(f, cfg), f"the tensors of {f.path}")
    model.tokenizer = tokenizer_from_gguf(f, f.arch)
    model.generation_defaults = from_gguf(f)
    return model.eval()
