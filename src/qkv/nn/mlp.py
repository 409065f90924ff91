"""Position-wise feed-forward network (Vaswani et al., 2017, eq. 2) and its gated variant.

Legend: B batch, L length, C channels (d_model), F hidden width.

    FFN(x)    = act(x W1 + b1) W2 + b2              act in {ReLU, GELU, GELU-tanh (GPT-2)}
    SwiGLU(x) = (SiLU(x W1) * (x W3)) W2            (Shazeer, 2020, "GLU Variants Improve Transformer")
    GeGLU(x)  = (GELU-tanh(x W1) * (x W3)) W2       (the same paper; Gemma)

W1 is ``gate``, W3 ``up``, W2 ``down`` in both gated variants.
"""

import torch
from torch import nn
from torch.nn import functional as F

from .dropout import make_dropout


class FFN(nn.Module):
    def __init__(self, d_model: int, d_ff: int, activation: nn.Module, bias: bool, dropout: float):
        super().__init__()
        self.up = nn.Linear(d_model, d_ff, bias=bias)
        self.act = activation
        self.down = nn.Linear(d_ff, d_model, bias=bias)
        self.drop = make_dropout(dropout)

    def forward(self, x_BLC: torch.Tensor) -> torch.Tensor:
        return self.drop(self.down(self.act(self.up(x_BLC))))


class GatedFFN(nn.Module):
    def __init__(self, d_model: int, d_ff: int, bias: bool, dropout: float, gate_act=F.silu):
        super().__init__()
        self.gate = nn.Linear(d_model, d_ff, bias=bias)
        self.up = nn.Linear(d_model, d_ff, bias=bias)
        self.down = nn.Linear(d_ff, d_model, bias=bias)
        self.drop = make_dropout(dropout)
        self.gate_act = gate_act

    def forward(self, x_BLC: torch.Tensor) -> torch.Tensor:
        return self.drop(self.down(self.gate_act(self.gate(x_BLC)) * self.up(x_BLC)))


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


# The one place an MLP name becomes a module.
MLPS = {
    "relu": lambda c, f, bias, p: FFN(c, f, nn.ReLU(), bias, p),
    "gelu": lambda c, f, bias, p: FFN(c, f, nn.GELU(), bias, p),
    "gelu_tanh": lambda c, f, bias, p: FFN(c, f, nn.GELU(approximate="tanh"), bias, p),
    "swiglu": GatedFFN,
    "geglu": lambda c, f, bias, p: GatedFFN(c, f, bias, p, _gelu_tanh),
}


def make_mlp(kind: str, d_model: int, d_ff: int, bias: bool, dropout: float) -> nn.Module:
    return MLPS[kind](d_model, d_ff, bias, dropout)
