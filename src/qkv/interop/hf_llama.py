"""Hugging Face Llama-family checkpoints in: ``LlamaForCausalLM``, ``MistralForCausalLM``, ``Qwen2ForCausalLM``,
``Qwen3ForCausalLM`` and ``Phi3ForCausalLM`` directories become an ordinary qkv ``GPT``, without transformers
installed. (Gemma 2 and 3 share the tensor names and this loader: ``hf_gemma``.)

The five are one architecture (Touvron et al., 2023): pre-norm RMSNorm blocks, rotary positions (RoPE
with base ``rope_theta``), grouped-query attention, a SwiGLU feed-forward, no biases. They differ in an
axis or two each, and each axis is a ``ModelConfig`` field (or only a tensor layout):

    model_type  config.json                                         ModelConfig
    llama       attention_bias / mlp_bias (usually false)           bias
    mistral     sliding_window: each query sees its last W keys     window
    qwen2       biases on q, k and v only                           qkv_bias=True, bias=False
    qwen3       q_norm / k_norm: RMSNorm over each head's q and k    qk_norm=True
                head_dim (default 128, whatever hidden_size is)     d_head
    phi3        sliding_window (when set)                           window
                q/k/v and gate/up as two fused tensors              (split on load: the layout only)

Tensor names (``model.`` prefix on everything but the head):

    Hugging Face                                       qkv
    model.embed_tokens                  (V, C)         tok.weight
    model.layers.{i}.input_layernorm            (C,)   blocks.{i}.norm1
    model.layers.{i}.self_attn.q_proj        (H*D, C)  blocks.{i}.attn.wq
    model.layers.{i}.self_attn.k_proj / v_proj         blocks.{i}.attn.wkv   (rows [k ; v], G*D each)
    model.layers.{i}.self_attn.qkv_proj  ((H+2G)*D, C) blocks.{i}.attn.wq, attn.wkv   (phi3: rows [q ; k ; v])
    model.layers.{i}.self_attn.q_norm / k_norm  (D,)   blocks.{i}.attn.q_norm / attn.k_norm   (qwen3)
    model.layers.{i}.self_attn.o_proj        (C, H*D)  blocks.{i}.attn.wo
    model.layers.{i}.post_attention_layernorm          blocks.{i}.norm2
    model.layers.{i}.mlp.gate_proj / up_proj  (F, C)   blocks.{i}.mlp.gate / mlp.up
    model.layers.{i}.mlp.gate_up_proj        (2F, C)   blocks.{i}.mlp.gate, mlp.up   (phi3: rows [gate ; up])
    model.layers.{i}.mlp.down_proj            (C, F)   blocks.{i}.mlp.down
    model.norm                          (C,)           norm_f
    lm_head                             (V, C)         head.weight   (absent when tie_word_embeddings)

Hugging Face's RoPE pairs channel i with i + D/2 ("rotate_half"), which is qkv's convention, so q and k
load unchanged (GGUF files are another matter: see ``qkv.interop.gguf``). Refused, by name: RoPE scaling
(``rope_scaling`` / ``rope_parameters`` other than 'default': linear, dynamic, yarn, longrope, su, llama3),
Phi-3's partial rotary factor, Qwen's per-layer ``use_sliding_window``, and any other model_type.
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

MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "phi3")
MAX_POSITIONS = {"llama": 2048, "mistral": 4096 * 32, "qwen2": 32768, "qwen3": 32768, "phi3": 4096}
HEAD_DIMS = {"qwen3": 128}              # config classes whose head_dim default is not hidden_size / heads


def rope_base(hf: dict, where: str, params: dict | None = None) -> float:
    """rope_theta, from ``rope_parameters`` (transformers >= 5; ``params``: one layer type's entry of it) or the
    top level; only plain RoPE over every channel loads."""
    params = (hf.get("rope_parameters") or {}) if params is None else params
    scaling = hf.get("rope_scaling") or {}
    kind = params.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if kind != "default":
        raise CheckpointError(f"{where} uses RoPE scaling {kind!r}, which qkv does not implement; only "
                              f"plain RoPE (rope_type 'default') checkpoints load")
    partial = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise CheckpointError(f"{where} rotates a part ({partial}) of each head (partial_rotary_factor); qkv's "
                              f"RoPE rotates every channel")
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def _axes(kind: str, hf: dict, where: str) -> dict:
    """The ModelConfig fields in which ``kind`` differs from Llama (see the module docstring)."""
    if kind == "llama":
        bias = bool(hf.get("attention_bias", False))
        if bool(hf.get("mlp_bias", False)) != bias:
            raise CheckpointError(f"{where} sets attention_bias={bias} but mlp_bias={hf.get('mlp_bias')}; qkv "
                                  f"biases every Linear or none (or q/k/v alone, as Qwen2)")
        return dict(bias=bias)
    if kind in ("qwen2", "qwen3") and hf.get("use_sliding_window", False):
        raise CheckpointError(f"{where} sets use_sliding_window=true (a window on some layers only), which "
                              f"qkv does not implement; set it to false to load with full attention")
    if kind == "qwen3" and hf.get("attention_bias", False):
        raise CheckpointError(f"{where} sets attention_bias=true (q/k/v/o biased, the MLP not), which qkv "
                              f"does not implement: it biases every Linear, none, or q/k/v alone")
    return {"mistral": dict(window=hf.get("sliding_window", 4096)), "qwen2": dict(qkv_bias=True),
            "qwen3": dict(qk_norm=True), "phi3": dict(window=hf.get("sliding_window"))}[kind]


def config_from_hf(hf: dict, where: str = "config.json") -> ModelConfig:
    """ModelConfig for a Llama / Mistral / Qwen2 / Qwen3 / Phi-3 config.json (missing keys: transformers'
    defaults)."""
    kind = hf.get("model_type")
    if kind not in MODEL_TYPES:
        raise CheckpointError(f"{where} has model_type={kind!r}; load_llama reads {list(MODEL_TYPES)}")
    if hf.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"{where} sets hidden_act={hf['hidden_act']!r}; qkv's SwiGLU uses silu only")
    d_model, n_heads = hf.get("hidden_size", 4096), hf.get("num_attention_heads", 32)
    return decoder_config(hf, where, **{
        "vocab_size": hf.get("vocab_size", 32000), "max_len": hf.get("max_position_embeddings", MAX_POSITIONS[kind]),
        "d_model": d_model, "n_heads": n_heads, "head_dim": hf.get("head_dim") or HEAD_DIMS.get(kind),
        "d_ff": hf.get("intermediate_size", 11008), "norm_eps": hf.get("rms_norm_eps", 1e-6),
        "norm_placement": "pre", "mlp": "swiglu", "pos_base": rope_base(hf, where), "bias": False,
        "tie_embeddings": bool(hf.get("tie_word_embeddings", False)), **_axes(kind, hf, where)})


def decoder_config(hf: dict, where: str, head_dim: int | None, **fields) -> ModelConfig:
    """The ModelConfig of a Llama-shaped causal LM (RMSNorm, RoPE, GQA) from ``fields``; errors name ``where``."""
    d_model, n_heads = fields["d_model"], fields["n_heads"]
    try:
        return ModelConfig(
            n_layers=hf.get("num_hidden_layers", 32), n_kv_heads=hf.get("num_key_value_heads") or n_heads,
            d_head=head_dim if head_dim and head_dim * n_heads != d_model else None, norm="rmsnorm",
            pos="rope", mask="causal", dropout=0.0, **fields)
    except (QkvError, TypeError) as e:
        raise CheckpointError(f"{where} describes an invalid model ({e}); fix config.json") from None


def norm_names(cfg: ModelConfig) -> dict[str, str]:
    """A layer's Hugging Face norm names -> qkv's. Under "sandwich" (Gemma 2/3) ``post_attention_layernorm``
    is the attention's post-norm and the FFN has its own pair; in Llama it is the FFN's pre-norm."""
    if cfg.norm_placement == "sandwich":
        return {"input_layernorm": "norm1", "post_attention_layernorm": "post_norm1",
                "pre_feedforward_layernorm": "norm2", "post_feedforward_layernorm": "post_norm2"}
    return {"input_layernorm": "norm1", "post_attention_layernorm": "norm2"}


def hf_shapes(cfg: ModelConfig, fused: bool = False) -> dict[str, tuple[int, ...]]:
    """Every tensor a checkpoint for ``cfg`` must hold, in Hugging Face naming (``fused``: Phi-3's qkv_proj and
    gate_up_proj in place of q/k/v_proj and gate/up_proj)."""
    V, C, F, D = cfg.vocab_size, cfg.d_model, cfg.ffn_dim, cfg.head_dim
    HD, GD = cfg.n_heads * D, cfg.kv_heads * D
    layer = {f"{name}.weight": (C,) for name in norm_names(cfg)}
    layer.update({"self_attn.q_proj.weight": (HD, C), "self_attn.k_proj.weight": (GD, C),
                  "self_attn.v_proj.weight": (GD, C), "self_attn.o_proj.weight": (C, HD),
                  "mlp.gate_proj.weight": (F, C), "mlp.up_proj.weight": (F, C), "mlp.down_proj.weight": (C, F)})
    if cfg.qk_norm:
        layer.update({"self_attn.q_norm.weight": (D,), "self_attn.k_norm.weight": (D,)})
    if cfg.has_qkv_bias:
        layer.update({"self_attn.q_proj.bias": (HD,), "self_attn.k_proj.bias": (GD,), "self_attn.v_proj.bias": (GD,)})
    if cfg.bias:
        layer.update({"self_attn.o_proj.bias": (C,), "mlp.gate_proj.bias": (F,), "mlp.up_proj.bias": (F,),
                      "mlp.down_proj.bias": (C,)})
    if fused:
        for name in ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                     "mlp.gate_proj.weight", "mlp.up_proj.weight"):
            del layer[name]
        layer.update({"self_attn.qkv_proj.weight": (HD + 2 * GD, C), "mlp.gate_up_proj.weight": (2 * F, C)})
    shapes = {"model.embed_tokens.weight": (V, C), "model.norm.weight": (C,)}
    for i in range(cfg.n_layers):
        shapes.update({f"model.layers.{i}.{name}": shape for name, shape in layer.items()})
    if not cfg.tie_embeddings:
        shapes["lm_head.weight"] = (V, C)
    return shapes


def unfuse(hf: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Phi-3's fused tensors (checked) as Llama's: qkv_proj rows [q ; k ; v], gate_up_proj rows [gate ; up]."""
    HD, GD = cfg.n_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    hf = dict(hf)
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        q, k, v = hf.pop(p + "self_attn.qkv_proj.weight").split([HD, GD, GD])
        gate, up = hf.pop(p + "mlp.gate_up_proj.weight").chunk(2)
        hf.update({p + "self_attn.q_proj.weight": q, p + "self_attn.k_proj.weight": k,
                   p + "self_attn.v_proj.weight": v, p + "mlp.gate_proj.weight": gate, p + "mlp.up_proj.weight": up})
    return hf


def state_from_hf(hf: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Hugging Face tensors (checked, unfused) -> qkv's state dict, float32."""
    sd = {"tok.weight": hf["model.embed_tokens.weight"], "norm_f.weight": hf["model.norm.weight"],
          "head.weight": hf["model.embed_tokens.weight"] if cfg.tie_embeddings else hf["lm_head.weight"]}
    renames = {**norm_names(cfg), "self_attn.q_proj": "attn.wq", "self_attn.o_proj": "attn.wo",
               "self_attn.q_norm": "attn.q_norm", "self_attn.k_norm": "attn.k_norm", "mlp.gate_proj": "mlp.gate",
               "mlp.up_proj": "mlp.up", "mlp.down_proj": "mlp.down"}
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


def load_decoder(directory: str | os.PathLike, read_config) -> GPT:
    """A GPT (eval mode) with ``.tokenizer`` from a directory whose config.json ``read_config(hf, where)`` reads
    and whose tensors have this module's names (Llama's, Gemma's)."""
    d = Path(directory)
    hf_config = read_hf_json(d / "config.json")
    cfg = read_config(hf_config, str(d / "config.json"))
    where = f"the weights in {d}"
    hf = {k: t for k, t in read_weights(d).items() if not k.endswith("rotary_emb.inv_freq")}
    if cfg.tie_embeddings:
        hf.pop("lm_head.weight", None)          # a tied head is the embedding itself
    sizes = (f"vocab_size={cfg.vocab_size}, hidden_size={cfg.d_model}, num_hidden_layers={cfg.n_layers}, "
             f"num_attention_heads={cfg.n_heads}, num_key_value_heads={cfg.kv_heads}, head_dim={cfg.head_dim}, "
             f"intermediate_size={cfg.ffn_dim}")
    fused = hf_config.get("model_type") == "phi3"      # a tensor layout, not a model axis: no config field
    check_shapes(hf, hf_shapes(cfg, fused), where, sizes, what="a Llama-family causal LM",
                 extra_fix="fix config.json (num_hidden_layers, biases, tie_word_embeddings) to match them")
    model = model_from_state(lambda: GPT(cfg), state_from_hf(unfuse(hf, cfg) if fused else hf, cfg), where)
    model.tokenizer = Tokenizer.from_dir(d)
    return model.eval()


def load_llama(directory: str | os.PathLike) -> GPT:
    """A GPT (eval mode) from a Llama / Mistral / Qwen2 / Qwen3 / Phi-3 directory, with ``.tokenizer`` (None
    without files).

    >>> model = load_llama("path/to/SmolLM2-135M-Instruct")          # doctest: +SKIP
    >>> qkv.chat(model, [{"role": "user", "content": "Hi"}])          # doctest: +SKIP
    """
    return load_decoder(directory, config_from_hf)
