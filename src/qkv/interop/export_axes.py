"""Which Hugging Face class (and which GGUF architecture) can hold a qkv model, read off its config axes.

A qkv ``ModelConfig`` is one field per axis; each transformers class fixes some axes and leaves others free.
Export picks the class whose fixed axes the model has, and otherwise names the first axis no class has:

    decoder (GPT)          pos        norm        mlp                  other axes it needs
    GPT2LMHeadModel        learned    layernorm   gelu, gelu_tanh, relu  n_kv_heads = n_heads, no d_head
    GPTNeoXForCausalLM     rope       layernorm   gelu, gelu_tanh, relu  n_kv_heads = n_heads, no d_head
    LlamaForCausalLM       rope       rmsnorm     swiglu               biases: all or none (q/k/v as zeros)
    Qwen2ForCausalLM       rope       rmsnorm     swiglu               biases on q/k/v only (qkv_bias=True)
    MistralForCausalLM     rope       rmsnorm     swiglu               window = W, no biases

    every decoder: mask causal, norm_placement pre, no embed_scale / embed_norm / segment embeddings, and
    none of the Qwen3 / Gemma axes (qk_norm, norm_offset, global_every, pos_base_local, attn_scale, soft-caps)
    encoder (BERT):        learned    layernorm   gelu, gelu_tanh, relu  post-norm, embed_norm, bidirectional

A bias the class has and the qkv model lacks is written as zeros, which computes the same thing (GPT-2 and
BERT have biases everywhere, GPT-NeoX on its MLP). A segment table the encoder lacks becomes one zero row.

GGUF (llama.cpp) is narrower: architecture ``llama`` is the Llama row with no biases and no window.
(GPT-2-shaped models would be GGUF arch ``gpt2``, which ``qkv.load`` does not read back; refused by name.)
"""

from __future__ import annotations

from ..config import ModelConfig
from ..errors import CheckpointError

# The axes Qwen3 and Gemma brought (qkv.interop.hf_gemma, hf_llama's qwen3): off in every class export writes
# today, so a model that uses one is refused by name rather than written without it.
LATER_AXES_OFF = {"qk_norm": False, "norm_offset": 0.0, "global_every": None, "pos_base_local": None,
                  "attn_scale": None, "attn_softcap": None, "logit_softcap": None}
# Axes every Hugging Face decoder class fixes: name -> the value it needs.
DECODER_FIXED = {"mask": "causal", "norm_placement": "pre", "embed_scale": False, "embed_norm": False,
                 "type_vocab_size": 0, **LATER_AXES_OFF}
ENCODER_FIXED = {"mask": "bidirectional", "norm_placement": "post", "pos": "learned", "norm": "layernorm",
                 "embed_scale": False, "embed_norm": True, "window": None, "d_head": None, **LATER_AXES_OFF}
PLAIN_ACTIVATIONS = ("gelu", "gelu_tanh", "relu")          # GPT-2's, GPT-NeoX's and BERT's choices
# (pos, norm) -> the decoder family that has them
DECODER_SHAPES = {("learned", "layernorm"): "gpt2", ("rope", "layernorm"): "gpt_neox",
                  ("rope", "rmsnorm"): "llama"}


HF_FIX = "keep it as a qkv checkpoint (or train one with the axis a transformers class has)"
GGUF_FIX = "export it with --format hf instead"


def _refuse(what: str, axis: str, value, needs: str, fix: str = HF_FIX) -> CheckpointError:
    return CheckpointError(f"no {what} holds this model's {axis}={value!r} ({needs}); {fix}")


def _check_fixed(cfg: ModelConfig, fixed: dict, what: str) -> None:
    for axis, want in fixed.items():
        value = getattr(cfg, axis)
        if value != want and axis in LATER_AXES_OFF:     # transformers has a class (Qwen3, Gemma); export not yet
            raise CheckpointError(f"qkv export does not write the classes with {axis} yet (this model has "
                                  f"{axis}={value!r}: Qwen3's or Gemma's axis); it writes GPT-2, GPT-NeoX, Llama, "
                                  f"Qwen2, Mistral and BERT; keep it as a qkv checkpoint, or use the directory or "
                                  f"GGUF it was loaded from")
        if value != want:
            raise _refuse(what, axis, value, f"it needs {axis}={want!r}")


