"""A qkv ``GPT`` as the config.json and tensors of a transformers decoder class (``export_axes`` picks it).

Each mapping is the inverse of the loader that reads the class back into qkv (``hf_gpt2``, ``hf_llama``), and a
test holds every pair to a round trip; GPT-NeoX has no qkv loader, so transformers' logits are its test.

    qkv                         Llama / Qwen2 / Mistral                    GPT-NeoX (``gpt_neox.`` prefix)
    tok.weight                  model.embed_tokens                         embed_in
    blocks.{i}.norm1            model.layers.{i}.input_layernorm           layers.{i}.input_layernorm
    blocks.{i}.attn.wq          ...self_attn.q_proj          (H*D, C)      layers.{i}.attention.query_key_value (1)
    blocks.{i}.attn.wkv         ...self_attn.k_proj ; v_proj (G*D each)    (1)
    blocks.{i}.attn.wo          ...self_attn.o_proj                        layers.{i}.attention.dense
    blocks.{i}.norm2            ...post_attention_layernorm                layers.{i}.post_attention_layernorm
    blocks.{i}.mlp.gate/up/down ...mlp.gate_proj / up_proj / down_proj     layers.{i}.mlp.dense_h_to_4h / _4h_to_h
    norm_f                      model.norm                                 final_layer_norm
    head.weight                 lm_head (absent when tied)                 lm_head (always written)
    head.weight (GPTClassifier) score                                      score          (K, C), no bias

    (1) GPT-NeoX fuses q, k and v per head: rows [q_0 ; k_0 ; v_0 ; q_1 ; k_1 ; v_1 ; ...], D rows each, so
        its attention can split the product into heads first and then into q, k, v.

A ``GPTClassifier`` (a decoder fine-tuned to classify from its last real token) is the family's
``*ForSequenceClassification``: the same trunk, ``score`` for the head, the labels in ``id2label``.
GPT-2 is ``hf_gpt2.config_to_hf`` / ``state_to_hf`` themselves. A bias the class has and qkv's model lacks is
written as zeros (``with_zero_biases``): GPT-2 biases every Linear, GPT-NeoX its MLP, Llama all or none.
Positions: each family uses Hugging Face's rotate-half RoPE, which is qkv's, so q/k rows go unchanged.
"""

from __future__ import annotations

import dataclasses
import types

import torch

from ..config import ModelConfig
from ..models.decoder import GPT
from ..models.decoder_classifier import GPTClassifier
from . import hf_gpt2

