"""Hugging Face Llama-family checkpoints in: ``LlamaForCausalLM``, ``MistralForCausalLM`` and
``Qwen2ForCausalLM`` directories become an ordinary qkv ``GPT``, without transformers installed.

The three are one architecture (Touvron et al., 2023): pre-norm RMSNorm blocks, rotary positions (RoPE
with base ``rope_theta``), grouped-query attention, a SwiGLU feed-forward, no biases. They differ in one
axis each, and each axis is a ``ModelConfig`` field:

    Llama     attention_bias / mlp_bias (usually false)         -> bias
    Mistral   sliding_window: each query sees its last W keys     -> window
    Qwen2     biases on q, k and v only                           -> qkv_bias=True, bias=False

Tensor names (``model.`` prefix on everything but the head):

    Hugging Face                                       qkv
    model.embed_tokens                  (V, C)         tok.weight
    model.layers.{i}.input_layernorm            (C,)   blocks.{i}.norm1
    model.layers.{i}.self_attn.q_proj        (H*D, C)  blocks.{i}.attn.wq
    model.layers.{i}.self_attn.k_proj / v_proj         blocks.{i}.attn.wkv   (rows [k ; v], G*D each)
    model.layers.{i}.self_attn.o_proj        (C, H*D)  blocks.{i}.attn.wo
    model.layers.{i}.post_attention_layernorm          blocks.{i}.norm2
    model.layers.{i}.mlp.gate_proj / up_proj  (F, C)   blocks.{i}.mlp.gate / mlp.up
    model.layers.{i}.mlp.down_proj            (C, F)   blocks.{i}.mlp.down
    model.norm                          (C,)           norm_f
    lm_head                             (V, C)         head.weight   (absent when tie_word_embeddings)

Hugging Face's RoPE pairs channel i with i + D/2 ("rotate_half"), which is qkv's convention, so q and k
load unchanged (GGUF files are another matter: see ``qkv.interop.gguf``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..config import ModelConfig
from ..errors import CheckpointError, QkvError
from ..models.decoder import GPT
from ..tokenizers import Tokenizer
from ..weights import model_from_state
from .hf_files import check_shapes, read_hf_json, read_weights

MODEL_TYPES = ("llama", "mistral", "qwen2")
MAX_POSITIONS = {"llama": 2048, "mistral": 4096 * 32, "qwen2": 32768}   # each config class's default


def _rope_base(hf: dict, where: str) -> float:
    """rope_theta, from ``rope_parameters`` (transformers >= 5) or the top level; only plain RoPE loads."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    kind = params.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if kind != "default":
        raise CheckpointError(f"{where} uses RoPE scaling {kind!r}, which qkv does not implement; only "
                              f"plain RoPE (rope_type 'default') checkpoints load")
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def config_from_hf(hf: dict, where: str = "config.json") -> ModelConfig:
    """ModelConfig for a Llama / Mistral / Qwen2 config.json (missing keys: transformers' defaults)."""
    kind = hf.get("model_type")
    if kind not in MODEL_TYPES:
        raise CheckpointError(f"{where} has model_type={kind!r}; load_llama reads {list(MODEL_TYPES)}")
    if hf.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"{where} sets hidden_act={hf['hidden_act']!r}; qkv's SwiGLU uses silu only")
    bias, qkv_bias, window = False, None, None
    if kind == "llama":
        bias = bool(hf.get("attention_bias", False))
        if bool(hf.get("mlp_bias", False)) != bias:
            raise CheckpointError(f"{where} sets attention_bias={bias} but mlp_bias={hf.get('mlp_bias')}; qkv "
                                  f"biases every Linear or none (or q/k/v alone, as Qwen2)")
    elif kind == "qwen2":
        qkv_bias = True
        if hf.get("use_sliding_window", False):
            raise CheckpointError(f"{where} sets use_sliding_window=true (a window on some layers only), which "
                                  f"qkv does not implement; set it to false to load with full attention")
    else:
        window = hf.get("sliding_window", 4096)
    d_model, n_heads = hf.get("hidden_size", 4096), hf.get("num_attention_heads", 32)
    head_dim = hf.get("head_dim")
    try:
        return ModelConfig(
            vocab_size=hf.get("vocab_size", 32000), max_len=hf.get("max_position_embeddings", MAX_POSITIONS[kind]),
            n_layers=hf.get("num_hidden_layers", 32), d_model=d_model, n_heads=n_heads,
            n_kv_heads=hf.get("num_key_value_heads") or n_heads,
            d_head=head_dim if head_dim and head_dim * n_heads != d_model else None,
            d_ff=hf.get("intermediate_size", 11008), norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6),
            norm_placement="pre", mlp="swiglu", pos="rope", pos_base=_rope_base(hf, where), mask="causal",
            window=window, bias=bias, qkv_bias=qkv_bias, tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            dropout=0.0)
    except (QkvError, TypeError) as e:
        raise CheckpointError(f"{where} describes an invalid model ({e}); fix config.json") from None


