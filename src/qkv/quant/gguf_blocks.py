"""GGUF's quantized blocks read as integer codes and per-group scales, never as a float matrix.

Legend: O rows (output features), I columns (input features), Q groups of 32 per row, U super-blocks per row
(Q4_K's 256 weights), b bytes per block.

ggml stores each row as consecutive blocks (the layouts are ggml's, documented in its ``ggml-common.h``):

    Q8_0  34 B / 32 weights   d (f16), q[32] (int8)                       w = d q
    Q4_0  18 B / 32 weights   d (f16), 16 bytes of nibbles                  w = d (q - 8)
    Q4_1  20 B / 32 weights   d, m (f16), 16 bytes of nibbles              w = d q + m
    Q4_K 144 B / 256 weights  d, dmin (f16), 12 bytes holding eight 6-bit (scale, min) pairs, 128 bytes
                              of nibbles; sub-block j of 32:                w = d sc_j q - dmin m_j

In the 32-weight blocks, byte i holds weight i in its low nibble and weight i + 16 in its high one. In
Q4_K, each 32 bytes hold two sub-blocks: 32 weights in the low nibbles, the next 32 in the high ones.
Every 4-bit format thus becomes ``(q - 8) * s + z`` with 32-wide groups: what ``Int4Linear`` computes.
The tests compare each reader against the ``gguf`` package's own dequantization.
"""

from __future__ import annotations

import numpy as np
import torch

BLOCK_BYTES = {"Q8_0": 34, "Q4_0": 18, "Q4_1": 20, "Q4_K": 144}
FOUR_BIT = ("Q4_0", "Q4_1", "Q4_K")


def _blocks(raw: np.ndarray, block_bytes: int) -> torch.Tensor:
    """(O, bytes per row) uint8 -> (O, blocks, b) uint8 tensor: a view of the file's private (writable) map
    when the rows are contiguous; a copy when they are not (un-permuted q/k rows) or the array is read-only
    (torch wants writable memory)."""
    rows = torch.from_numpy(np.ascontiguousarray(raw) if raw.flags.writeable else np.array(raw))
    return rows.view(rows.shape[0], -1, block_bytes)


def _f16(blocks_OQb: torch.Tensor, start: int) -> torch.Tensor:
    """The float16 at byte ``start`` of every block, as float32 (O, Q)."""
    return blocks_OQb[..., start:start + 2].contiguous().view(torch.float16)[..., 0].float()


def _nibbles(qs_OQx: torch.Tensor) -> torch.Tensor:
    """Bytes (..., n) -> codes (..., 2n): the low nibbles first, then the high ones."""
    return torch.cat([qs_OQx & 15, qs_OQx >> 4], dim=-1)       # uint8 codes


def q8_0(raw: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Q8_0 rows -> (q_OI int8, d_OQ float32): w[o, k] = q[o, k] * d[o, k // 32]."""
    blocks_OQb = _blocks(raw, 34)
    O = blocks_OQb.shape[0]
    return blocks_OQb[..., 2:].contiguous().view(torch.int8).reshape(O, -1), _f16(blocks_OQb, 0)


def four_bit(raw: np.ndarray, kind: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q4_0 / Q4_1 / Q4_K rows -> (codes_OI uint8 in [0, 15], scales_OQ, zeros_OQ), 32-wide groups, with
    w[o, k] = (codes - 8) * scales + zeros (zeros: the weight of code 8)."""
    blocks_OQb = _blocks(raw, BLOCK_BYTES[kind])
    O = blocks_OQb.shape[0]
    if kind == "Q4_K":
        return _q4_k(blocks_OQb)
    d_OQ = _f16(blocks_OQb, 0)
    start = 2 if kind == "Q4_0" else 4
    codes_OI = _nibbles(blocks_OQb[..., start:]).reshape(O, -1)
    mins_OQ = torch.zeros_like(d_OQ) if kind == "Q4_0" else _f16(blocks_OQb, 2)
    zeros_OQ = mins_OQ + 8 * d_OQ if kind == "Q4_1" else torch.zeros_like(d_OQ)
    return codes_OI, d_OQ, zeros_OQ


def _q4_k(blocks_OUb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q4_K super-blocks (U per row) -> codes and eight groups of 32 per super-block."""
    O, U, _ = blocks_OUb.shape
    d_OU1, dmin_OU1 = _f16(blocks_OUb, 0)[..., None], _f16(blocks_OUb, 2)[..., None]
    packed_OU12 = blocks_OUb[..., 4:16].to(torch.int32)
    # Sub-blocks 0-3 keep their 6-bit scale and min in the low bits of bytes 0-3 and 4-7; sub-blocks 4-7
    # combine a nibble of bytes 8-11 with the top two bits of bytes 0-3 (scales) and 4-7 (mins).
    lo, mid, hi = packed_OU12[..., 0:4], packed_OU12[..., 4:8], packed_OU12[..., 8:12]
    sc_OU8 = torch.cat([lo & 63, (hi & 15) | ((lo >> 6) << 4)], dim=-1).float()
    m_OU8 = torch.cat([mid & 63, (hi >> 4) | ((mid >> 6) << 4)], dim=-1).float()
    qs_OU4x32 = blocks_OUb[..., 16:].reshape(O, U, 4, 32)
    codes_OI = _nibbles(qs_OU4x32).reshape(O, -1)            # per 32 bytes: sub-block 2i, then 2i + 1
    scales_OU8 = d_OU1 * sc_OU8
    zeros_OU8 = 8 * scales_OU8 - dmin_OU1 * m_OU8
    return codes_OI, scales_OU8.reshape(O, -1), zeros_OU8.reshape(O, -1)


def dequantize_four_bit(codes_OI: torch.Tensor, scales_OQ: torch.Tensor, zeros_OQ: torch.Tensor) -> torch.Tensor:
    """The float weights the codes stand for (for tests and for requantizing tied embeddings)."""
    O, I = codes_OI.shape
    Q = scales_OQ.shape[1]
    w_OQk = codes_OI.float().view(O, Q, I // Q)       # in place from here: one float32 matrix, not four
    return w_OQk.sub_(8).mul_(scales_OQ[..., None]).add_(zeros_OQ[..., None]).view(O, I)
