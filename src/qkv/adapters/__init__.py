"""Adapters on a loaded model: LoRA (``lora``) and its files in PEFT's format (``peft_format``)."""

from .lora import LoRAConfig, add_lora, merge_lora
from .peft_format import load_adapter, save_adapter

__all__ = ["LoRAConfig", "add_lora", "merge_lora", "load_adapter", "save_adapter"]
