"""What a model returns when called on token ids.

Legend: B batch, L length, M key length, S source length, C d_model, H heads, V vocab.
"""

from dataclasses import dataclass

import torch


@dataclass
class ModelOutput:
    logits: torch.Tensor | None                          # logits_BLV (L = 1 with last_only=True)
    loss: torch.Tensor | None = None                     # mean cross-entropy over labelled positions
    attentions: tuple[torch.Tensor, ...] | None = None   # one probs_BHLM per layer, when asked
    hidden: torch.Tensor | None = None                   # final hidden states h_BLC (after the final norm)
    cross_attentions: tuple[torch.Tensor, ...] | None = None     # encoder-decoder: probs_BHLS per layer
    encoder_attentions: tuple[torch.Tensor, ...] | None = None   # encoder-decoder: probs_BHSS per layer
    start_logits: torch.Tensor | None = None             # extractive QA: start_BL, a score per token
    end_logits: torch.Tensor | None = None               # extractive QA: end_BL
