"""The one factory of tiny test models: 2 layers x 32 channels, 4 heads, unless a test says otherwise.

conftest's ``run_configs`` trains from the same shape (``TINY_MODEL``); model tests build
``tiny_config(vocab_size, **overrides)`` or a seeded eval-mode model with ``tiny_model``.
"""

import torch

from qkv.config import ModelConfig

TINY_MODEL = dict(max_len=16, n_layers=2, d_model=32, n_heads=4)


def tiny_config(vocab_size: int, **overrides) -> ModelConfig:
    return ModelConfig(**{"vocab_size": vocab_size, **TINY_MODEL, **overrides})


def tiny_model(cls, vocab_size: int, seed: int = 0, **overrides):
    """A ``cls`` (GPT, EncoderDecoder, ...) of the tiny shape with weights drawn after ``manual_seed(seed)``,
    in eval mode."""
    torch.manual_seed(seed)
    return cls(tiny_config(vocab_size, **overrides)).eval()
