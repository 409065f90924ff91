"""The GGUF architectures qkv reads, as llama.cpp's ``convert_hf_to_gguf.py`` writes them: for each, the
ModelConfig fields in which it differs from ``llama`` and the tensor names of one layer.

Every architecture shares the ``llama`` metadata keys (``gguf.py``'s table: sizes, heads, eps, RoPE base)
and these tensors: token_embd, output_norm, output (absent when tied), and per block ``blk.{i}.``
attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down. What each adds:

    arch     HF model        metadata ({arch}.)               ModelConfig          tensors (blk.{i}.)
    llama    Llama, Mistral  attention.sliding_window (opt.)  window               attn_q / attn_k rows permuted (1)
    qwen2    Qwen2, 2.5      -                                qkv_bias=True        attn_q/k/v.bias
    qwen3    Qwen3           attention.key_length             qk_norm, d_head      attn_q_norm, attn_k_norm (D,)
    phi3     Phi-3           attention.sliding_window (opt.)  window               attn_qkv = [q ; k ; v] rows,
                                                                                   ffn_up = [gate ; up] rows (2F, C)
    gemma2   Gemma 2         attention.sliding_window         window, global_every=2 (2)
                             attn_logit_softcapping           attn_softcap         post_attention_norm, post_ffw_norm
                             final_logit_softcapping          logit_softcap        (C,): post_norm1, post_norm2;
                             attention.key_length             d_head               ffn_norm is the FFN's pre-norm
                             (always)                         norm_offset=1 (3), sandwich, geglu, embed_scale
    gemma3   Gemma 3 text    as gemma2, no attention cap      + qk_norm            + attn_q_norm, attn_k_norm
                             rope.freq_base_swa (opt.)        pos_base_local (default 10000), global_every=6 (2)

(1) llama.cpp's ``llama`` rope rotates neighbouring channels, so its converter interleaves the rows of
W_q and W_k (``gguf.unpermute_rows`` puts them back). Every other architecture here uses the NEOX rope,
which is Hugging Face's (channel i with i + D/2): their rows are stored as they are.
(2) llama.cpp fixes the pattern (every 2nd / 6th layer global) and the local RoPE base in code, reading
``attention.sliding_window_pattern`` and ``rope.freq_base_swa`` where a file has them; the same for the score
scale: ``attention.scale`` if present, else 1/sqrt(key_length), but 1/sqrt(embedding_length / head_count) for
the 27B models (46 layers for gemma2, 62 for gemma3), whose query_pre_attn_scalar is that. qkv does the same.
(3) The converter stores Gemma's norm weights as 1 + w (llama.cpp's RMSNorm has no offset); the loader
subtracts the 1 back (exactly, in float32) so that the model holds transformers' parameters.

Refused by name: any other architecture (the message lists these), mixture-of-experts files
(``{arch}.expert_count``), RoPE scaling (``rope.scaling.type``, ``rope_freqs``, Phi-3's
``rope_factors_long/short``), a rope over part of a head.
"""

from __future__ import annotations

from typing import Callable

from ..config import ModelConfig
from ..errors import CheckpointError


def _llama(get: Callable) -> dict:
    return dict(window=get("attention.sliding_window"))      # Mistral's, when the converter wrote it


def _phi3(get: Callable) -> dict:
    return dict(window=get("attention.sliding_window"))


def _pattern(value, default: int) -> int:
    """``attention.sliding_window_pattern``: N, or one flag per layer (True: windowed), which must repeat N."""
    if value is None:
        return default
    if isinstance(value, int):
        return value
    flags = [bool(v) for v in value]
    n = flags.index(False) + 1 if False in flags else len(flags) + 1
    if flags != [(i + 1) % n != 0 for i in range(len(flags))]:
        raise CheckpointError(f"attention.sliding_window_pattern {flags} is no every-N-th-layer-global pattern, "
                              f"which qkv's global_every needs")
    return n


def _gemma(pattern: int, layers_27b: int, local_base: float | None):
    """The reader of a Gemma architecture (see the table; ``local_base``: None for Gemma 2)."""
    def read(get: Callable) -> dict:
        window, scale, width = get("attention.sliding_window"), get("attention.scale"), get("attention.key_length")
        if scale is None:
            if get("block_count") == layers_27b or width is None:
                width = get("embedding_length") // get("attention.head_count")
            scale = width ** -0.5
        base, local = get("rope.freq_base") or 10000.0, get("rope.freq_base_swa") or local_base
        return dict(norm_offset=1.0, norm_placement="sandwich", mlp="geglu", embed_scale=True, window=window,
                    global_every=_pattern(get("attention.sliding_window_pattern"), pattern) if window else None,
                    pos_base_local=local if window and local and local != base else None,
                    attn_scale=float(scale), qk_norm=local_base is not None,
                    attn_softcap=get("attn_logit_softcapping"), logit_softcap=get("final_logit_softcapping"))
    return read


