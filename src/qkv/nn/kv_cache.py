"""A preallocated key/value cache for one attention layer (the gpt-fast idea, eager-friendly).

Legend: B batch, G key/value heads, M cache length (filled prefix), D head dim, L new positions.

Decoding one token at a time recomputes nothing: each step appends its keys and values and attends over
the filled prefix. Buffers are allocated once for ``max_len`` positions, so the loop never reallocates.

The buffers may hold a narrower dtype than the model computes in (``dtype=torch.float16`` under a float32
model: ``qkv generate --kv-cache float16``): half the bytes a decode step reads at long contexts, where the
cache outweighs the weights. Keys and values are rounded once, when written; ``append`` hands them back in
the dtype they came in, so attention computes as before on the rounded values (and a row's tokens stay the
same alone or in a batch: every row's keys are rounded alike).
"""

import torch

from ..errors import InputError

# `--kv-cache-dtype` (generate, chat, serve, bench decode): what a loaded decoder's caches store
CACHE_DTYPES = {"float32": torch.float32, "float16": torch.float16}


class KVCache:
    def __init__(self, batch: int, n_kv_heads: int, max_len: int, head_dim: int,
                 dtype=torch.float32, device=None):
        shape = (batch, n_kv_heads, max_len, head_dim)
        self.k_BGMD = torch.zeros(shape, dtype=dtype, device=device)
        self.v_BGMD = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.k_BGMD.shape[2]

    def append(self, k_BGLD: torch.Tensor, v_BGLD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write L new positions after the filled prefix; return views of everything filled so far."""
        L = k_BGLD.shape[2]
        end = self.length + L
        if end > self.max_len:
            raise InputError(f"KV cache overflow: {self.length} cached + {L} new positions > max_len "
                             f"{self.max_len}; create the caches with a larger max_len")
        self.k_BGMD[:, :, self.length:end] = k_BGLD
        self.v_BGMD[:, :, self.length:end] = v_BGLD
        self.length = end
        return self.k_BGMD[:, :, :end].to(k_BGLD.dtype), self.v_BGMD[:, :, :end].to(v_BGLD.dtype)

    def reorder(self, index_B: torch.Tensor) -> None:
        """Keep row ``index_B[b]`` as row b (beam search: each surviving beam takes its parent's past)."""
        end = self.length
        self.k_BGMD[:, :, :end] = self.k_BGMD[index_B, :, :end]
        self.v_BGMD[:, :, :end] = self.v_BGMD[index_B, :, :end]

    def select(self, index_B: torch.Tensor) -> None:
        """Keep only rows ``index_B`` (a search drops the rows of finished sources)."""
        self.k_BGMD, self.v_BGMD = self.k_BGMD[index_B], self.v_BGMD[index_B]

    def reset(self) -> None:
        self.length = 0

    def truncate(self, length: int) -> None:
        """Forget every position from ``length`` on (a chat keeps the prefix two turns share)."""
        if not 0 <= length <= self.length:
            raise InputError(f"cannot truncate a cache of {self.length} positions to {length}")
        self.length = length
