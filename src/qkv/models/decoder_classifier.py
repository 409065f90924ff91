"""Sequence classification with a decoder: the last real token's state through a linear layer, as
transformers' ``LlamaForSequenceClassification`` (and every ``*ForSequenceClassification`` of a causal LM)
does (Radford et al., 2018, sec. 3.3: the last token's state feeds the classifier).

Legend: B batch, L length, M key length (= L: no cache), C d_model, K labels.

    ids_BL ─> GPT's trunk (causal) ─> h_BLC ─> score (C -> K, no bias) ─> logits_BLK ─> at each row's last
    real token ─> logits_BK

In a causal model only the last token has seen the whole text, so it is the one pooled. Rows are padded on
the right (``key_mask_BL`` True on real tokens), so the last real token is at key_mask_BL.sum() - 1, where
transformers finds the last position that is not ``pad_token_id``: the same token while the pad id does not
occur inside a text. Every position is scored and one is picked, as transformers does (K is small).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..config import ModelConfig
from ..errors import CheckpointError, ConfigError
from ..family import Family
from .decoder import GPT
from .output import ModelOutput


class GPTClassifier(GPT):
    """A decoder whose head predicts one of ``labels`` from the last real token (logits_BK)."""
    model_type = "qkv-gpt-classify"
    family = Family.FINETUNED_DECODER

    def __init__(self, cfg: ModelConfig, labels: Sequence[str]):
        labels = list(labels)
        if len(labels) < 2 or len(set(labels)) != len(labels) or not all(isinstance(x, str) for x in labels):
            raise ConfigError(f"GPTClassifier needs at least 2 distinct string labels, got {labels!r}")
        super().__init__(cfg)
        self.head = nn.Linear(cfg.d_model, len(labels), bias=False)     # transformers' "score"
        nn.init.normal_(self.head.weight, std=0.02)
        self.labels = labels

    @classmethod
    def from_decoder(cls, decoder: GPT, labels: Sequence[str]) -> "GPTClassifier":
        """A classifier with ``decoder``'s trunk weights (its LM head dropped) and a new head."""
        model = cls(decoder.cfg, labels)
        trunk = {k: v for k, v in decoder.state_dict().items() if not k.startswith("head.")}
        model.load_state_dict(trunk, strict=False)
        model.tokenizer = getattr(decoder, "tokenizer", None)
        return model

    def extra_config(self) -> dict:
        return {"labels": self.labels}

    @classmethod
    def from_config(cls, cfg: ModelConfig, config: dict):
        try:
            return cls(cfg, config.get("labels"))
        except (ConfigError, TypeError) as e:
            raise CheckpointError(f"config.json of a {cls.model_type} checkpoint needs its 'labels' list ({e}); "
                                  f"re-save the model") from None

    def forward(self, ids_BL: torch.Tensor, labels: torch.Tensor | None = None,
                key_mask_BL: torch.Tensor | None = None, types_BL: torch.Tensor | None = None) -> ModelOutput:
        """logits_BK at each row's last real token; with labels_B, the mean cross-entropy. ``types_BL`` (the
        encoder batches' segment ids) has no meaning for a decoder and is ignored."""
        out = super().forward(ids_BL, key_mask_BM=key_mask_BL)
        B, L = ids_BL.shape
        last_B = key_mask_BL.long().sum(-1) - 1 if key_mask_BL is not None else ids_BL.new_full((B,), L - 1)
        logits_BK = out.logits[torch.arange(B, device=ids_BL.device), last_B]
        loss = F.cross_entropy(logits_BK.float(), labels.long()) if labels is not None else None
        return ModelOutput(logits=logits_BK, loss=loss, hidden=out.hidden)