# arch -> the ModelConfig fields it sets beyond llama's, from ``get(key)`` = metadata "{arch}.{key}" (or None)
ARCHITECTURES: dict[str, Callable[[Callable], dict]] = {
    "llama": _llama,
    "qwen2": lambda get: dict(qkv_bias=True),
    "qwen3": lambda get: dict(qk_norm=True),
    "phi3": _phi3,
    "gemma2": _gemma(2, 46, None),
    "gemma3": _gemma(6, 62, 10000.0),
}
NORM_SHIFTED = ("gemma2", "gemma3")     # archs whose norm weights the file holds as 1 + w (3)
PERMUTED_QK = ("llama",)                # archs whose attn_q / attn_k rows are interleaved (1)
FUSED = ("phi3",)                       # archs with attn_qkv and a gate+up ffn_up
SCALING_TENSORS = ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")

# A source: (GGUF tensor name, heads whose rows to un-permute or None, the slice of its rows or None)
Source = tuple[str, "int | None", "slice | None"]


def layer_sources(cfg: ModelConfig, arch: str, i: int) -> dict[str, list[Source]]:
    """{qkv state-dict key of block i: the GGUF tensors whose rows, stacked, make it}."""
    b, q = f"blk.{i}.", f"blocks.{i}."
    H, G = (cfg.n_heads, cfg.kv_heads) if arch in PERMUTED_QK else (None, None)
    HD, GD, F = cfg.n_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.ffn_dim
    names = {"norm1": "attn_norm", "norm2": "ffn_norm", "attn.wo": "attn_output", "mlp.down": "ffn_down"}
    if cfg.qk_norm:
        names.update({"attn.q_norm": "attn_q_norm", "attn.k_norm": "attn_k_norm"})
    if cfg.norm_placement == "sandwich":   # the output norm of each sublayer (Gemma 2/3)
        names.update({"post_norm1": "post_attention_norm", "post_norm2": "post_ffw_norm"})
    out = {q + ours + ".weight": [(b + theirs + ".weight", None, None)] for ours, theirs in names.items()}
    if arch in FUSED:
        qkv, up = b + "attn_qkv.weight", b + "ffn_up.weight"
        out.update({q + "attn.wq.weight": [(qkv, None, slice(0, HD))],
                    q + "attn.wkv.weight": [(qkv, None, slice(HD, HD + 2 * GD))],
                    q + "mlp.gate.weight": [(up, None, slice(0, F))],
                    q + "mlp.up.weight": [(up, None, slice(F, 2 * F))]})
    else:
        for kind in ("weight", "bias") if cfg.has_qkv_bias else ("weight",):
            out[q + f"attn.wq.{kind}"] = [(b + f"attn_q.{kind}", H, None)]
            out[q + f"attn.wkv.{kind}"] = [(b + f"attn_k.{kind}", G, None), (b + f"attn_v.{kind}", None, None)]
        out.update({q + "mlp.gate.weight": [(b + "ffn_gate.weight", None, None)],
                    q + "mlp.up.weight": [(b + "ffn_up.weight", None, None)]})
    return out


def layer_shapes(cfg: ModelConfig, arch: str) -> dict[str, tuple[int, ...]]:
    """{GGUF tensor name of a layer, without ``blk.{i}.``: its (out, in) shape}."""
    C, F, D = cfg.d_model, cfg.ffn_dim, cfg.head_dim
    HD, GD = cfg.n_heads * D, cfg.kv_heads * D
    shapes = {"attn_norm.weight": (C,), "ffn_norm.weight": (C,), "attn_output.weight": (C, HD),
              "ffn_down.weight": (C, F)}
    if arch in FUSED:
        shapes.update({"attn_qkv.weight": (HD + 2 * GD, C), "ffn_up.weight": (2 * F, C)})
    else:
        shapes.update({"attn_q.weight": (HD, C), "attn_k.weight": (GD, C), "attn_v.weight": (GD, C),
                       "ffn_gate.weight": (F, C), "ffn_up.weight": (F, C)})
    if cfg.has_qkv_bias:
        shapes.update({"attn_q.bias": (HD,), "attn_k.bias": (GD,), "attn_v.bias": (GD,)})
    if cfg.qk_norm:
        shapes.update({"attn_q_norm.weight": (D,), "attn_k_norm.weight": (D,)})
    if cfg.norm_placement == "sandwich":
        shapes.update({"post_attention_norm.weight": (C,), "post_ffw_norm.weight": (C,)})
    return shapes
