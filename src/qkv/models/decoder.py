"""GPT: a decoder-only transformer language model (Radford et al., 2018/2019).

Legend: B batch, L query length, M key length, C d_model, V vocab, H heads.

    ids_BL ─> Stack (embeddings, n_layers x Block with a causal mask, final norm) ─> h_BLC
           ─> head (tied to the token embedding) ─> logits_BLV   (─> c * tanh(logits / c): ``logit_softcap``)

With ``caches`` (one ``KVCache`` per layer) a call processes only the new tokens: the first call is the
prefill, each later call a decode step of L = 1 over M cached positions.
Left-padded batches pass ``key_mask_BM`` (True for real tokens); positions then count real tokens only,
so each row computes exactly what it would alone.
"""

import torch
from torch import nn
from torch.nn import functional as F

from ..config import ModelConfig
from ..family import Family
from ..nn.kv_cache import KVCache
from ..nn.masks import build_mask
from .output import ModelOutput
from .stack import Stack


class GPT(Stack):
    """A causal ``Stack`` with a language-model head (tied to the token embedding by default)."""
    model_type = "qkv-gpt"
    family = Family.DECODER

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.tok.weight
        self.init_weights()

    def logits(self, h_BLC: torch.Tensor) -> torch.Tensor:
        """The head over final hidden states, soft-capped when ``cfg.logit_softcap`` is set (Gemma 2): the
        logits then lie smoothly within (-c, c)."""
        logits_BLV = self.head(h_BLC)
        cap = self.cfg.logit_softcap
        return logits_BLV if cap is None else cap * torch.tanh(logits_BLV / cap)

    def forward(self, ids_BL: torch.Tensor, targets_BL: torch.Tensor | None = None,
                caches: list[KVCache] | None = None, key_mask_BM: torch.Tensor | None = None,
                prefix_len: int | torch.Tensor = 0, return_attentions: bool = False,
                last_only: bool = False, label_smoothing: float = 0.0) -> ModelOutput:
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
        x_BLC = self.embed(ids_BL, pos_BL)
        cfg, bias_1HLM = self.cfg, self.pos.bias(L, M)
        # Under global_every some layers see every key (mask) and the others the window (local_mask).
        mask = build_mask(L, M, cfg.mask, None if cfg.global_every else cfg.window, prefix_len, key_mask_BM,
                          bias_1HLM, ids_BL.device)
        local_mask = build_mask(L, M, cfg.mask, cfg.window, prefix_len, key_mask_BM, bias_1HLM, ids_BL.device) \
            if cfg.global_every else None
        h_BLC, attentions, _ = self.run(x_BLC, mask, pos_BL, caches, return_attentions, local_mask=local_mask)
        if last_only:
            h_BLC = h_BLC[:, -1:]
        logits_BLV = self.logits(h_BLC)
        loss = None
        if targets_BL is not None:
            loss = F.cross_entropy(logits_BLV.flatten(0, 1), targets_BL.flatten(), ignore_index=-100,
                                   label_smoothing=label_smoothing)
        return ModelOutput(logits=logits_BLV, loss=loss,
                           attentions=tuple(attentions) if return_attentions else None, hidden=h_BLC)
