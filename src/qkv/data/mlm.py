"""Masked-language-model batches: BERT's pre-training inputs (Devlin et al., 2019, sec. 3.1 and appendix A.1).

Legend: B batch, L model positions (max_len; an example's content is L - 3 tokens).

The text is one token stream (line breaks remembered), split once like ``LMStream``'s: the first
(1 - val_fraction) trains, the rest validates. An example is a window of L - 3 consecutive tokens cut into
two consecutive chunks A and B (at a line break inside the window when there is one, else at a random
point) and wrapped as BERT reads a pair:

    [CLS] a1 a2 a3 [SEP] b1 b2 [SEP] [PAD] ..      types_BL    0 0 0 0 0 1 1 1 0 ..
                                                   key_mask_BL T T T T T T T T F ..

There is no next-sentence prediction: B always follows A (RoBERTa, Liu et al., 2019, found NSP does not
help), but the segment embeddings still learn the A/B split that fine-tuning on pairs uses. As in BERT,
10% of the examples are shorter than the window (a random length), so padding and short inputs are
seen in pre-training too.

Masking (``mask_tokens``): each non-special token is selected with probability 0.15; a selected token
becomes [MASK] 80% of the time, a random non-special token 10%, and stays itself 10%. The loss is only
on selected positions: ``labels`` holds the original id there and -100 everywhere else. [CLS], [SEP]
and [PAD] are never selected.

Every random draw comes from the private ``generator`` (whose state the trainer saves), so a resumed run
sees exactly the batches of the uninterrupted one; validation re-seeds its own generator every time.
"""

from __future__ import annotations

import torch

from ..errors import DataError

IGNORE_INDEX = -100
SHORT_PROB = 0.1                 # BERT: 10% of the inputs are shorter than the maximum length


