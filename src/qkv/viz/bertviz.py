"""Attention in the shapes bertviz takes, so a notebook can open qkv's attention in its views.

bertviz's ``head_view`` / ``model_view`` take, for a self-attention model, ``attention`` (one tensor per
layer, shaped batch 1 x heads x length x length) and ``tokens``; for an encoder-decoder,
``encoder_attention``, ``decoder_attention``, ``cross_attention`` (decoder length x encoder length),
``encoder_tokens`` and ``decoder_tokens``. We write exactly those keyword arguments:

    .pt    ``torch.save`` of the dict; tensors, tuples and strings only, so it loads with weights_only=True:
               from bertviz import head_view
               head_view(**torch.load("attn.pt", weights_only=True))
    .json  the same keys with nested lists, for tools without torch (turn each layer into a tensor first).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from .output import check_suffix, write_atomic
from .read import AttentionMap

SUFFIXES = [".pt", ".json"]


def bertviz_kwargs(maps: list[AttentionMap]) -> dict:
    """The keyword arguments of bertviz's ``head_view`` / ``model_view`` for these maps."""
    def layers(amap: AttentionMap) -> tuple[torch.Tensor, ...]:
        return tuple(p[None].contiguous() for p in amap.layers)          # probs_1HLM per layer
    if len(maps) == 1:
        return {"attention": layers(maps[0]), "tokens": list(maps[0].queries)}
    encoder, decoder, cross = maps                 # the order ``attention_maps`` returns for encoder-decoders
    return {"encoder_attention": layers(encoder), "decoder_attention": layers(decoder),
            "cross_attention": layers(cross), "encoder_tokens": list(encoder.queries),
            "decoder_tokens": list(decoder.queries)}


def write_bertviz(maps: list[AttentionMap], path: str | Path) -> Path:
    path = check_suffix(path, SUFFIXES, "bertviz attention")
    kwargs = bertviz_kwargs(maps)
    if path.suffix.lower() == ".json":
        plain = {k: [t.tolist() for t in v] if k.endswith("attention") else v for k, v in kwargs.items()}
        return write_atomic(path, lambda fh: fh.write(json.dumps(plain, ensure_ascii=False).encode("utf-8")))
    buffer = io.BytesIO()
    torch.save(kwargs, buffer)
    return write_atomic(path, lambda fh: fh.write(buffer.getvalue()))
