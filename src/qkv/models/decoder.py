"""GPT: a decoder-only transformer language model (Radford et al., 2018/2019).

Legend: B batch, L query length, M key length, C d_model, V vocab, H heads.

    ids_BL ─> token embedding (+ position embedding) ─> dropout
           ─> n_layers x Block(causal mask; RoPE/ALiBi hooks act inside attention)
           ─> final norm (pre-norm only) ─> head (tied to the token embedding) ─> logits_BLV

With ``caches`` (one ``KVCache`` per layer) a call processes only the new tokens: the first call is the
prefill, each later call a decode step of L = 1 over M cached positions.
Left-padded batches pass ``key_mask_BM`` (True for real tokens); positions then count real tokens only,
so each row computes exactly what it would alone.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..config import ModelConfig
from ..errors import ConfigError, InputError
from ..nn.block import Block
from ..nn.kv_cache import KVCache
from ..nn.masks import build_mask
from ..nn.norms import make_norm
from ..nn.position import make_position
from .output import ModelOutput


class GPT(nn.Module):
    model_type = "qkv-gpt"

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size is None:
            raise ConfigError("ModelConfig.vocab_size is None; set it to the tokenizer's vocab size")
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = make_position(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        # Pre-norm leaves the residual stream unnormalized, so a final norm precedes the head.
        self.norm_f = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps) if cfg.norm_placement == "pre" \
            else nn.Identity()
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.tok.weight
        self.apply(self._init_weights)
        # GPT-2: scale the projections that write into the residual stream by 1/sqrt(2 * n_layers).
        for name, p in self.named_parameters():
            if name.endswith(("attn.wo.weight", "mlp.down.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def new_caches(self, batch: int, max_len: int | None = None) -> list[KVCache]:
        """One preallocated cache per layer, on the model's device and dtype."""
        p = self.tok.weight
        return [KVCache(batch, self.cfg.kv_heads, max_len or self.cfg.max_len, self.cfg.head_dim,
                        dtype=p.dtype, device=p.device) for _ in self.blocks]

    def check_ids(self, ids_BL: torch.Tensor, start: int = 0) -> None:
        """Raise a clear error for ids outside the vocabulary or a sequence past the context."""
        if ids_BL.dtype not in (torch.long, torch.int, torch.int16, torch.uint8):
            raise InputError(f"token ids must be an integer tensor, got {ids_BL.dtype}")
        if ids_BL.numel() and (int(ids_BL.min()) < 0 or int(ids_BL.max()) >= self.cfg.vocab_size):
            raise InputError(f"token ids must lie in [0, {self.cfg.vocab_size}); got min {int(ids_BL.min())}"
                             f" max {int(ids_BL.max())}: encode text with this model's tokenizer")
        if start + ids_BL.shape[1] > self.cfg.max_len:
            raise InputError(f"sequence of {start + ids_BL.shape[1]} positions exceeds the model's context "
                             f"max_len={self.cfg.max_len}; shorten the input")

    def forward(self, ids_BL: torch.Tensor, targets_BL: torch.Tensor | None = None,
                caches: list[KVCache] | None = None, key_mask_BM: torch.Tensor | None = None,
                prefix_len: int | torch.Tensor = 0, return_attentions: bool = False,
                last_only: bool = False) -> ModelOutput:
        """Logits for every position (or only the last with ``last_only``), and the loss if targets are given.

        targets_BL: next-token labels, -100 where no loss is wanted.
        key_mask_BM: True for real tokens over all M key positions (cached + new), for left padding.
        """
        B, L = ids_BL.shape
        start = caches[0].length if caches else 0
        self.check_ids(ids_BL, start)
        M = start + L
        if key_mask_BM is not None:        # count real tokens only, so padding does not shift positions
            pos_BL = (key_mask_BM.long().cumsum(-1) - 1).clamp(min=0)[:, start:M]
        else:
            pos_BL = torch.arange(start, M, device=ids_BL.device)[None]
        x_BLC = self.tok(ids_BL)
        add_BLC = self.pos.embed(pos_BL)
        if add_BLC is not None:
            x_BLC = x_BLC + add_BLC
        x_BLC = self.drop(x_BLC)
        rope = self.pos.rotary(pos_BL)
        mask = build_mask(L, M, self.cfg.mask, self.cfg.window, prefix_len, key_mask_BM,
                          self.pos.bias(L, M), ids_BL.device)
        attentions = []
        for i, block in enumerate(self.blocks):
            x_BLC, probs_BHLM = block(x_BLC, mask, rope, caches[i] if caches else None, return_attentions)
            attentions.append(probs_BHLM)
        h_BLC = self.norm_f(x_BLC)
        if last_only:
            h_BLC = h_BLC[:, -1:]
        logits_BLV = self.head(h_BLC)
        loss = None
        if targets_BL is not None:
            loss = F.cross_entropy(logits_BLV.flatten(0, 1), targets_BL.flatten(), ignore_index=-100)
        return ModelOutput(logits=logits_BLV, loss=loss,
                           attentions=tuple(attentions) if return_attentions else None, hidden=h_BLC)