def mask_tokens(ids_BL: torch.Tensor, maskable_BL: torch.Tensor, mask_id: int, random_ids: torch.Tensor,
                generator: torch.Generator, select_prob: float = 0.15, mask_prob: float = 0.8,
                random_prob: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs_BL, labels_BL): BERT's 80/10/10 corruption of ``select_prob`` of the maskable tokens.

    maskable_BL: True where a token may be selected (not a special token, not padding).
    random_ids: the ids a "random token" is drawn from (the vocabulary less its special tokens).
    Every row with a maskable token gets at least one selection, so no row is without a loss.

    >>> g = torch.Generator().manual_seed(0)
    >>> ids = torch.tensor([[2, 7, 8, 9, 3]]); ok = ids > 4
    >>> inputs, labels = mask_tokens(ids, ok, 4, torch.arange(5, 10), g, select_prob=0.5)
    >>> bool(((labels == -100) | (labels == ids)).all())
    True
    """
    B, L = ids_BL.shape
    selected_BL = (torch.rand(B, L, generator=generator) < select_prob) & maskable_BL
    empty_B = ~selected_BL.any(dim=1) & maskable_BL.any(dim=1)
    if empty_B.any():                          # pick one maskable position uniformly in each empty row
        score_BL = torch.rand(B, L, generator=generator).masked_fill(~maskable_BL, -1.0)
        selected_BL[empty_B, score_BL[empty_B].argmax(dim=1)] = True
    action_BL = torch.rand(B, L, generator=generator)
    to_mask_BL = selected_BL & (action_BL < mask_prob)
    to_random_BL = selected_BL & (action_BL >= mask_prob) & (action_BL < mask_prob + random_prob)
    picks_BL = random_ids[torch.randint(len(random_ids), (B, L), generator=generator)]
    inputs_BL = ids_BL.masked_fill(to_mask_BL, mask_id)
    inputs_BL = torch.where(to_random_BL, picks_BL, inputs_BL)
    labels_BL = ids_BL.masked_fill(~selected_BL, IGNORE_INDEX)
    return inputs_BL, labels_BL


class MaskedLMStream:
    """Batches for ``BERT.forward`` (ids_BL, labels, key_mask_BL, types_BL) from a list of text lines."""

    def __init__(self, lines: list[list[int]], max_len: int, val_fraction: float, seed: int, *, cls_id: int,
                 sep_id: int, pad_id: int, mask_id: int, vocab_size: int, special_ids: set[int]):
        if max_len < 5:
            raise DataError(f"max_len={max_len} leaves no room for [CLS] A [SEP] B [SEP]; use --max-len >= 5")
        tokens = torch.tensor([t for line in lines for t in line], dtype=torch.long)
        starts = torch.tensor([0] + [len(line) for line in lines], dtype=torch.long).cumsum(0)[:-1]
        n_val = int(len(tokens) * val_fraction)
        cut = len(tokens) - n_val
        self.splits = {"train": tokens[:cut], "val": tokens[cut:]}
        self.breaks = {"train": starts[(starts > 0) & (starts < cut)], "val": starts[starts > cut] - cut}
        self.n_content = max_len - 3
        for name, split in self.splits.items():
            if len(split) < self.n_content:
                raise DataError(f"the {name} split has {len(split)} tokens, fewer than one example of "
                                f"{self.n_content} (max_len {max_len} less [CLS] and two [SEP]); use more "
                                f"text, a smaller --max-len, or another --val-fraction")
        self.cls_id, self.sep_id, self.pad_id, self.mask_id = cls_id, sep_id, pad_id, mask_id
        self.special_ids = torch.tensor(sorted(special_ids), dtype=torch.long)
        self.random_ids = torch.tensor([i for i in range(vocab_size) if i not in special_ids], dtype=torch.long)
        self.generator = torch.Generator().manual_seed(seed)
        self.val_seed = seed + 1

    def _pair(self, split: str, g: torch.Generator) -> tuple[list[int], list[int]]:
        """Two consecutive chunks A, B of one random window (each at least one token)."""
        data, breaks = self.splits[split], self.breaks[split]
        n = self.n_content
        if float(torch.rand(1, generator=g)) < SHORT_PROB:
            n = int(torch.randint(2, n + 1, (1,), generator=g))
        start = int(torch.randint(len(data) - n + 1, (1,), generator=g))
        inside = breaks[(breaks > start) & (breaks < start + n)]
        if len(inside):                                      # cut at a line break: sentence-like chunks
            cut = int(inside[torch.randint(len(inside), (1,), generator=g)])
        else:
            cut = start + int(torch.randint(1, n, (1,), generator=g))
        window = data[start:start + n].tolist()
        return window[:cut - start], window[cut - start:]

    def batch(self, split: str, batch_size: int, generator: torch.Generator | None = None) -> dict:
        g = generator or self.generator
        pairs = [self._pair(split, g) for _ in range(batch_size)]
        L = max(len(a) + len(b) for a, b in pairs) + 3
        ids_BL = torch.full((batch_size, L), self.pad_id, dtype=torch.long)
        types_BL = torch.zeros(batch_size, L, dtype=torch.long)
        key_mask_BL = torch.zeros(batch_size, L, dtype=torch.bool)
        maskable_BL = torch.zeros(batch_size, L, dtype=torch.bool)
        for row, (a, b) in enumerate(pairs):
            n_a, n = len(a) + 2, len(a) + len(b) + 3
            ids_BL[row, :n] = torch.tensor([self.cls_id, *a, self.sep_id, *b, self.sep_id])
            types_BL[row, n_a:n] = 1
            key_mask_BL[row, :n] = True
            maskable_BL[row, 1:n_a - 1] = True
            maskable_BL[row, n_a:n - 1] = True
        maskable_BL &= ~torch.isin(ids_BL, self.special_ids)      # "[SEP]" typed in the text stays unmasked
        inputs_BL, labels_BL = mask_tokens(ids_BL, maskable_BL, self.mask_id, self.random_ids, g)
        return {"ids_BL": inputs_BL, "labels": labels_BL, "key_mask_BL": key_mask_BL, "types_BL": types_BL}

    def val_batches(self, batch_size: int, n: int) -> list[dict]:
        g = torch.Generator().manual_seed(self.val_seed)
        return [self.batch("val", batch_size, g) for _ in range(n)]
