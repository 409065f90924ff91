"""T5-style span corruption (Raffel et al., 2020, sec. 3.1.4): self-supervised encoder-decoder pre-training.

Random spans (15% of the tokens, mean length 3) are cut from a window of text. The encoder reads what is
left with one sentinel per hole; the decoder writes each sentinel followed by the tokens it replaced:

    text     Thank you for inviting me to your party last week .
    input    Thank you <X> me to your party <Y> week .
    target   <X> for inviting <Y> last <eos>

Windows are drawn from the token stream like ``LMStream``'s, from a private generator (exact resume).
Every window of n tokens has the same number of spans, so a batch needs no padding.
"""

from __future__ import annotations

import torch

from ..errors import DataError
from .pairs import collate_pairs


def sentinel_names(n: int) -> list[str]:
    return [f"<extra_id_{i}>" for i in range(n)]


def spans_needed(window: int, noise_density: float = 0.15, mean_span: float = 3.0) -> tuple[int, int]:
    """(noise tokens, spans) for a window of ``window`` tokens."""
    n_noise = min(max(1, round(window * noise_density)), window - 1)
    return n_noise, max(1, round(n_noise / mean_span))


def _random_split(total: int, parts: int, generator: torch.Generator) -> list[int]:
    """``total`` split into ``parts`` positive lengths, uniformly among all such splits."""
    cuts = (torch.randperm(total - 1, generator=generator)[:parts - 1] + 1).sort().values.tolist()
    return [b - a for a, b in zip([0] + cuts, cuts + [total])]


def corrupt(tokens: list[int], sentinel_ids: list[int], generator: torch.Generator,
            noise_density: float = 0.15, mean_span: float = 3.0) -> tuple[list[int], list[int]]:
    """(input with sentinels, target of sentinels and the spans they hide) for one window."""
    n_noise, n_spans = spans_needed(len(tokens), noise_density, mean_span)
    if n_spans > len(sentinel_ids):
        raise DataError(f"{n_spans} spans need {n_spans} sentinels but the tokenizer has {len(sentinel_ids)}")
    n_spans = min(n_spans, len(tokens) - n_noise)
    noise_lengths = _random_split(n_noise, n_spans, generator)
    keep_lengths = _random_split(len(tokens) - n_noise, n_spans, generator)
    source, target, i = [], [], 0
    for sentinel, keep, noise in zip(sentinel_ids, keep_lengths, noise_lengths):
        source += tokens[i:i + keep] + [sentinel]
        target += [sentinel] + tokens[i + keep:i + keep + noise]
        i += keep + noise
    return source, target


class SpanCorruption:
    """Batches of corrupted windows for ``EncoderDecoder.forward`` (see ``qkv.data.pairs.collate_pairs``)."""

    def __init__(self, ids: list[int], window: int, val_fraction: float, sentinel_ids: list[int],
                 pad_id: int, bos_id: int, eos_id: int, seed: int):
        tokens = torch.as_tensor(ids, dtype=torch.long)
        n_val = int(len(tokens) * val_fraction)
        self.splits = {"train": tokens[: len(tokens) - n_val], "val": tokens[len(tokens) - n_val:]}
        for name, split in self.splits.items():
            if len(split) < window + 1:
                raise DataError(f"the {name} split has {len(split)} tokens, shorter than one window of {window}; "
                                f"use more text or a smaller --max-len")
        self.window, self.sentinel_ids = window, sentinel_ids
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self.generator = torch.Generator().manual_seed(seed)
        self.val_seed = seed + 1

    def batch(self, split: str, batch_size: int, generator: torch.Generator | None = None) -> dict:
        g = generator or self.generator
        data = self.splits[split]
        starts = torch.randint(len(data) - self.window, (batch_size,), generator=g).tolist()
        pairs = [corrupt(data[s:s + self.window].tolist(), self.sentinel_ids, g) for s in starts]
        return collate_pairs(pairs, self.pad_id, self.bos_id, self.eos_id)

    def val_batches(self, batch_size: int, n: int) -> list[dict]:
        g = torch.Generator().manual_seed(self.val_seed)
        return [self.batch("val", batch_size, g) for _ in range(n)]
