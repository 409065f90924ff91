"""Recurrent language models, the baselines attention is argued against: an LSTM and a plain tanh RNN.

Legend: B batch, L length, C hidden width (= embedding width), V vocab.

    ids_BL ─> token embedding ─> n_layers x recurrent cell, left to right ─> head ─> logits_BLV

    tanh RNN (Elman, 1990):   h_t = tanh(W_ih x_t + W_hh h_{t-1} + b)
    LSTM (Hochreiter & Schmidhuber, 1997; forget gate: Gers et al., 2000):
        i, f, g, o = sigmoid/sigmoid/tanh/sigmoid(W_ih x_t + W_hh h_{t-1} + b)
        c_t = f * c_{t-1} + i * g;   h_t = o * tanh(c_t)

Everything token t learns about token t - d has to pass through d applications of the cell. In the tanh
RNN the gradient is multiplied by W_hh (and tanh' <= 1) at every step, so it shrinks (or blows up)
geometrically with d; the LSTM's additive cell path c_t = f * c_{t-1} + ... lets it survive while the forget
gate stays near 1. Attention reaches t - d in one step, whatever d is. ``qkv experiment long-range`` measures
both. The cells are PyTorch's own (``torch.nn.LSTM`` / ``torch.nn.RNN``); this file only wires them up.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from ..validation import check_fields
from .output import ModelOutput

CELLS = {"lstm": nn.LSTM, "rnn": partial(nn.RNN, nonlinearity="tanh")}


@dataclass(frozen=True)
class RNNConfig:
    vocab_size: int                         # V
    d_model: int = 128                      # C: embedding and hidden width
    n_layers: int = 1
    cell: Literal["lstm", "rnn"] = "lstm"

    def __post_init__(self):
        check_fields(self, {"vocab_size": "[1, inf)", "d_model": "[1, inf)", "n_layers": "[1, inf)"})


class RecurrentLM(nn.Module):
    """Embedding, a stack of LSTM or tanh-RNN layers, and an untied output head."""
    model_type = "qkv-rnn"

    def __init__(self, cfg: RNNConfig):
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.rnn = CELLS[cfg.cell](cfg.d_model, cfg.d_model, cfg.n_layers, batch_first=True)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size)
        if cfg.cell == "lstm":                 # forget gate open at the start (Jozefowicz et al., 2015):
            C = cfg.d_model                    # the cell remembers until it learns to forget
            with torch.no_grad():
                for name, p in self.rnn.named_parameters():
                    if name.startswith("bias_"):          # gates i, f, g, o; bias_ih + bias_hh = 1 on f
                        p[C:2 * C] = 1.0 if name.startswith("bias_ih") else 0.0

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, ids_BL: torch.Tensor, targets_BL: torch.Tensor | None = None) -> ModelOutput:
        """Logits at every position and, with ``targets_BL`` (-100 where unscored), the mean cross-entropy."""
        h_BLC, _ = self.rnn(self.tok(ids_BL))
        logits_BLV = self.head(h_BLC)
        loss = None
        if targets_BL is not None:
            loss = F.cross_entropy(logits_BLV.flatten(0, 1), targets_BL.flatten(), ignore_index=-100)
        return ModelOutput(logits=logits_BLV, loss=loss, hidden=h_BLC)
