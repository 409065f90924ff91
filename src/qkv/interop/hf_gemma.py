"""Hugging Face Gemma 2 and Gemma 3 (text) checkpoints in: ``Gemma2ForCausalLM`` and ``Gemma3ForCausalLM``
(``Gemma3TextConfig``, model_type ``gemma3_text``) directories become an ordinary qkv ``GPT``.

Gemma is the Llama block with more axes, each a ``ModelConfig`` field; the tensors keep Llama's names
(``hf_llama`` maps and loads them), plus a norm after each sublayer:

    config.json                         Gemma 2     Gemma 3     ModelConfig
    hidden_size ** 0.5 x embeddings     yes         yes         embed_scale=True
    RMSNorm scales by (1 + w)           yes         yes         norm_offset=1.0
    pre- and post-sublayer norms        yes         yes         norm_placement="sandwich"
    hidden_activation gelu_pytorch_tanh GeGLU       GeGLU       mlp="geglu"
    query_pre_attn_scalar (256)         s^-0.5      s^-0.5      attn_scale
    attn_logit_softcapping              50.0        None (1)    attn_softcap
    final_logit_softcapping             30.0        None        logit_softcap
    sliding_window, layer_types         every 2nd   every 6th   window, global_every (layer i global when
                                        global      global        (i + 1) % N == 0)
    q_norm / k_norm                     -           yes         qk_norm=True
    rope_parameters["sliding_attention"] -          10000       pos_base_local (the windowed layers' RoPE base)
    head_dim (256)                                              d_head

    Hugging Face (model.layers.{i}.)                qkv (blocks.{i}.)
    input_layernorm / post_attention_layernorm      norm1 / post_norm1    (around attention)
    pre_feedforward_layernorm / post_feedforward_layernorm   norm2 / post_norm2   (around the FFN)

(1) transformers' Gemma 3 reads the key and never applies it, llama.cpp's converter refuses it: so does qkv.

Refused by name: layer_types that follow no "every N-th layer global" pattern, RoPE scaling (Gemma 3 4B and
up scale their global layers' RoPE linearly), attention biases, bidirectional attention, another activation,
and the multimodal Gemma 3 (model_type ``gemma3``, ``Gemma3ForConditionalGeneration``): load its text model.
"""

from __future__ import annotations

import os

from ..config import ModelConfig
from ..errors import CheckpointError
from ..models.decoder import GPT
from .hf_llama import decoder_config, load_decoder, rope_base

MODEL_TYPES = ("gemma2", "gemma3_text")
DEFAULTS = {   # the config classes' defaults for the keys a saved config.json may leave out
    "gemma2": dict(vocab_size=256000, max_position_embeddings=8192, attn_logit_softcapping=50.0,
                   final_logit_softcapping=30.0, pattern=2),
    "gemma3_text": dict(vocab_size=262208, max_position_embeddings=131072, attn_logit_softcapping=None,
                        final_logit_softcapping=None, pattern=6),
}
# model types refused with more than the list of supported ones (qkv.load adds it to its message)
REFUSED = {"gemma3": "a multimodal Gemma 3 (Gemma3ForConditionalGeneration): save its text model "
                     "(Gemma3ForCausalLM, model_type 'gemma3_text') and load that"}


def global_every(layer_types: list, where: str) -> int | None:
    """N when layer i attends globally exactly where (i + 1) % N == 0 (None: every layer windowed)."""
    full = [i for i, kind in enumerate(layer_types) if kind == "full_attention"]
    if any(kind not in ("full_attention", "sliding_attention") for kind in layer_types):
        raise CheckpointError(f"{where} has layer_types {sorted(set(layer_types))}; qkv reads full_attention "
                              f"and sliding_attention")
    if not full:
        return None
    n = full[0] + 1
    if [kind == "full_attention" for kind in layer_types] != [(i + 1) % n == 0 for i in range(len(layer_types))]:
        raise CheckpointError(f"{where} makes layers {full} global, which is no every-N-th-layer pattern; qkv's "
                              f"global_every needs one")
    return n


