"""GGUF files in: llama.cpp's single-file format (weights, hyper-parameters and tokenizer together) becomes
an ordinary qkv ``GPT``, read with the ``gguf`` package (optional extra ``gguf``).

    model = qkv.load("SmolLM2-135M-Instruct.Q4_1.gguf")                    # float32 weights
    model = qkv.load("SmolLM2-135M-Instruct.Q4_1.gguf", quantized=True)    # 4-bit / int8 modules (qkv.quant)

Architectures ``llama`` (Llama, Mistral, SmolLM, ...), ``qwen2``, ``qwen3``, ``phi3``, ``gemma2``, ``gemma3`` as
llama.cpp's converter writes them. Their shared keys and tensors (what each architecture adds is
``gguf_archs``'s table):

    GGUF metadata           ModelConfig            GGUF tensor            qkv
    {arch}.block_count                       n_layers               token_embd             tok (and the head when tied)
    {arch}.context_length                    max_len                blk.{i}.attn_norm      blocks.{i}.norm1
    {arch}.embedding_length                  d_model                blk.{i}.attn_q         blocks.{i}.attn.wq   (1)
    {arch}.feed_forward_length               d_ff                   blk.{i}.attn_k / _v    blocks.{i}.attn.wkv  (1: k)
    {arch}.attention.head_count(_kv)         n_heads, n_kv_heads    blk.{i}.attn_output    blocks.{i}.attn.wo
    {arch}.attention.key_length              d_head                 blk.{i}.ffn_norm       blocks.{i}.norm2
    {arch}.attention.layer_norm_rms_epsilon  norm_eps               blk.{i}.ffn_gate/up/down  blocks.{i}.mlp.*
    {arch}.rope.freq_base                    pos_base               output_norm / output   norm_f / head
    (1) un-permuted: the Q/K permutation below

The Q/K permutation. Hugging Face's RoPE rotates channel i with channel i + D/2 of each head; llama.cpp's
``llama`` rope rotates neighbours (2i, 2i + 1). Its converter therefore reorders the rows of every head
of W_q and W_k from [first halves ; second halves] to interleaved pairs. qkv's RoPE is the Hugging Face
one, so the loader puts the rows back (``unpermute_rows``). Doing nothing would rotate the wrong channel
pairs and give wrong logits; the tests show both (parity with transformers, and the difference without).

The tensors: GGUF lists a weight's shape as (in, out), ggml's order; the data is (out, in) row-major,
which is nn.Linear's layout. Quantized rows are blocks of 32 or 256 weights (``qkv.quant.gguf_blocks``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import ModelConfig
from ..errors import CheckpointError, QkvError
from ..quant import gguf_blocks
from .gguf_archs import ARCHITECTURES, NORM_SHIFTED, SCALING_TENSORS, layer_shapes, layer_sources
from .gguf_reader import Header

TENSOR_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K")


class GGUFFile:
    """The metadata and tensors of one GGUF file, with errors that name the file and the fix."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            import gguf
        except ImportError:
            raise CheckpointError("reading GGUF files needs the gguf package: pip install 'qkv[gguf]' "
                                  "(or pip install gguf)") from None
        self.gguf = gguf
        if not self.path.is_file():
            raise CheckpointError(f"{self.path} does not exist; pass the path of a .gguf file")
        try:
            self.header = Header(self.path, gguf.GGMLQuantizationType, gguf.GGML_QUANT_SIZES)
        except Exception as e:  # ValueError, UnicodeDecodeError, struct errors... for bad bytes
            raise CheckpointError(f"{self.path} is not a readable GGUF file ({type(e).__name__}: {e}); it is "
                                  f"truncated or not GGUF: download or convert it again") from None
        self.tensors = self.header.tensors

    def get(self, key: str, default=None):
        return self.header.fields.get(key, default)

    @property
    def arch(self) -> str:
        return self.get("general.architecture")

    def type_name(self, name: str) -> str:
        return self.tensors[name].tensor_type.name

    def raw(self, name: str) -> np.ndarray:
        """The tensor's data as stored: (out, in) floats, or (out, bytes) blocks for quantized types."""
        return self.tensors[name].data

    def dequantized(self, name: str) -> torch.Tensor:
        """A float32 copy: Q8_0 and Q4_x through ``qkv.quant.gguf_blocks`` (tested equal to the gguf package's
        dequantization, and several times faster), every other type through the gguf package's own."""
        t = self.tensors[name]
        kind = t.tensor_type.name
        if kind == "F32":                               # a view of the (private) map: no copy
            return torch.from_numpy(t.data)
        if kind == "Q8_0":
            q_OI, d_OQ = gguf_blocks.q8_0(t.data)
            return (q_OI.float().view(q_OI.shape[0], -1, 32) * d_OQ[..., None]).view(q_OI.shape)
        if kind in gguf_blocks.FOUR_BIT:
            return gguf_blocks.dequantize_four_bit(*gguf_blocks.four_bit(t.data, kind))
        return torch.from_numpy(self.gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False))


