"""Hugging Face checkpoint import and export: read and write the directories ``save_pretrained`` makes.

Each supported ``model_type`` has one module that maps its config.json and tensor names onto a qkv model
and back; none of them needs transformers installed. ``LOADERS`` is the table ``qkv.load`` reads (a new
model type is one module and one row); GGUF files are told apart by their bytes (``is_gguf``).
"""

from ..models import GPT, Encoder, Swin, ViT
from .gguf import is_gguf
from .gguf_model import load_gguf
from .hf_bert import load_bert
from .hf_gemma import MODEL_TYPES as GEMMA_TYPES, REFUSED, load_gemma
from .hf_gpt2 import load_gpt2, save_gpt2
from .hf_llama import MODEL_TYPES as LLAMA_TYPES, load_llama
from .hf_swin import load_swin
from .hf_vit import load_vit

# Hugging Face config.json "model_type" -> (its loader, the class of the model it gives: the family)
LOADERS = {"gpt2": (load_gpt2, GPT), "bert": (load_bert, Encoder), "vit": (load_vit, ViT), "swin": (load_swin, Swin),
           **{t: (load_llama, GPT) for t in LLAMA_TYPES}, **{t: (load_gemma, GPT) for t in GEMMA_TYPES}}

__all__ = ["LOADERS", "REFUSED", "is_gguf", "load_gguf", "load_bert", "load_gemma", "load_gpt2", "load_llama",
           "load_swin", "load_vit", "save_gpt2"]
