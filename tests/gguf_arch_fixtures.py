"""GGUF files of every architecture qkv reads, written with the ``gguf`` package's writer from a random
transformers model the way llama.cpp's ``convert_hf_to_gguf.py`` writes that architecture: its metadata keys,
tensor names (``gguf.constants``' tables), fused tensors as they are, the Q/K permutation for ``llama``
alone, and Gemma's norms stored as 1 + w."""

from __future__ import annotations

from pathlib import Path

import torch

from gguf_fixtures import CHATML, add_tensor, bpe_vocab, finish, permute, write_vocab

ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "phi3": "phi3",
        "gemma2": "gemma2", "gemma3_text": "gemma3"}
LAYER_NAMES = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
               "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "self_attn.qkv_proj": "attn_qkv",
               "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm", "mlp.gate_proj": "ffn_gate",
               "mlp.up_proj": "ffn_up", "mlp.gate_up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
GEMMA_NORMS = {"post_attention_layernorm": "post_attention_norm", "pre_feedforward_layernorm": "ffn_norm",
               "post_feedforward_layernorm": "post_ffw_norm"}


def _rope_theta(cfg, layer_type: str = "full_attention") -> float:
    params = cfg.rope_parameters
    return float((params.get(layer_type) or params)["rope_theta"])


def _metadata(w, cfg, arch: str) -> None:
    """The hyper-parameters as the converter writes them for ``arch``."""
    H = cfg.num_attention_heads
    D = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(H)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(_rope_theta(cfg))
    if arch != "gemma2" and arch != "gemma3":
        w.add_rope_dimension_count(D)
    if D * H != cfg.hidden_size or arch.startswith(("qwen3", "gemma")):     # an explicit head_dim
        w.add_key_length(D)
        w.add_value_length(D)
    if getattr(cfg, "sliding_window", None) is not None and arch in ("llama", "phi3", "gemma2", "gemma3"):
        w.add_sliding_window(cfg.sliding_window)
    if arch == "gemma2":
        w.add_attn_logit_softcapping(cfg.attn_logit_softcapping)
        w.add_final_logit_softcapping(cfg.final_logit_softcapping)
    if arch == "gemma3" and cfg.final_logit_softcapping:
        w.add_final_logit_softcapping(cfg.final_logit_softcapping)
    w.add_vocab_size(cfg.vocab_size)


def _tokenizer(w, vocab: int) -> None:
    tokens, merges, types = bpe_vocab()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    w.add_token_list(tokens + [f"[PAD{i}]" for i in range(vocab - len(tokens))])
    w.add_token_types(types + [4] * (vocab - len(tokens)))
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index("<|im_start|>"))
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_chat_template(CHATML)


def gguf_names(cfg, arch: str) -> dict[str, str]:
    """{Hugging Face tensor name: GGUF tensor name} for every tensor the converter writes."""
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    layer = dict(LAYER_NAMES)
    layer.update(GEMMA_NORMS if arch.startswith("gemma") else {"post_attention_layernorm": "ffn_norm"})
    for i in range(cfg.num_hidden_layers):
        for theirs, ours in layer.items():
            for kind in ("weight", "bias"):
                names[f"model.layers.{i}.{theirs}.{kind}"] = f"blk.{i}.{ours}.{kind}"
    return names


def write_gguf(path: Path, hf_model, kinds: dict[str, str] | None = None, name: str | None = None,
               vocab: dict | None = None) -> Path:
    """Write ``hf_model`` (any architecture of ``ARCH``) as a GGUF. kinds: {"blk": "Q8_0", ...}, the tensor type by
    a prefix or ``part.`` of the tensor name (vectors stay F32); name: general.name; vocab: a vocabulary as
    ``gguf_fixtures.sentencepiece_metadata`` gives it (default: a byte-level BPE with ChatML)."""
    import gguf
    cfg = hf_model.config
    arch = ARCH[cfg.model_type]
    w = gguf.GGUFWriter(str(path), arch)
    if name:
        w.add_name(name)
    _metadata(w, cfg, arch)
    if vocab is None:
        _tokenizer(w, cfg.vocab_size)
    else:
        write_vocab(w, vocab, None, vocab.get("add_bos"))
    sd = {k: v.detach().float().numpy() for k, v in hf_model.state_dict().items()}
    for hf_name, gguf_name in gguf_names(cfg, arch).items():
        if hf_name not in sd or (hf_name == "lm_head.weight" and cfg.tie_word_embeddings):
            continue
        t = sd[hf_name]
        if arch == "llama" and ".attn_q." in gguf_name:
            t = permute(t, cfg.num_attention_heads)
        if arch == "llama" and ".attn_k." in gguf_name:
            t = permute(t, cfg.num_key_value_heads)
        if arch.startswith("gemma") and gguf_name.endswith("norm.weight"):
            t = t + 1                                        # the converter stores Gemma's (1 + w)
        add_tensor(w, gguf_name, t, kinds)
    finish(w)
    return path


def random_model(transformers, kind: str, seed: int = 0, **options):
    """A random causal LM of ``kind`` (model_type) with every hyper-parameter off its default; its biases and
    norm weights random too (transformers makes them 0 and 1, which would hide a mix-up)."""
    torch.manual_seed(seed)
    classes = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3", "phi3": "Phi3",
               "gemma2": "Gemma2", "gemma3_text": "Gemma3Text"}
    common = dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=96, rms_norm_eps=2e-3, rope_theta=1000.0,
                  tie_word_embeddings=False, initializer_range=0.1, bos_token_id=None, eos_token_id=None,
                  pad_token_id=None)
    config = getattr(transformers, classes[kind] + "Config")(**{**common, **options})
    model_cls = "Gemma3ForCausalLM" if kind == "gemma3_text" else classes[kind] + "ForCausalLM"
    model = getattr(transformers, model_cls)(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(std=0.5)
            if name.endswith("norm.weight"):
                p.normal_(0.0 if kind.startswith("gemma") else 1.0, 0.3)
    return model
