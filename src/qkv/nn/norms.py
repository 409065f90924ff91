"""Normalization: LayerNorm (Ba et al., 2016) and RMSNorm (Zhang & Sennrich, 2019).

Legend: B batch, L length, C channels (d_model).

LayerNorm: y = (x - mean) / sqrt(var + eps) * g + b
RMSNorm:   y = x / sqrt(mean(x^2) + eps) * (offset + g)   (no centering, no bias: cheaper, same quality)

The offset is 0 except in Gemma, whose checkpoints store g - 1 (a zero weight is the identity) and scale by
(1 + g): keeping their parametrization keeps the state dict equal to theirs (and their weight decay's meaning).
"""

import torch
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6, offset: float = 0.0):
        super().__init__()
        self.eps, self.offset = eps, offset
        self.weight = nn.Parameter(torch.full((dim,), 1.0 - offset))     # the identity either way

    def forward(self, x_BLC: torch.Tensor) -> torch.Tensor:
        # F.rms_norm is one fused kernel; it computes in float32 for half inputs, as the formula needs.
        scale_C = self.weight + self.offset if self.offset else self.weight
        return nn.functional.rms_norm(x_BLC, (x_BLC.shape[-1],), scale_C, self.eps)


NORMS = {"layernorm": nn.LayerNorm, "rmsnorm": RMSNorm}   # the one place a norm name becomes a module


def make_norm(kind: str, dim: int, eps: float, offset: float = 0.0) -> nn.Module:
    return NORMS[kind](dim, eps=eps, offset=offset) if offset else NORMS[kind](dim, eps=eps)