CLASSES = {"gpt2": "GPT2LMHeadModel", "gpt_neox": "GPTNeoXForCausalLM", "llama": "LlamaForCausalLM",
           "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}
LLAMA_LAYER = {"norm1": "input_layernorm", "norm2": "post_attention_layernorm", "attn.wq": "self_attn.q_proj",
               "attn.wo": "self_attn.o_proj", "mlp.gate": "mlp.gate_proj", "mlp.up": "mlp.up_proj",
               "mlp.down": "mlp.down_proj"}
NEOX_LAYER = {"norm1": "input_layernorm", "norm2": "post_attention_layernorm", "attn.wo": "attention.dense",
              "mlp.up": "mlp.dense_h_to_4h", "mlp.down": "mlp.dense_4h_to_h"}
NEOX_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu"}
CLASSIFIERS = {arch: name.replace("LMHeadModel", "ForSequenceClassification").replace("ForCausalLM",
                                                                                     "ForSequenceClassification")
               for arch, name in CLASSES.items()}
ATTENTION, MLP = ("attn.wq", "attn.wkv", "attn.wo"), ("mlp.gate", "mlp.up", "mlp.down")


def biased_linears(cfg: ModelConfig, arch: str) -> tuple[str, ...]:
    """The per-block Linears (qkv names) that carry a bias in ``arch``'s layout for ``cfg``."""
    attention = cfg.bias or cfg.has_qkv_bias
    return {"gpt2": ATTENTION + MLP, "gpt_neox": (ATTENTION if attention else ()) + MLP,
            "llama": ATTENTION + MLP if cfg.bias else (), "qwen2": ATTENTION[:2], "mistral": ()}[arch]


def with_zero_biases(sd: dict[str, torch.Tensor], n_layers: int, linears: tuple[str, ...]) -> dict:
    """``sd`` plus a zero bias for each of ``linears`` that has none: y = W x + 0 is y = W x."""
    out = dict(sd)
    for i in range(n_layers):
        for name in linears:
            weight = out.get(f"blocks.{i}.{name}.weight")
            if weight is not None:
                out.setdefault(f"blocks.{i}.{name}.bias", torch.zeros(weight.shape[0], dtype=weight.dtype))
    return out


def hf_class(model: GPT, arch: str) -> str:
    return (CLASSIFIERS if isinstance(model, GPTClassifier) else CLASSES)[arch]


def config_json(model: GPT, arch: str, ids: dict) -> dict:
    """The config.json of ``arch`` for ``model``; ``ids``: bos/eos/pad token ids (None where unknown)."""
    config = {**_config_json(model.cfg, arch, ids), "architectures": [hf_class(model, arch)]}
    if isinstance(model, GPTClassifier):
        config.update(id2label={str(i): label for i, label in enumerate(model.labels)},
                      label2id={label: i for i, label in enumerate(model.labels)})
    return config


def _config_json(cfg: ModelConfig, arch: str, ids: dict) -> dict:
    if arch == "gpt2":
        return {**hf_gpt2.config_to_hf(dataclasses.replace(cfg, bias=True, qkv_bias=None)), **ids}
    rope = {"rope_type": "default", "rope_theta": cfg.pos_base}
    common = {"model_type": arch, "architectures": [CLASSES[arch]], "vocab_size": cfg.vocab_size,
              "hidden_size": cfg.d_model, "intermediate_size": cfg.ffn_dim, "num_hidden_layers": cfg.n_layers,
              "num_attention_heads": cfg.n_heads, "max_position_embeddings": cfg.max_len,
              "tie_word_embeddings": cfg.tie_embeddings, "attention_dropout": 0.0, "initializer_range": 0.02,
              "use_cache": True, "dtype": "float32", **ids}
    if arch == "gpt_neox":
        return {**common, "hidden_act": NEOX_ACTIVATIONS[cfg.mlp], "layer_norm_eps": cfg.norm_eps,
                "use_parallel_residual": False, "attention_bias": cfg.bias or cfg.has_qkv_bias, "hidden_dropout": 0.0,
                "rotary_pct": 1.0, "rotary_emb_base": cfg.pos_base,
                "rope_parameters": {**rope, "partial_rotary_factor": 1.0}}
    common.update({"num_key_value_heads": cfg.kv_heads, "head_dim": cfg.head_dim, "rms_norm_eps": cfg.norm_eps,
                   "hidden_act": "silu", "rope_theta": cfg.pos_base, "rope_parameters": rope})
    if arch == "llama":
        return {**common, "attention_bias": cfg.bias, "mlp_bias": cfg.bias}
    if arch == "qwen2":
        return {**common, "use_sliding_window": False, "sliding_window": None, "max_window_layers": cfg.n_layers}
    return {**common, "sliding_window": cfg.window}


def _layers(sd: dict, n_layers: int, prefix: str, table: dict[str, str]) -> dict[str, torch.Tensor]:
    """Every per-block weight and bias ``table`` renames (qkv name -> theirs), under ``{prefix}{i}.``."""
    return {f"{prefix}{i}.{theirs}.{kind}": sd[f"blocks.{i}.{ours}.{kind}"]
            for i in range(n_layers) for ours, theirs in table.items() for kind in ("weight", "bias")
            if f"blocks.{i}.{ours}.{kind}" in sd}


def _fused(sd: dict, n_layers: int, split) -> dict[str, torch.Tensor]:
    """The tensors ``split(layer prefix, kind, wq, wkv)`` makes of each block's q and [k ; v] (weights, biases)."""
    out = {}
    for i in range(n_layers):
        for kind in ("weight", "bias"):
            if f"blocks.{i}.attn.wkv.{kind}" in sd:
                out.update(split(i, kind, sd[f"blocks.{i}.attn.wq.{kind}"], sd[f"blocks.{i}.attn.wkv.{kind}"]))
    return out


def _llama_state(sd: dict, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    def split(i, kind, _, kv):
        k, v = kv.chunk(2)
        return {f"model.layers.{i}.self_attn.k_proj.{kind}": k, f"model.layers.{i}.self_attn.v_proj.{kind}": v}
    return {"model.embed_tokens.weight": sd["tok.weight"], "model.norm.weight": sd["norm_f.weight"],
            **_layers(sd, cfg.n_layers, "model.layers.", LLAMA_LAYER), **_fused(sd, cfg.n_layers, split)}


def _neox_qkv(q: torch.Tensor, kv: torch.Tensor, n_heads: int) -> torch.Tensor:
    """q (H*D, ...) and [k ; v] (2*H*D, ...) -> GPT-NeoX's per-head [q_h ; k_h ; v_h] rows."""
    k, v = kv.chunk(2)
    return torch.stack([t.reshape(n_heads, -1, *t.shape[1:]) for t in (q, k, v)], dim=1).reshape(-1, *q.shape[1:])


def _neox_state(sd: dict, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    def split(i, kind, q, kv):
        return {f"gpt_neox.layers.{i}.attention.query_key_value.{kind}": _neox_qkv(q, kv, cfg.n_heads)}
    return {"gpt_neox.embed_in.weight": sd["tok.weight"], "lm_head.weight": sd["head.weight"],
            **{f"gpt_neox.final_layer_norm.{kind}": sd[f"norm_f.{kind}"] for kind in ("weight", "bias")},
            **_layers(sd, cfg.n_layers, "gpt_neox.layers.", NEOX_LAYER), **_fused(sd, cfg.n_layers, split)}


def state_dict(model: GPT, arch: str) -> dict[str, torch.Tensor]:
    """The tensors ``arch``'s save_pretrained writes for ``model``: contiguous CPU copies, no shared storage."""
    cfg = model.cfg
    sd = with_zero_biases({k: t.detach() for k, t in model.state_dict().items()}, cfg.n_layers,
                          biased_linears(cfg, arch))
    classifier = isinstance(model, GPTClassifier)
    if arch == "gpt2":     # hf_gpt2 reads a model; this one holds the zero biases GPT-2 needs
        full = dataclasses.replace(cfg, bias=True, qkv_bias=None, tie_embeddings=cfg.tie_embeddings or classifier)
        hf = hf_gpt2.state_to_hf(types.SimpleNamespace(state_dict=lambda: sd, cfg=full))
    elif arch == "gpt_neox":
        hf = _neox_state(sd, cfg)
    else:
        hf = _llama_state(sd, cfg)
        if not cfg.tie_embeddings:
            hf["lm_head.weight"] = sd["head.weight"]
    if classifier:         # the head is the classifier's, not the vocabulary's
        hf.pop("lm_head.weight", None)
        hf["score.weight"] = sd["head.weight"]
    return {k: t.float().cpu().contiguous().clone() for k, t in hf.items()}
