"""Position-wise feed-forward network (Vaswani et al., 2017, eq. 2) and its gated variant.

Legend: B batch, L length, C channels (d_model), F hidden width.

    FFN(x)    = act(x W1 + b1) W2 + b2              act in {ReLU, GELU, GELU-tanh (GPT-2)}
    SwiGLU(x) = (SiLU(x W1) * (x W3)) W2            (Shazeer, 2020, "GLU Variants Improve Transformer")
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


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, d_ff: int, bias: bool, dropout: float):
        super().__init__()
        self.gate = nn.Linear(d_model, d_ff, bias=bias)
        self.up = nn.Linear(d_model, d_ff, bias=bias)
        self.down = nn.Linear(d_ff, d_model, bias=bias)
        self.drop = make_dropout(dropout)

    def forward(self, x_BLC: torch.Tensor) -> torch.Tensor:
        return self.drop(self.down(F.silu(self.gate(x_BLC)) * self.up(x_BLC)))


# The one place an MLP name becomes a module.
MLPS = {
    "relu": lambda c, f, bias, p: FFN(c, f, nn.ReLU(), bias, p),
    "gelu": lambda c, f, bias, p: FFN(c, f, nn.GELU(), bias, p),
    "gelu_tanh": lambda c, f, bias, p: FFN(c, f, nn.GELU(approximate="tanh"), bias, p),
    "swiglu": SwiGLU,
}


def make_mlp(kind: str, d_model: int, d_ff: int, bias: bool, dropout: float) -> nn.Module:
    return MLPS[kind](d_model, d_ff, bias, dropout)
