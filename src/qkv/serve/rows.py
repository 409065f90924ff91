"""The KV cache of a running batch whose rows come and go (continuous batching).

Legend: B rows, G key/value heads, M columns in use, D head dim, V vocab, 1 a kept singleton dimension.

Every row's tokens sit RIGHT-aligned in the columns, so each decode step appends one column to all rows
at once, exactly as a left-padded batch does (``qkv.generate``):

    column:   0 1 2 3 4 5 6 7          key_mask_BM: True where a row has a real token
    row 0     . . . a a a a a          (5 tokens)
    row 1     b b b b b b b b          (8 tokens: M = the longest row)
    row 2     . . . . . . c c          (2 tokens, joined a moment ago)

A row's tokens stay contiguous, so column distances are token distances (ALiBi) and the model counts positions
over real tokens only (RoPE, learned): a row computes what it would alone. A new row is prefilled in its own
cache and copied in; a finished row is dropped. The buffers are rebuilt (and the all-padding columns on the left
dropped) only when rows join or leave or the columns run out. Requests that arrive together are prefilled
together, left-padded (as ``qkv.generate`` batches prompts): that cache already has this layout, so its rows are
copied in as they are.
"""

from __future__ import annotations

import torch

from ..nn.kv_cache import KVCache

HEADROOM = 64          # free columns allocated past the longest row, so most steps reallocate nothing


class BatchRows:
    def __init__(self, model):
        self.model = model
        self.max_len = model.cfg.max_len
        self.lengths: list[int] = []            # real tokens cached per row
        self.caches: list[KVCache] | None = None
        self.key_mask_BM: torch.Tensor | None = None
        self.M = 0

    def __len__(self) -> int:
        return len(self.lengths)

    def _rebuild(self, keep: list[int], extra: list[KVCache] | None = None, extra_rows: list[int] = (),
                 extra_lengths: list[int] = ()) -> None:
        """New buffers holding rows ``keep`` of the old ones, then rows ``extra_rows`` of ``extra`` (a
        prefilled batch whose row b holds ``extra_lengths[b]`` tokens right-aligned), all right-aligned to
        the longest row, with HEADROOM free columns (never past the model's context)."""
        sources = [(self.caches, b, self.M, self.lengths[b]) for b in keep]
        if extra is not None:
            sources += [(extra, b, extra[0].length, extra_lengths[b]) for b in extra_rows]
        if not sources:
            self.lengths, self.caches, self.key_mask_BM, self.M = [], None, None, 0
            return
        lengths = [n for *_, n in sources]
        M = max(lengths)
        capacity = min(self.max_len, M + HEADROOM)
        caches = self.model.new_caches(len(lengths), capacity)
        device = caches[0].k_BGMD.device
        key_mask_BM = torch.zeros(len(lengths), capacity, dtype=torch.bool, device=device)
        for row, (old, b, old_M, n) in enumerate(sources):
            key_mask_BM[row, M - n:] = True
            for new_cache, old_cache in zip(caches, old):
                new_cache.k_BGMD[row, :, M - n:M] = old_cache.k_BGMD[b, :, old_M - n:old_M]
                new_cache.v_BGMD[row, :, M - n:M] = old_cache.v_BGMD[b, :, old_M - n:old_M]
        for c in caches:
            c.length = M
        self.lengths, self.caches, self.key_mask_BM, self.M = lengths, caches, key_mask_BM, M

    def add(self, prefilled: list[KVCache], lengths: list[int], rows: list[int]) -> None:
        """Append rows ``rows`` of a prefilled (left-padded) batch whose row b holds ``lengths[b]`` tokens."""
        if rows:
            self._rebuild(list(range(len(self))), prefilled, rows, lengths)

    def keep(self, rows: list[int]) -> None:
        """Drop every row not in ``rows`` (in order)."""
        if rows != list(range(len(self))):
            self._rebuild(rows)

    def step(self, ids_B1: torch.Tensor) -> torch.Tensor:
        """One decode step: feed each row its next token; return logits_BV."""
        if self.M + 1 > self.caches[0].max_len:         # out of columns: compact and reallocate
            self._rebuild(list(range(len(self))))
        self.key_mask_BM[:, self.M] = True
        key_mask_BM = self.key_mask_BM[:, :self.M + 1]
        if min(self.lengths) == self.M:                  # no padding: the mask-free path, as a row alone takes
            key_mask_BM = None
        out = self.model(ids_B1, caches=self.caches, key_mask_BM=key_mask_BM, last_only=True)
        self.M += 1
        self.lengths = [n + 1 for n in self.lengths]
        return out.logits[:, -1]
