"""Where a token is: four position schemes behind one set of hooks.

Legend: B batch (or 1 when every row shares positions), L query length, M key length, H heads,
C channels, D head dim, P positions of a table (max_len rows).

A scheme may act at three points, and each class implements the hooks it needs (the rest return None):
    embed(pos_BL)   -> add_BLC      added to token embeddings     learned, sinusoidal
    rotary(pos_BL)  -> (cos, sin)   rotate q and k per position   RoPE
    bias(L, M)      -> bias_1HLM    added to attention scores     ALiBi

Sinusoidal (Vaswani et al., 2017, sec. 3.5):  PE(p, 2i) = sin(p / N^(2i/C)),  PE(p, 2i+1) = cos(p / N^(2i/C)),
  with N = ``pos_base`` (10000 in the paper).
RoPE (Su et al., 2021): rotate each pair of channels of q and k by angle p * N^(-2i/D); q.k then depends
  only on the offset between the two positions. We pair channel i with i + D/2 (the GPT-NeoX / LLaMA layout).
ALiBi (Press et al., 2022): score(l, m) -= slope_h * |l - m|, with geometric per-head slopes.
"""

import math

import torch
from torch import nn


class Position(nn.Module):
    """No-op hooks; subclasses override the one(s) they use."""

    def embed(self, pos_BL: torch.Tensor) -> torch.Tensor | None:
        return None

    def rotary(self, pos_BL: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        return None

    def bias(self, L: int, M: int) -> torch.Tensor | None:
        return None


class LearnedPosition(Position):
    def __init__(self, max_len: int, d_model: int, **_):
        super().__init__()
        self.table = nn.Embedding(max_len, d_model)

    def embed(self, pos_BL):
        return self.table(pos_BL)


def _shapes_only() -> bool:
    """True while a loader builds the model on the meta device to assign its weights: the tables get their
    shape and no values (computing on meta runs torch's Python meta kernels, whose first call imports
    torch._dynamo, 1.5 s), and the loader's ``rebuild_buffers()`` computes them for real."""
    return torch.get_default_device().type == "meta"


def sinusoidal_table(max_len: int, d_model: int, base: float = 10000.0) -> torch.Tensor:
    """The paper's table, shape (max_len, d_model): even channels sine, odd channels cosine.

    >>> sinusoidal_table(2, 4)[1]        # p = 1: sin(1), cos(1), sin(1/100), cos(1/100)
    tensor([0.8415, 0.5403, 0.0100, 0.9999])
    """
    if _shapes_only():
        return torch.empty(max_len, d_model)
    pos_P1 = torch.arange(max_len, dtype=torch.float64)[:, None]
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)
    angle_PC2 = pos_P1 / base ** (two_i / d_model)
    table = torch.empty(max_len, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle_PC2)
    table[:, 1::2] = torch.cos(angle_PC2)
    return table.float()


class SinusoidalPosition(Position):
    def __init__(self, max_len: int, d_model: int, base: float = 10000.0, **_):
        super().__init__()
        self.register_buffer("table", sinusoidal_table(max_len, d_model, base), persistent=False)

    def embed(self, pos_BL):
        return self.table[pos_BL]


class RoPE(Position):
    def __init__(self, max_len: int, head_dim: int, base: float = 10000.0, **_):
        super().__init__()
        if _shapes_only():
            cos_PD = sin_PD = torch.empty(max_len, head_dim)
        else:
            inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
            angle_PD = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq).repeat(1, 2)
            cos_PD, sin_PD = angle_PD.cos().float(), angle_PD.sin().float()
        self.register_buffer("cos_PD", cos_PD, persistent=False)
        self.register_buffer("sin_PD", sin_PD, persistent=False)

    def rotary(self, pos_BL):
        return self.cos_PD[pos_BL][:, None], self.sin_PD[pos_BL][:, None]     # each B1LD


def apply_rotary(x_BHLD: torch.Tensor, cos_B1LD: torch.Tensor, sin_B1LD: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (i, i + D/2) by the per-position angle."""
    half = x_BHLD.shape[-1] // 2
    rotated_BHLD = torch.cat([-x_BHLD[..., half:], x_BHLD[..., :half]], dim=-1)
    return x_BHLD * cos_B1LD + rotated_BHLD * sin_B1LD


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """Geometric slopes 2^(-8/n), 2^(-16/n), ...; for n not a power of two, the paper's interleaving."""
    def power_of_two(n):
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]
    if math.log2(n_heads).is_integer():
        return torch.tensor(power_of_two(n_heads))
    closest = 2 ** math.floor(math.log2(n_heads))
    extra = power_of_two(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(power_of_two(closest) + extra)


class ALiBi(Position):
    def __init__(self, max_len: int, n_heads: int, **_):
        super().__init__()
        self.register_buffer("slopes_H11", alibi_slopes(n_heads)[:, None, None], persistent=False)

    def bias(self, L, M):
        # Queries are the last L of M positions (KV cache); only the distance matters, so left padding
        # (which shifts whole rows) leaves the bias between real tokens unchanged.
        q_pos_L = torch.arange(M - L, M, device=self.slopes_H11.device)
        k_pos_M = torch.arange(M, device=self.slopes_H11.device)
        distance_LM = (q_pos_L[:, None] - k_pos_M[None, :]).abs()
        return (-self.slopes_H11 * distance_LM)[None]                          # 1HLM


POSITIONS = {"learned": LearnedPosition, "sinusoidal": SinusoidalPosition, "rope": RoPE, "alibi": ALiBi}


def make_position(cfg, base: float | None = None) -> Position:
    """The one place a position name becomes a module (``base``: another than ``cfg.pos_base``, as the
    windowed layers of Gemma 3 use)."""
    return POSITIONS[cfg.pos](max_len=cfg.max_len, d_model=cfg.d_model, head_dim=cfg.head_dim,
                              n_heads=cfg.n_heads, base=cfg.pos_base if base is None else base)
