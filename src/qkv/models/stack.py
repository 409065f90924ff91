"""The trunk every family shares: embeddings, a stack of blocks, a final norm.

Legend: B batch, L length, M key length (the cache; = L without one), C d_model, S source length (the
encoder output: cross-attention's keys), H heads, G key/value heads.

    ids_BL ─> token embedding (+ position embedding) (+ segment embedding) (─> norm) ─> dropout
           ─> n x Block(mask; RoPE/ALiBi hooks act inside attention; optional cross-attention)
           ─> final norm (pre-norm only) ─> h_BLC

Layers may differ in what they see (``cfg.layer_window(i)``): with ``global_every`` N the windowed layers
take ``local_mask`` (and RoPE of base ``pos_base_local`` when set), every N-th layer the full ``mask``:

    Gemma 2 (N = 2):  layer 0 window, 1 global, 2 window, 3 global, ...
    Gemma 3 (N = 6):  layers 0-4 window (local RoPE base), 5 global, 6-10 window, 11 global, ...

GPT is a causal stack with a head, BERT a bidirectional stack with segment embeddings and heads, the
encoder-decoder a bidirectional stack feeding a causal stack with cross-attention: one class, different
masks (the x-transformers idea). The state-dict names (tok, pos, blocks.i, norm_f) are the same for all.
"""

import math

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError, InputError
from ..nn.block import Block
from ..nn.dropout import make_dropout
from ..nn.kv_cache import KVCache
from ..nn.masks import AttnMask
from ..nn.norms import make_norm
from ..nn.position import make_position


class Stack(nn.Module):
    def __init__(self, cfg: ModelConfig, n_layers: int | None = None, cross: bool = False, tokens: bool = True):
        """tokens: False for inputs that arrive as vectors (image patches): no token embedding, no vocabulary."""
        super().__init__()
        if tokens and cfg.vocab_size is None:
            raise ConfigError("ModelConfig.vocab_size is None; set it to the tokenizer's vocab size")
        self.cfg = cfg
        if tokens:
            self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = make_position(cfg)
        self.pos_local = make_position(cfg, cfg.pos_base_local) if cfg.pos_base_local is not None else None
        self.local_layers = [cfg.layer_window(i) is not None for i in range(n_layers or cfg.n_layers)]
        if cfg.type_vocab_size:
            self.types = nn.Embedding(cfg.type_vocab_size, cfg.d_model)
        self.embed_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.norm_offset) if cfg.embed_norm \
            else nn.Identity()
        self.embed_multiplier = math.sqrt(cfg.d_model) if cfg.embed_scale else 1.0
        self.drop = make_dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, cross) for _ in range(n_layers or cfg.n_layers))
        # Pre-norm leaves the residual stream unnormalized, so a final norm closes the stack.
        self.norm_f = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.norm_offset) \
            if cfg.norm_placement != "post" else nn.Identity()

    def init_weights(self) -> None:
        """GPT-2's init: N(0, 0.02), zero biases, and the projections that write into the residual
        stream scaled by 1/sqrt(2 * n_layers)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for name, p in self.named_parameters():
            if name.endswith(("attn.wo.weight", "cross.wo.weight", "mlp.down.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * len(self.blocks)))
        if self.cfg.embed_scale and hasattr(self, "tok"):   # x sqrt(d_model) in embed(): unit-scale token vectors
            nn.init.normal_(self.tok.weight, std=self.cfg.d_model ** -0.5)

    def rebuild_buffers(self) -> None:
        """Recompute the buffers made at construction (the position tables), e.g. after building on the
        meta device and assigning loaded weights."""
        self.pos = make_position(self.cfg)
        if self.cfg.pos_base_local is not None:
            self.pos_local = make_position(self.cfg, self.cfg.pos_base_local)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # The dtype new_caches stores keys and values in; None: the model's own. An inference setting, not part
    # of the checkpoint: `--kv-cache float16` sets it on the loaded model (qkv.nn.kv_cache says why).
    cache_dtype: torch.dtype | None = None

    def new_caches(self, batch: int, max_len: int | None = None) -> list[KVCache]:
        """One preallocated self-attention cache per layer, on the model's device, in ``cache_dtype`` (else
        the model's dtype)."""
        p = next(p for p in self.parameters() if p.is_floating_point())   # tok may hold int8 codes (qkv.quant)
        return [KVCache(batch, self.cfg.kv_heads, max_len or self.cfg.max_len, self.cfg.head_dim,
                        dtype=self.cache_dtype or p.dtype, device=p.device) for _ in self.blocks]

    def check_ids(self, ids_BL: torch.Tensor, start: int = 0) -> None:
        """Raise a clear error for ids outside the vocabulary or a sequence past the positions."""
        if ids_BL.dtype not in (torch.long, torch.int, torch.int16, torch.uint8):
            raise InputError(f"token ids must be an integer tensor, got {ids_BL.dtype}")
        if ids_BL.numel() and (int(ids_BL.min()) < 0 or int(ids_BL.max()) >= self.cfg.vocab_size):
            raise InputError(f"token ids must lie in [0, {self.cfg.vocab_size}); got min {int(ids_BL.min())}"
                             f" max {int(ids_BL.max())}: encode text with this model's tokenizer")
        if start + ids_BL.shape[1] > self.cfg.max_len:
            raise InputError(f"sequence of {start + ids_BL.shape[1]} positions exceeds the model's context "
                             f"max_len={self.cfg.max_len}; shorten the input")

    def embed(self, ids_BL: torch.Tensor, pos_BL: torch.Tensor, types_BL: torch.Tensor | None = None):
        x_BLC = self.tok(ids_BL)
        if self.embed_multiplier != 1.0:
            x_BLC = x_BLC * self.embed_multiplier
        add_BLC = self.pos.embed(pos_BL)
        if add_BLC is not None:
            x_BLC = x_BLC + add_BLC
        if self.cfg.type_vocab_size:
            x_BLC = x_BLC + self.types(types_BL if types_BL is not None else torch.zeros_like(ids_BL))
        return self.drop(self.embed_norm(x_BLC))

    def run(self, x_BLC: torch.Tensor, mask: AttnMask, pos_BL: torch.Tensor,
            caches: list[KVCache] | None = None, return_attentions: bool = False,
            cross_kvs: list | None = None, cross_mask: AttnMask | None = None, local_mask: AttnMask | None = None):
        """The blocks and the final norm over embedded inputs. Returns (h_BLC, attentions, cross_attentions);
        the attention lists hold one probs_BHLM (cross: probs_BHLS) per layer when asked (else None entries).

        local_mask: the windowed layers' mask when only some layers are windowed (``cfg.global_every``);
        None: every layer takes ``mask``."""
        rope = self.pos.rotary(pos_BL)
        rope_local = self.pos_local.rotary(pos_BL) if self.pos_local is not None else rope
        local_mask = mask if local_mask is None else local_mask
        attentions, cross_attentions = [], []
        for i, block in enumerate(self.blocks):
            local = self.local_layers[i]
            x_BLC, probs_BHLM, cross_BHLS = block(x_BLC, local_mask if local else mask, rope_local if local else rope,
                                                  caches[i] if caches else None,
                                                  return_attentions, cross_kvs[i] if cross_kvs else None,
                                                  cross_mask)
            attentions.append(probs_BHLM)
            cross_attentions.append(cross_BHLS)
        return self.norm_f(x_BLC), attentions, cross_attentions
