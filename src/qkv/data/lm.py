"""Language-model batches: random windows of a token stream (the nanoGPT recipe), resumable exactly.

Legend: B batch, L context length.

The stream is split once: the first (1 - val_fraction) of the tokens train, the rest validate. A training
batch is B windows at offsets drawn from a private ``torch.Generator``; saving its state saves the data
position, so a resumed run draws exactly the batches the uninterrupted run would have drawn. Validation
batches come from a generator re-seeded at every evaluation, so every evaluation scores the same windows.

Prefix LM (``prefix=True``; Raffel et al., 2020, sec. 3.2.3): each window gets a random split point p; the
first p tokens are visible to every position (bidirectional, ``mask="prefix"``) and only the tokens after
the prefix are predicted, so the loss covers targets from position p - 1 on.
"""

from __future__ import annotations

import torch

from ..errors import DataError


class LMStream:
    def __init__(self, ids: list[int] | torch.Tensor, context: int, val_fraction: float, seed: int,
                 prefix: bool = False):
        tokens = torch.as_tensor(ids, dtype=torch.long)
        n_val = int(len(tokens) * val_fraction)
        self.splits = {"train": tokens[: len(tokens) - n_val], "val": tokens[len(tokens) - n_val:]}
        self.context, self.prefix = context, prefix
        for name, split in self.splits.items():
            if len(split) < context + 1:
                raise DataError(f"the {name} split has {len(split)} tokens, shorter than one block of "
                                f"{context + 1}; use more text, a smaller --max-len, or another --val-fraction")
        self.generator = torch.Generator().manual_seed(seed)
        self.val_seed = seed + 1

    def batch(self, split: str, batch_size: int, generator: torch.Generator | None = None) -> dict:
        """GPT's keyword arguments: ids_BL and targets_BL (the inputs shifted left by one token), and for a
        prefix LM prefix_len (B,) with the targets inside the prefix set to -100 (no loss)."""
        g = generator or self.generator
        data = self.splits[split]
        L = self.context
        start_B = torch.randint(len(data) - L, (batch_size,), generator=g)
        window_BL = start_B[:, None] + torch.arange(L + 1)
        tokens_BL = data[window_BL]
        batch = {"ids_BL": tokens_BL[:, :-1], "targets_BL": tokens_BL[:, 1:]}
        if self.prefix:
            prefix_B = torch.randint(1, L, (batch_size,), generator=g)
            inside_BL = torch.arange(L)[None] < (prefix_B - 1)[:, None]
            batch["targets_BL"] = batch["targets_BL"].masked_fill(inside_BL, -100)
            batch["prefix_len"] = prefix_B
        return batch

    def val_batches(self, batch_size: int, n: int):
        g = torch.Generator().manual_seed(self.val_seed)
        return [self.batch("val", batch_size, g) for _ in range(n)]
