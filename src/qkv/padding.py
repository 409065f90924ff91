"""Rows of token ids of different lengths as one batch: padded on the left or on the right.

Legend: B rows, L the longest row (or the length asked for).

    left  (decoders: every row's next token lands in the last column)    right (encoders, seq2seq, labels)
        . . a a a                                                            a a a . .
        b b b b b                                                            b b b b b
        . . . . c                                                            c . . . .

``key_mask_BL`` is True on real tokens. Decoders count positions over real tokens only, so a left-padded
row computes what it would alone (``qkv.generate``, the server's prefill); encoders count from 0 in every
row, which right padding keeps.
"""

from __future__ import annotations

from typing import Sequence

import torch


def pad_left(rows: Sequence[Sequence[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids_BL, key_mask_BL): each row right-aligned after ``pad_id``s."""
    B, L = len(rows), max((len(r) for r in rows), default=0)
    ids_BL = torch.full((B, L), pad_id, dtype=torch.long)
    key_mask_BL = torch.zeros(B, L, dtype=torch.bool)
    for b, r in enumerate(rows):
        ids_BL[b, L - len(r):] = torch.as_tensor(r, dtype=torch.long)
        key_mask_BL[b, L - len(r):] = True
    return ids_BL.to(device), key_mask_BL.to(device)


def pad_right(rows: Sequence[Sequence[int]], pad_id: int, length: int | None = None,
              device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids_BL, key_mask_BL): each row first, then ``pad_id``s up to ``length`` (default: the longest row)."""
    B = len(rows)
    L = max((len(r) for r in rows), default=0) if length is None else length
    ids_BL = torch.full((B, L), pad_id, dtype=torch.long)
    key_mask_BL = torch.zeros(B, L, dtype=torch.bool)
    for b, r in enumerate(rows):
        ids_BL[b, :len(r)] = torch.as_tensor(r, dtype=torch.long)
        key_mask_BL[b, :len(r)] = True
    return ids_BL.to(device), key_mask_BL.to(device)
