"""Multi-head scaled dot-product attention (Vaswani et al., 2017, sec. 3.2) with GQA/MQA and a KV cache.

Legend: B batch, L query length, M key length, C d_model, H query heads, G key/value heads, D head dim,
R query heads per key/value head (H / G).

    Attention(Q, K, V) = softmax(Q K^T / sqrt(D) + bias) V          per head, then concat heads and W_o

        x_BLC ──wq──> q_BHLD ─┐ (q_norm; rotate: RoPE)
        x_BLC ──wkv─> k_BGMD ─┤ (k_norm; rotate, then append to the cache)  cross-attention: keys/values
                      v_BGMD ─┤                                          come from ``project_kv(memory)``
                              └─> softmax(masked scores) @ v ──> out_BLHD ──wo──> out_BLC

Cross-attention (encoder-decoder) takes its keys and values from the encoder output ("memory"). They
depend only on the source, so the caller projects them once with ``project_kv`` and passes ``kv``:
once per training step, and once per source sentence for a whole decode (not once per new token).

Grouped-query attention (Ainslie et al., 2023): G key/value heads each serve H/G query heads
(G = H is multi-head, G = 1 is multi-query attention). Two paths compute the same thing:
the explicit path spells out the math and returns the probabilities (for pictures and teaching);
the fast path calls ``F.scaled_dot_product_attention``. A test holds them equal.

Variants, each one ``ModelConfig`` field: a norm over each head's q and k before RoPE (``qk_norm``: Qwen3,
Gemma 3; Dehghani et al., 2023), another score scale than 1/sqrt(D) (``attn_scale``: Gemma's
query_pre_attn_scalar), and soft-capped scores c * tanh(s / c) (``attn_softcap``: Gemma 2), which keep
logits within (-c, c) smoothly; the capped scores run the explicit path (SDPA cannot cap, see ``attend``).
"""

import math
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .kv_cache import KVCache
from .masks import AttnMask
from .position import apply_rotary
from .dropout import make_dropout


