"""One transformer block: attention and feed-forward sublayers, each wrapped in residual + norm.

Legend: B batch, L length, C d_model, H heads, M key length.

    pre-norm  (GPT-2, LLaMA):          x = x + Attn(Norm(x));   x = x + FFN(Norm(x))   (+ a final norm)
    post-norm (original paper, BERT):  x = Norm(x + Attn(x));   x = Norm(x + FFN(x))

The same block serves encoders (bidirectional mask) and decoders (causal mask). The encoder-decoder adds
a cross-attention sublayer between the two, using ``Attention(memory_BMC=...)``.
"""

import torch
from torch import nn

from .attention import Attention
from .kv_cache import KVCache
from .masks import AttnMask
from .mlp import make_mlp
from .norms import make_norm


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.attn = Attention(cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.bias, cfg.dropout)
        self.norm1 = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.mlp = make_mlp(cfg.mlp, cfg.d_model, cfg.ffn_dim, cfg.bias, cfg.dropout)
        self.norm2 = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.pre_norm = cfg.norm_placement == "pre"

    def forward(self, x_BLC: torch.Tensor, mask: AttnMask, rope=None, cache: KVCache | None = None,
                return_probs: bool = False):
        if self.pre_norm:
            h_BLC, probs_BHLM = self.attn(self.norm1(x_BLC), mask, rope, cache, return_probs)
            x_BLC = x_BLC + h_BLC
            x_BLC = x_BLC + self.mlp(self.norm2(x_BLC))
        else:
            h_BLC, probs_BHLM = self.attn(x_BLC, mask, rope, cache, return_probs)
            x_BLC = self.norm1(x_BLC + h_BLC)
            x_BLC = self.norm2(x_BLC + self.mlp(x_BLC))
        return x_BLC, probs_BHLM