def hf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a checkpoint for ``cfg`` must hold, in Hugging Face naming."""
    V, C, F, D = cfg.vocab_size, cfg.d_model, cfg.ffn_dim, cfg.head_dim
    HD, GD = cfg.n_heads * D, cfg.kv_heads * D
    shapes = {"model.embed_tokens.weight": (V, C), "model.norm.weight": (C,)}
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (C,), p + "post_attention_layernorm.weight": (C,),
                       p + "self_attn.q_proj.weight": (HD, C), p + "self_attn.k_proj.weight": (GD, C),
                       p + "self_attn.v_proj.weight": (GD, C), p + "self_attn.o_proj.weight": (C, HD),
                       p + "mlp.gate_proj.weight": (F, C), p + "mlp.up_proj.weight": (F, C),
                       p + "mlp.down_proj.weight": (C, F)})
        if cfg.has_qkv_bias:
            shapes.update({p + "self_attn.q_proj.bias": (HD,), p + "self_attn.k_proj.bias": (GD,),
                           p + "self_attn.v_proj.bias": (GD,)})
        if cfg.bias:
            shapes.update({p + "self_attn.o_proj.bias": (C,), p + "mlp.gate_proj.bias": (F,),
                           p + "mlp.up_proj.bias": (F,), p + "mlp.down_proj.bias": (C,)})
    if not cfg.tie_embeddings:
        shapes["lm_head.weight"] = (V, C)
    return shapes


def state_from_hf(hf: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Hugging Face tensors (checked) -> qkv's state dict, float32."""
    sd = {"tok.weight": hf["model.embed_tokens.weight"], "norm_f.weight": hf["model.norm.weight"],
          "head.weight": hf["model.embed_tokens.weight"] if cfg.tie_embeddings else hf["lm_head.weight"]}
    renames = {"input_layernorm": "norm1", "post_attention_layernorm": "norm2", "self_attn.q_proj": "attn.wq",
               "self_attn.o_proj": "attn.wo", "mlp.gate_proj": "mlp.gate", "mlp.up_proj": "mlp.up",
               "mlp.down_proj": "mlp.down"}
    for i in range(cfg.n_layers):
        p, b = f"model.layers.{i}.", f"blocks.{i}."
        for theirs, ours in renames.items():
            for kind in ("weight", "bias"):
                if p + theirs + "." + kind in hf:
                    sd[b + ours + "." + kind] = hf[p + theirs + "." + kind]
        for kind in ("weight", "bias"):
            if p + "self_attn.k_proj." + kind in hf:
                sd[b + "attn.wkv." + kind] = torch.cat([hf[p + "self_attn.k_proj." + kind],
                                                        hf[p + "self_attn.v_proj." + kind]])
    return {k: t.float().contiguous() for k, t in sd.items()}


def load_llama(directory: str | os.PathLike) -> GPT:
    """A GPT (eval mode) from a Llama / Mistral / Qwen2 directory, with ``.tokenizer`` (None without files).

    >>> model = load_llama("path/to/SmolLM2-135M-Instruct")          # doctest: +SKIP
    >>> qkv.chat(model, [{"role": "user", "content": "Hi"}])          # doctest: +SKIP
    """
    d = Path(directory)
    cfg = config_from_hf(read_hf_json(d / "config.json"), where=str(d / "config.json"))
    where = f"the weights in {d}"
    hf = {k: t for k, t in read_weights(d).items() if not k.endswith("rotary_emb.inv_freq")}
    if cfg.tie_embeddings:
        hf.pop("lm_head.weight", None)          # a tied head is the embedding itself
    sizes = (f"vocab_size={cfg.vocab_size}, hidden_size={cfg.d_model}, num_hidden_layers={cfg.n_layers}, "
             f"num_attention_heads={cfg.n_heads}, num_key_value_heads={cfg.kv_heads}, head_dim={cfg.head_dim}, "
             f"intermediate_size={cfg.ffn_dim}")
    check_shapes(hf, hf_shapes(cfg), where, sizes, what="a Llama-family causal LM",
                 extra_fix="fix config.json (num_hidden_layers, biases, tie_word_embeddings) to match them")
    model = model_from_state(lambda: GPT(cfg), state_from_hf(hf, cfg), where)
    model.tokenizer = Tokenizer.from_dir(d)
    return model.eval()