def attend(q_BHLD: torch.Tensor, k_BGMD: torch.Tensor, v_BGMD: torch.Tensor, mask: AttnMask,
           return_probs: bool = False, dropout_p: float = 0.0, scale: float | None = None,
           softcap: float | None = None):
    """softmax(q k^T x scale + bias, masked) v, scale = 1/sqrt(D) unless given; with ``softcap`` c the scores
    become c * tanh(scores / c) before the bias and mask (Gemma 2). Returns (out_BHLD, probs_BHLM or None)."""
    B, H, L, D = q_BHLD.shape
    G, M = k_BGMD.shape[1], k_BGMD.shape[2]
    # SDPA computes softmax(q.k * scale + mask): the cap is a function of each score itself, which no additive
    # mask can express, so capped attention takes the explicit path (the same arithmetic, spelled out).
    explicit = return_probs or softcap is not None
    if G != H and L == 1 and mask.bias_1HLM is None and not explicit:
        return _attend_one_query_gqa(q_BHLD, k_BGMD, v_BGMD, mask, dropout_p, scale), None
    if G != H:                                    # each key/value head serves H // G query heads
        k_BHMD = k_BGMD.repeat_interleave(H // G, dim=1)
        v_BHMD = v_BGMD.repeat_interleave(H // G, dim=1)
    else:
        k_BHMD, v_BHMD = k_BGMD, v_BGMD
    if explicit:
        scores_BHLM = torch.einsum("BHLD,BHMD->BHLM", q_BHLD, k_BHMD)
        scores_BHLM = scores_BHLM / math.sqrt(D) if scale is None else scores_BHLM * scale
        if softcap is not None:
            scores_BHLM = softcap * torch.tanh(scores_BHLM / softcap)
        if mask.bias_1HLM is not None:
            scores_BHLM = scores_BHLM + mask.bias_1HLM
        allowed_B1LM = mask.dense_allowed(L, M, q_BHLD.device)
        if allowed_B1LM is not None:
            scores_BHLM = scores_BHLM.masked_fill(~allowed_B1LM, float("-inf"))
        probs_BHLM = scores_BHLM.softmax(dim=-1)
        if mask.live_B1L1 is not None:
            probs_BHLM = probs_BHLM * mask.live_B1L1
        dropped_BHLM = F.dropout(probs_BHLM, dropout_p) if dropout_p > 0 else probs_BHLM
        out_BHLD = torch.einsum("BHLM,BHMD->BHLD", dropped_BHLM, v_BHMD)
        return out_BHLD, (probs_BHLM if return_probs else None)
    if mask.bias_1HLM is not None:                # SDPA takes an additive float mask for ALiBi
        allowed_B1LM = mask.dense_allowed(L, M, q_BHLD.device)
        sdpa_mask = mask.bias_1HLM if allowed_B1LM is None else \
            mask.bias_1HLM.masked_fill(~allowed_B1LM, float("-inf"))
        is_causal = False
    else:
        sdpa_mask, is_causal = mask.allowed_B1LM, mask.is_causal
    out_BHLD = F.scaled_dot_product_attention(q_BHLD, k_BHMD, v_BHMD, attn_mask=sdpa_mask,
                                              dropout_p=dropout_p, is_causal=is_causal, scale=scale)
    if mask.live_B1L1 is not None:
        out_BHLD = out_BHLD * mask.live_B1L1
    return out_BHLD, None


def _attend_one_query_gqa(q_BHLD, k_BGMD, v_BGMD, mask: AttnMask, dropout_p: float,
                          scale: float | None = None) -> torch.Tensor:
    """A decode step (L = 1) under GQA, without copying the cache H/G times: the H/G query heads that share
    a key/value head become H/G query rows (R) against that head's keys. The one query is the last
    position, so causality allows every key; only a window or padding mask (B or 1, 1, 1, M) applies,
    and it broadcasts over the rows."""
    B, H, _, D = q_BHLD.shape
    G = k_BGMD.shape[1]
    q_BGRD = q_BHLD.reshape(B, G, H // G, D)
    out_BGRD = F.scaled_dot_product_attention(q_BGRD, k_BGMD, v_BGMD, attn_mask=mask.allowed_B1LM,
                                              dropout_p=dropout_p, scale=scale)
    out_BHLD = out_BGRD.reshape(B, H, 1, D)
    return out_BHLD * mask.live_B1L1 if mask.live_B1L1 is not None else out_BHLD


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, bias: bool = True, dropout: float = 0.0,
                 head_dim: int | None = None, qkv_bias: bool | None = None,
                 qk_norm: Callable[[int], nn.Module] | None = None, scale: float | None = None,
                 softcap: float | None = None):
        """head_dim: D (default d_model // n_heads); qkv_bias: biases on wq/wkv (default ``bias``, which
        then covers wo alone when they differ, as in Qwen2); qk_norm: makes the norm (of width D) applied to
        each head's queries and keys before RoPE (Qwen3, Gemma 3), None for none; scale, softcap: ``attend``'s."""
        super().__init__()
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_dim = head_dim or d_model // n_heads
        qkv_bias = bias if qkv_bias is None else qkv_bias
        self.wq = nn.Linear(d_model, n_heads * self.head_dim, bias=qkv_bias)
        self.wkv = nn.Linear(d_model, 2 * n_kv_heads * self.head_dim, bias=qkv_bias)   # keys and values fused
        self.wo = nn.Linear(n_heads * self.head_dim, d_model, bias=bias)
        self.q_norm = qk_norm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = qk_norm(self.head_dim) if qk_norm else nn.Identity()
        self.dropout, self.scale, self.softcap = dropout, scale, softcap
        self.resid_drop = make_dropout(dropout)

    def project_kv(self, source_BMC: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of a source sequence: (k_BGMD, v_BGMD)."""
        B, M, _ = source_BMC.shape
        kv_BM2GD = self.wkv(source_BMC).view(B, M, 2, self.n_kv_heads, self.head_dim)
        k_BGMD, v_BGMD = kv_BM2GD.permute(2, 0, 3, 1, 4).unbind(0)
        return self.k_norm(k_BGMD), v_BGMD

    def forward(self, x_BLC: torch.Tensor, mask: AttnMask, rope=None, cache: KVCache | None = None,
                return_probs: bool = False, kv: tuple[torch.Tensor, torch.Tensor] | None = None):
        """Self-attention over x, or cross-attention onto precomputed ``kv`` (from ``project_kv``).
        Returns (out_BLC, probs_BHLM or None).

        ``rope`` is (cos_B1LD, sin_B1LD) for the query positions, or None when positions are not rotary.
        """
        B, L, _ = x_BLC.shape
        H, D = self.n_heads, self.head_dim
        q_BHLD = self.q_norm(self.wq(x_BLC).view(B, L, H, D)).transpose(1, 2)
        if kv is not None:                   # cross-attention: keys/values precomputed, never rotated or cached
            k_BGMD, v_BGMD = kv
        else:
            k_BGMD, v_BGMD = self.project_kv(x_BLC)
            if rope is not None:
                cos_B1LD, sin_B1LD = rope
                q_BHLD = apply_rotary(q_BHLD, cos_B1LD, sin_B1LD)
                k_BGMD = apply_rotary(k_BGMD, cos_B1LD, sin_B1LD)
            if cache is not None:
                k_BGMD, v_BGMD = cache.append(k_BGMD, v_BGMD)
        p = self.dropout if self.training else 0.0
        out_BHLD, probs_BHLM = attend(q_BHLD, k_BGMD, v_BGMD, mask, return_probs, p, self.scale, self.softcap)
        out_BLC = self.wo(out_BHLD.transpose(1, 2).reshape(B, L, H * D))
        return self.resid_drop(out_BLC), probs_BHLM