def _rope_bases(hf: dict, where: str) -> tuple[float, float | None]:
    """(global base, local base): Gemma 3 keeps one rope_parameters entry per layer type (transformers >= 5), or
    rope_theta and rope_local_base_freq at the top level (older files)."""
    params = hf.get("rope_parameters") or {}
    if "full_attention" in params:
        local = params.get("sliding_attention") or {"rope_theta": 10000.0}
        return rope_base(hf, where, params["full_attention"]), rope_base(hf, where, local)
    local = hf.get("rope_local_base_freq", 10000.0) if hf.get("model_type") == "gemma3_text" else None
    return rope_base(hf, where), local


def config_from_gemma(hf: dict, where: str = "config.json") -> ModelConfig:
    """ModelConfig for a Gemma 2 / Gemma 3 text config.json (missing keys: transformers' defaults)."""
    kind = hf.get("model_type")
    if kind not in MODEL_TYPES:
        raise CheckpointError(f"{where} has model_type={kind!r}; load_gemma reads {list(MODEL_TYPES)}")
    defaults = DEFAULTS[kind]
    activation = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
    if activation != "gelu_pytorch_tanh":
        raise CheckpointError(f"{where} sets hidden_activation={activation!r}; qkv's GeGLU uses gelu_pytorch_tanh")
    for key in ("attention_bias", "use_bidirectional_attention"):
        if hf.get(key):
            raise CheckpointError(f"{where} sets {key}=true, which qkv does not implement for Gemma")
    if kind == "gemma3_text" and hf.get("attn_logit_softcapping") is not None:
        # transformers' Gemma 3 keeps the key but never caps (its attention takes no softcap); llama.cpp refuses it
        raise CheckpointError(f"{where} sets attn_logit_softcapping for Gemma 3, which transformers ignores and "
                              f"llama.cpp refuses; set it to null (Gemma 3 has no attention cap)")
    n_layers = hf.get("num_hidden_layers", 26)
    pattern = defaults["pattern"]
    layer_types = hf.get("layer_types") or ["sliding_attention" if (i + 1) % pattern else "full_attention"
                                            for i in range(n_layers)]
    every = global_every(layer_types, where)
    window = hf.get("sliding_window", 4096) if every != 1 else None
    pos_base, pos_base_local = _rope_bases(hf, where)
    return decoder_config(hf, where, head_dim=hf.get("head_dim", 256), **{
        "vocab_size": hf.get("vocab_size", defaults["vocab_size"]),
        "max_len": hf.get("max_position_embeddings", defaults["max_position_embeddings"]),
        "d_model": hf.get("hidden_size", 2304), "n_heads": hf.get("num_attention_heads", 8),
        "d_ff": hf.get("intermediate_size", 9216), "norm_eps": hf.get("rms_norm_eps", 1e-6), "norm_offset": 1.0,
        "norm_placement": "sandwich", "mlp": "geglu", "pos_base": pos_base, "bias": False,
        "tie_embeddings": bool(hf.get("tie_word_embeddings", True)), "embed_scale": True, "window": window,
        "global_every": every if window is not None and every is not None else None,
        "pos_base_local": pos_base_local if window is not None and pos_base_local != pos_base else None,
        "attn_scale": float(hf.get("query_pre_attn_scalar", 256)) ** -0.5, "qk_norm": kind == "gemma3_text",
        "attn_softcap": hf.get("attn_logit_softcapping", defaults["attn_logit_softcapping"]),
        "logit_softcap": hf.get("final_logit_softcapping", defaults["final_logit_softcapping"])})


def load_gemma(directory: str | os.PathLike) -> GPT:
    """A GPT (eval mode) from a Gemma 2 / Gemma 3 text directory, with ``.tokenizer`` (None without files)."""
    return load_decoder(directory, config_from_gemma)
