"""Hugging Face checkpoint import and export: read and write the directories ``save_pretrained`` makes.

Each supported ``model_type`` has one module that maps its config.json and tensor names onto a qkv model
and back; none of them needs transformers installed.
"""

from .hf_bert import load_bert
from .hf_gpt2 import load_gpt2, save_gpt2

__all__ = ["load_bert", "load_gpt2", "save_gpt2"]