def decoder_arch(cfg: ModelConfig) -> str:
    """'gpt2', 'gpt_neox', 'llama', 'qwen2' or 'mistral': the transformers family that holds ``cfg``."""
    what = "transformers decoder class"
    _check_fixed(cfg, DECODER_FIXED, what)
    family = DECODER_SHAPES.get((cfg.pos, cfg.norm))
    if family is None:
        axis = "pos" if cfg.pos not in ("learned", "rope") else "norm"
        raise _refuse(what, axis, getattr(cfg, axis), "GPT-2 has learned positions and LayerNorm, GPT-NeoX RoPE and "
                                                      "LayerNorm, the Llama family RoPE and RMSNorm")
    if family == "llama":
        if cfg.mlp != "swiglu":
            raise _refuse(what, "mlp", cfg.mlp, "RoPE + RMSNorm decoders (Llama, Qwen2, Mistral) use mlp='swiglu'")
        return _llama_variant(cfg, what)
    if cfg.mlp not in PLAIN_ACTIVATIONS:
        raise _refuse(what, "mlp", cfg.mlp, f"LayerNorm decoders (GPT-2, GPT-NeoX) take mlp in {PLAIN_ACTIVATIONS}")
    for axis, value in (("n_kv_heads", cfg.n_kv_heads), ("window", cfg.window), ("d_head", cfg.d_head)):
        if value is not None and not (axis == "n_kv_heads" and value == cfg.n_heads):
            raise _refuse(what, axis, value, f"{'GPT-2' if family == 'gpt2' else 'GPT-NeoX'} has plain multi-head "
                                             f"attention over the whole context: {axis}=None")
    return family


def _llama_variant(cfg: ModelConfig, what: str) -> str:
    if cfg.window is not None:
        if cfg.bias or cfg.has_qkv_bias:
            raise _refuse(what, "window", cfg.window, "Mistral, the sliding-window Llama, has no biases: "
                                                      "bias=False and qkv_bias=False")
        return "mistral"
    return "qwen2" if cfg.has_qkv_bias and not cfg.bias else "llama"


def check_encoder(cfg: ModelConfig) -> None:
    """Raise, naming the axis, unless ``BertModel`` and its heads can hold ``cfg``."""
    what = "transformers encoder class (BERT)"
    _check_fixed(cfg, ENCODER_FIXED, what)
    if cfg.mlp not in PLAIN_ACTIVATIONS:
        raise _refuse(what, "mlp", cfg.mlp, f"BERT takes mlp in {PLAIN_ACTIVATIONS}")
    if cfg.kv_heads != cfg.n_heads:
        raise _refuse(what, "n_kv_heads", cfg.n_kv_heads, "BERT has plain multi-head attention: n_kv_heads=None")


def check_gguf_llama(cfg: ModelConfig) -> None:
    """Raise, naming the axis, unless GGUF's ``llama`` architecture holds ``cfg`` exactly."""
    what = "GGUF architecture qkv reads back (llama)"
    for axis, want in {**DECODER_FIXED, "pos": "rope", "norm": "rmsnorm", "mlp": "swiglu", "window": None,
                       "bias": False}.items():
        if getattr(cfg, axis) != want:
            needs = (f"GGUF llama is a pre-norm causal RoPE + RMSNorm + SwiGLU decoder with no biases over the whole "
                     f"context, {axis}={want!r}")
            if axis in ("pos", "norm") and DECODER_SHAPES.get((cfg.pos, cfg.norm)) == "gpt2":
                needs += "; GGUF arch gpt2 would hold it, but qkv.load does not read gpt2 GGUFs back"
            raise _refuse(what, axis, getattr(cfg, axis), needs, GGUF_FIX)
    if cfg.has_qkv_bias:
        raise _refuse(what, "qkv_bias", True, "GGUF llama has no q/k/v biases (Qwen2's)", GGUF_FIX)
