"""A GGUF file's quantized weights loaded straight into ``qkv.quant`` modules (``load_gguf(quantized=True)``).

Legend: O output rows, I input columns, Q groups of 32 per row.

    file type              module                 how
    Q4_0 / Q4_1 / Q4_K     Int4Linear, g = 32     code for code; the scales rounded to bfloat16
    Q8_0                   Int8Linear             the 32-wide blocks merged into one scale per row (a requantization:
                                                  each weight moves by at most half a step of its row's scale)
    Q5_K / Q6_K            Int8Linear             no 5- or 6-bit kernel: dequantized a slice of rows at a time,
                                                  requantized to int8 per row
    F32 / F16 / BF16       nn.Linear              float32, as the dequantized path

No matrix is ever held whole in float32: 4-bit codes go from the file's bytes to the kernel's packed layout,
and the int8 paths work on 4,096 rows at a time. K and V are one fused Linear in qkv; when their types
differ (Q4_K_M files often store V in Q6_K) both become int8. A tied embedding is the int8 head, whose
rows the embedding reads (``QuantEmbedding``); an untied one is a float32 lookup table.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from ..models.decoder import GPT
from ..quant import Int4Linear, Int8Linear, QuantEmbedding, int4_fits
from ..quant.gguf_blocks import FOUR_BIT, dequantize_four_bit, four_bit, q8_0
from ..weights import meta_device
from .gguf import GGUFFile, float_state, unpermute_rows
from .gguf_archs import Source, layer_sources

ROWS_PER_SLICE = 4096
FLOAT_TYPES = ("F32", "F16", "BF16")


def _raw_rows(f: GGUFFile, name: str, heads: int | None, rows: slice | None = None):
    """The stored rows of a tensor (whole quantized blocks per row), un-permuted, ``rows`` of them."""
    raw = f.raw(name)
    raw = unpermute_rows(raw, heads) if heads else raw
    return raw[rows] if rows is not None else raw


def _float_rows(f: GGUFFile, source: Source, start: int, stop: int) -> torch.Tensor:
    """Rows [start, stop) of a source as float32 (one slice of the file, dequantized by the gguf package)."""
    name = source[0]
    raw = _raw_rows(*(f, *source))[start:stop]
    t = f.tensors[name].tensor_type
    if t.name == "Q8_0":                                     # faster than the generic path, same values
        q_OI, d_OQ = q8_0(raw)
        return (q_OI.float().view(q_OI.shape[0], -1, 32) * d_OQ[..., None]).view(q_OI.shape)
    if t.name in FOUR_BIT:
        return dequantize_four_bit(*four_bit(raw, t.name))
    if t.name == "F32":
        return torch.from_numpy(raw.astype("float32"))
    return torch.from_numpy(f.gguf.quants.dequantize(raw, t).astype("float32", copy=False))


def _int8(f: GGUFFile, parts: list[Source]) -> Int8Linear:
    """Int8Linear over the rows of ``parts`` (stacked), built a slice of rows at a time."""
    weights, scales = [], []
    for source in parts:
        O = _raw_rows(f, *source).shape[0]
        for start in range(0, O, ROWS_PER_SLICE):
            piece = Int8Linear.from_float(_float_rows(f, source, start, min(O, start + ROWS_PER_SLICE)))
            weights.append(piece.weight)
            scales.append(piece.scales)
    module = Int8Linear(weights[0].shape[1], sum(w.shape[0] for w in weights))
    module.weight, module.scales = torch.cat(weights), torch.cat(scales)
    return module


def _linear(f: GGUFFile, parts: list[Source]) -> nn.Module:
    """The module for one qkv Linear whose rows are the GGUF sources ``parts`` (name, heads to un-permute,
    rows)."""
    kinds = {f.type_name(name) for name, _, _ in parts}
    rows = sum(_raw_rows(f, *source).shape[0] for source in parts)
    cols = int(f.tensors[parts[0][0]].shape[0])
    if kinds <= set(FOUR_BIT) and int4_fits(cols, rows, 32):
        pieces = [four_bit(_raw_rows(f, *source), f.type_name(source[0])) for source in parts]
        return Int4Linear.from_codes(*(torch.cat(t) for t in zip(*pieces)))
    if kinds <= set(FLOAT_TYPES):
        linear = nn.Linear(cols, rows, bias=False)
        linear.weight = nn.Parameter(torch.cat([_float_rows(f, s, 0, _raw_rows(f, *s).shape[0]) for s in parts]))
        return linear
    return _int8(f, parts)


def quantized_gpt(f: GGUFFile, cfg: ModelConfig) -> GPT:
    """A GPT whose Linear layers hold the file's quantized weights (see the module docstring)."""
    with meta_device():                                 # no random init: every tensor is replaced below
        model = GPT(cfg)
    floats = {"tok.weight", "norm_f.weight", "head.weight"}      # kept float32: norms and biases
    for i, block in enumerate(model.blocks):
        for key, parts in layer_sources(cfg, f.arch, i).items():
            *path, child, kind = key.split(".")[2:]
            parent = block.get_submodule(".".join(path))
            if kind == "weight" and isinstance(getattr(parent, child), nn.Linear):
                setattr(parent, child, _linear(f, parts))
            else:
                floats.add(key)
    if cfg.tie_embeddings:
        model.head = _int8(f, [("token_embd.weight", None, None)])
        model.tok = QuantEmbedding(model.head)
    else:
        model.head = _linear(f, [("output.weight", None, None)])
        model.tok = nn.Embedding.from_pretrained(f.dequantized("token_embd.weight"), freeze=False)
    for key, t in float_state(f, cfg, names=floats - {"tok.weight", "head.weight"}).items():
        *path, name = key.split(".")
        setattr(model.get_submodule(".".join(path)), name, nn.Parameter(t.float()))
    model.rebuild_buffers()                             # the RoPE tables, which the meta device left empty
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"tensors left unloaded: {left[:5]}")     # a bug here, never a user's file
    return model
