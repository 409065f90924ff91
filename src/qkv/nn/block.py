"""One transformer block: attention and feed-forward sublayers, each wrapped in residual + norm.

Legend: B batch, L length, C d_model, H heads, G key/value heads, D head dim, M key length (self-attention:
the cache, = L without one), S source length (cross-attention's keys: the encoder output).

    pre-norm  (GPT-2, LLaMA):          x = x + Attn(Norm(x));   x = x + FFN(Norm(x))   (+ a final norm)
    post-norm (original paper, BERT):  x = Norm(x + Attn(x));   x = Norm(x + FFN(x))
    sandwich  (Gemma 2/3):             x = x + Norm'(Attn(Norm(x)));   x = x + Norm'(FFN(Norm(x)))   (+ final)

The sandwich's second norm (``post_norm1``, ``post_norm2``; CogView's "sandwich-LN", Ding et al., 2021)
bounds what each sublayer adds to the residual stream; in pre-norm blocks it is an identity.

The same block serves encoders (bidirectional mask) and decoders (causal mask). A decoder block of the
encoder-decoder (Vaswani et al., 2017, sec. 3.1) adds a third sublayer between the two, cross-attention:
queries from the decoder, keys and values from the encoder output, masked only for source padding.

    x ─> [self-attention] ─> [cross-attention onto the encoder output] ─> [FFN] ─>      (each: residual + norm)
"""

import torch
from torch import nn

from .attention import Attention
from .kv_cache import KVCache
from .masks import AttnMask
from .mlp import make_mlp
from .norms import make_norm


class Block(nn.Module):
    def __init__(self, cfg, cross: bool = False):
        super().__init__()
        norm = lambda dim: make_norm(cfg.norm, dim, cfg.norm_eps, cfg.norm_offset)   # noqa: E731
        sandwich = cfg.norm_placement == "sandwich"
        attention = lambda: Attention(cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.bias, cfg.dropout,  # noqa: E731
                                      cfg.head_dim, cfg.has_qkv_bias, norm if cfg.qk_norm else None,
                                      cfg.attn_scale, cfg.attn_softcap)
        self.attn = attention()
        self.norm1 = norm(cfg.d_model)
        self.post_norm1 = norm(cfg.d_model) if sandwich else nn.Identity()
        if cross:
            self.cross = attention()
            self.norm_cross = norm(cfg.d_model)
        self.mlp = make_mlp(cfg.mlp, cfg.d_model, cfg.ffn_dim, cfg.bias, cfg.dropout)
        self.norm2 = norm(cfg.d_model)
        self.post_norm2 = norm(cfg.d_model) if sandwich else nn.Identity()
        self.pre_norm = cfg.norm_placement != "post"

    def _sublayer(self, x_BLC, norm, fn, post_norm=None):
        """Residual + norm around ``fn``, in the block's placement. Returns (x_BLC, probs)."""
        if self.pre_norm:
            h_BLC, probs = fn(norm(x_BLC))
            return x_BLC + (post_norm(h_BLC) if post_norm is not None else h_BLC), probs
        h_BLC, probs = fn(x_BLC)
        return norm(x_BLC + h_BLC), probs

    def forward(self, x_BLC: torch.Tensor, mask: AttnMask, rope=None, cache: KVCache | None = None,
                return_probs: bool = False, cross_kv=None, cross_mask: AttnMask | None = None):
        """Returns (x_BLC, probs_BHLM or None, cross_probs_BHLS or None).

        cross_kv: this block's (k_BGSD, v_BGSD) of the encoder output (``self.cross.project_kv(memory)``).
        """
        x_BLC, probs_BHLM = self._sublayer(x_BLC, self.norm1,
                                           lambda h: self.attn(h, mask, rope, cache, return_probs), self.post_norm1)
        cross_probs_BHLS = None
        if cross_kv is not None:
            x_BLC, cross_probs_BHLS = self._sublayer(
                x_BLC, self.norm_cross, lambda h: self.cross(h, cross_mask, return_probs=return_probs,
                                                             kv=cross_kv))
        x_BLC, _ = self._sublayer(x_BLC, self.norm2, lambda h: (self.mlp(h), None), self.post_norm2)
        return x_BLC, probs_BHLM, cross_probs_BHLS
