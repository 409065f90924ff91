"""Normalization: LayerNorm (Ba et al., 2016) and RMSNorm (Zhang & Sennrich, 2019).

Legend: B batch, L length, C channels (d_model).

LayerNorm: y = (x - mean) / sqrt(var + eps) * g + b
RMSNorm:   y = x / sqrt(mean(x^2) + eps) * g          (no centering, no bias: cheaper, same quality)
"""

import torch
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x_BLC: torch.Tensor) -> torch.Tensor:
        # F.rms_norm is one fused kernel; it computes in float32 for half inputs, as the formula needs.
        return nn.functional.rms_norm(x_BLC, (x_BLC.shape[-1],), self.weight, self.eps)


NORMS = {"layernorm": nn.LayerNorm, "rmsnorm": RMSNorm}   # the one place a norm name becomes a module


def make_norm(kind: str, dim: int, eps: float) -> nn.Module:
    return NORMS[kind](dim, eps=eps)
