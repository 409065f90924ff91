"""Which keys each query may see: the attention graph as composable boolean masks.

Legend: B batch, H heads, L query length, M key length, 1 a kept singleton dimension.
Polarity: ``allowed`` is True where a query may attend (the same as SDPA's boolean mask).
Queries are always the last L of the M key positions, so with a KV cache the causal diagonal is
lower-right aligned: query l sits at position M - L + l.

    causal          bidirectional      prefix (2)         causal, window 2
    1 . . .         1 1 1 1            1 1 . .            1 . . .
    1 1 . .         1 1 1 1            1 1 . .            1 1 . .
    1 1 1 .         1 1 1 1            1 1 1 .            . 1 1 .
    1 1 1 1         1 1 1 1            1 1 1 1            . . 1 1
"""

from dataclasses import dataclass

import torch


def allowed_mask(L: int, M: int, kind: str, window: int | None = None,
                 prefix_len: int | torch.Tensor = 0, device=None) -> torch.Tensor:
    """Return allowed_LM (or allowed_BLM when prefix_len is a per-row tensor of shape (B,))."""
    q_pos_L = torch.arange(M - L, M, device=device)
    k_pos_M = torch.arange(M, device=device)
    offset_LM = q_pos_L[:, None] - k_pos_M[None, :]            # > 0: the key lies in the past
    if kind == "bidirectional":
        allowed_LM = torch.ones(L, M, dtype=torch.bool, device=device)
    else:
        allowed_LM = offset_LM >= 0                             # causal
    if kind == "prefix":
        prefix_B11 = torch.as_tensor(prefix_len, device=device).reshape(-1, 1, 1)
        allowed_BLM = allowed_LM | (k_pos_M[None, None, :] < prefix_B11)     # prefix keys seen by all
    else:
        allowed_BLM = allowed_LM[None]
    if window is not None:
        allowed_BLM = allowed_BLM & (offset_LM.abs() < window)
    return allowed_BLM[0] if allowed_BLM.shape[0] == 1 else allowed_BLM


@dataclass
class AttnMask:
    """Everything attention needs to know about the graph, built once per forward and shared by layers.

    allowed_B1LM: boolean mask, or None when every key is allowed (or when ``is_causal`` says the mask is
                  the plain square causal one, which SDPA applies itself without materializing it).
    bias_1HLM:    additive score bias (ALiBi), or None.
    live_B1L1:    False for queries that may see no key at all (e.g. a left pad under a causal mask);
                  their output and probabilities are zeroed instead of becoming NaN. None: every row is live.
    """
    allowed_B1LM: torch.Tensor | None = None
    is_causal: bool = False
    bias_1HLM: torch.Tensor | None = None
    live_B1L1: torch.Tensor | None = None

    def dense_allowed(self, L: int, M: int, device) -> torch.Tensor | None:
        if self.is_causal:
            return allowed_mask(L, M, "causal", device=device)[None, None]
        return self.allowed_B1LM


def build_mask(L: int, M: int, kind: str, window: int | None = None, prefix_len: int | torch.Tensor = 0,
               key_mask_BM: torch.Tensor | None = None, bias_1HLM: torch.Tensor | None = None,
               device=None) -> AttnMask:
    """Compose the structural mask with key padding (``key_mask_BM``: True for real tokens)."""
    plain_causal = kind == "causal" and window is None and key_mask_BM is None
    if plain_causal and L == M:
        return AttnMask(is_causal=True, bias_1HLM=bias_1HLM)
    if plain_causal and L == 1:                                  # one new token sees the whole cache
        return AttnMask(bias_1HLM=bias_1HLM)
    if kind == "bidirectional" and window is None and key_mask_BM is None:
        return AttnMask(bias_1HLM=bias_1HLM)
    allowed = allowed_mask(L, M, kind, window, prefix_len, device)
    allowed_B1LM = allowed.reshape(-1, 1, L, M)
    if key_mask_BM is not None:
        allowed_B1LM = allowed_B1LM & key_mask_BM.bool()[:, None, None, :]
    live_B1L1 = allowed_B1LM.any(dim=-1, keepdim=True)
    if bool(live_B1L1.all()):
        return AttnMask(allowed_B1LM=allowed_B1LM, bias_1HLM=bias_1HLM)
    # Let dead rows see everything (finite softmax), then zero them with live_B1L1.
    return AttnMask(allowed_B1LM=allowed_B1LM | ~live_B1L1, bias_1HLM=bias_1HLM, live_B1L1=live_B1L1)