def config_from_gguf(f: GGUFFile) -> ModelConfig:
    arch = f.arch
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"{f.path} holds a GGUF of architecture {arch!r}, which qkv does not read; "
                              f"supported: {list(ARCHITECTURES)}")
    if f.get(f"{arch}.expert_count", 0):
        raise CheckpointError(f"{f.path} is a mixture-of-experts model, which qkv does not implement")
    scaling = f.get(f"{arch}.rope.scaling.type", "none")
    if scaling not in ("none", None) or any(name in f.tensors for name in SCALING_TENSORS):
        raise CheckpointError(f"{f.path} uses RoPE scaling ({scaling}), which qkv does not implement")
    d_model, n_heads = f.get(f"{arch}.embedding_length"), f.get(f"{arch}.attention.head_count")
    head_dim = f.get(f"{arch}.attention.key_length") or (d_model // n_heads if d_model and n_heads else None)
    rotary = f.get(f"{arch}.rope.dimension_count", head_dim)
    if rotary != head_dim:
        raise CheckpointError(f"{f.path} rotates {rotary} of {head_dim} channels per head; qkv's RoPE rotates all")
    if "token_embd.weight" not in f.tensors:
        raise CheckpointError(f"{f.path} has no token_embd.weight; it is not a complete {arch} model file")
    vocab = f.get(f"{arch}.vocab_size") or int(f.tensors["token_embd.weight"].shape[1])
    fields = dict(
        vocab_size=vocab, max_len=f.get(f"{arch}.context_length", 2048), n_layers=f.get(f"{arch}.block_count"),
        d_model=d_model, n_heads=n_heads, n_kv_heads=f.get(f"{arch}.attention.head_count_kv", n_heads),
        d_head=head_dim if head_dim * n_heads != d_model else None, d_ff=f.get(f"{arch}.feed_forward_length"),
        norm="rmsnorm", norm_eps=float(f.get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        norm_placement="pre", mlp="swiglu", pos="rope", pos_base=float(f.get(f"{arch}.rope.freq_base", 10000.0)),
        mask="causal", bias=False, tie_embeddings="output.weight" not in f.tensors, dropout=0.0)
    try:
        return ModelConfig(**{**fields, **ARCHITECTURES[arch](lambda key: f.get(f"{arch}.{key}"))})
    except (QkvError, TypeError) as e:
        raise CheckpointError(f"{f.path} has missing or invalid hyper-parameters ({e}); the file is damaged") \
            from None


def expected_shapes(cfg: ModelConfig, arch: str) -> dict[str, tuple[int, ...]]:
    """Every tensor of a GGUF of ``arch`` for ``cfg``, as (out, in) rows x columns."""
    V, C = cfg.vocab_size, cfg.d_model
    shapes = {"token_embd.weight": (V, C), "output_norm.weight": (C,)}
    layer = layer_shapes(cfg, arch)
    for i in range(cfg.n_layers):
        shapes.update({f"blk.{i}.{name}": shape for name, shape in layer.items()})
    if not cfg.tie_embeddings:
        shapes["output.weight"] = (V, C)
    return shapes


def check_tensors(f: GGUFFile, cfg: ModelConfig) -> None:
    expected = expected_shapes(cfg, f.arch)
    for name, t in f.tensors.items():
        if t.tensor_type.name not in TENSOR_TYPES:
            raise CheckpointError(f"{f.path}: tensor {name} has type {t.tensor_type.name}, which qkv does not "
                                  f"read; supported: {list(TENSOR_TYPES)} (re-quantize the model to one of them)")
        if name not in expected:
            raise CheckpointError(f"{f.path} has a tensor {name!r} that a {f.arch} model of its metadata does not")
        shape = tuple(int(n) for n in reversed(t.shape))             # ggml lists (in, out)
        if shape != expected[name]:
            raise CheckpointError(f"{f.path}: tensor {name} has shape {shape} but the metadata implies "
                                  f"{expected[name]}; the hyper-parameters and weights do not match")
    missing = sorted(set(expected) - set(f.tensors))
    if missing:
        raise CheckpointError(f"{f.path} lacks tensors {missing[:3]}; the file is incomplete")


def unpermute_rows(rows_O: torch.Tensor | np.ndarray, n_heads: int):
    """Undo llama.cpp's q/k row order: per head, interleaved rotary pairs back to [first half ; second half].

    Rows may be floats or raw quantized blocks (the permutation moves whole rows).
    """
    O = rows_O.shape[0]
    per_head = rows_O.reshape(n_heads, O // n_heads // 2, 2, *rows_O.shape[1:])
    return per_head.swapaxes(1, 2).reshape(rows_O.shape)


def open_gguf(path: str | Path) -> tuple[GGUFFile, ModelConfig]:
    """The file and its model's config, checked against the tensors' types and shapes: metadata only, no
    weight read (what `qkv info` needs)."""
    f = GGUFFile(path)
    cfg = config_from_gguf(f)
    check_tensors(f, cfg)
    return f, cfg


def is_gguf(path: str | Path) -> bool:
    """A .gguf name, or a file that starts with GGUF's magic."""
    p = Path(path)
    if p.suffix == ".gguf":
        return True
    if not p.is_file():
        return False
    with open(p, "rb") as fh:
        return fh.read(4) == b"GGUF"


def float_state(f: GGUFFile, cfg: ModelConfig, names=None) -> dict[str, torch.Tensor]:
    """qkv's float32 state dict from the file (``names``: only these qkv keys, e.g. the norms)."""
    def get(sources):
        parts = []
        for name, heads, rows in sources:
            w = f.dequantized(name)
            w = unpermute_rows(w, heads) if heads else w
            if f.arch in NORM_SHIFTED and name.endswith("norm.weight"):
                w = w - 1.0                             # stored as 1 + w (gguf_archs, note 3)
            parts.append(w[rows] if rows is not None else w)
        return parts[0] if len(parts) == 1 else torch.cat(parts)
    sd = {"tok.weight": [("token_embd.weight", None, None)], "norm_f.weight": [("output_norm.weight", None, None)]}
    if not cfg.tie_embeddings:                          # a tied head is tok.weight itself
        sd["head.weight"] = [("output.weight", None, None)]
    for i in range(cfg.n_layers):
        sd.update(layer_sources(cfg, f.arch, i))
    return {k: get(sources) for k, sources in sd.items() if names is None or k in names}
