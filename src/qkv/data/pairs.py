"""Sequence pairs for encoder-decoders: parallel text, summaries, teacher forcing, length-bucketed batches.

Legend: B batch, S source length, L target length.

Teacher forcing (Vaswani et al., 2017; the seeds' example): the decoder reads the target shifted right
behind ``<bos>`` and learns to predict it followed by ``<eos>``:

    >>> teacher_forcing(["I", "like", "eating", "mushrooms"], "<bos>", "<eos>")
    (['<bos>', 'I', 'like', 'eating', 'mushrooms'], ['I', 'like', 'eating', 'mushrooms', '<eos>'])

Batches group pairs of similar length (sorted into chunks of B, then chunks drawn at random), so little
compute goes to padding. The draw comes from a private ``torch.Generator`` whose state the trainer
saves, so a resumed run sees the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import DataError
from ..padding import pad_right
from .text import read_lines


def teacher_forcing(target: list, bos, eos) -> tuple[list, list]:
    """(decoder input, labels) for one target sequence: ``<bos> y1..yn`` and ``y1..yn <eos>``."""
    return [bos] + list(target), list(target) + [eos]


def read_parallel(src_path: str | Path, tgt_path: str | Path) -> list[tuple[str, str]]:
    """Aligned (source, target) sentences from two files with one sentence per line."""
    src_path, tgt_path = Path(src_path), Path(tgt_path)
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        raise DataError(f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}: line "
                        f"{min(len(src), len(tgt)) + 1} has no partner; parallel files must be aligned line by line")
    for i, (s, t) in enumerate(zip(src, tgt), start=1):
        if not s.strip() or not t.strip():
            side = src_path if not s.strip() else tgt_path
            raise DataError(f"line {i} of {side} is empty; remove the pair at line {i} from both files")
    return list(zip(src, tgt))


def read_summaries(path: str | Path) -> list[tuple[str, list[str]]]:
    """(document, [reference summaries]) from SciTLDR-style JSON lines: ``source`` is a list of sentences,
    ``target`` a list of references (training uses the first; evaluation scores against all)."""
    path = Path(path)
    pairs = []
    for i, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            source, target = row["source"], row["target"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DataError(f"{path}:{i} is not a JSON object with 'source' and 'target' lists ({e}); "
                            f"fix that line") from None
        document = " ".join(source) if isinstance(source, list) else str(source)
        references = [target] if isinstance(target, str) else list(target)
        if not document.strip() or not references:
            raise DataError(f"{path}:{i} has an empty source or no target; remove that line")
        pairs.append((document, references))
    if not pairs:
        raise DataError(f"{path} holds no examples")
    return pairs


def collate_pairs(pairs: list[tuple[list[int], list[int]]], pad_id: int, bos_id: int,
                  eos_id: int) -> dict[str, torch.Tensor]:
    """Pad encoded (source, target) pairs into the keyword arguments of ``EncoderDecoder.forward``."""
    src_BS, src_mask_BS = pad_right([src for src, _ in pairs], pad_id)
    forced = [teacher_forcing(tgt, bos_id, eos_id) for _, tgt in pairs]
    L = max(len(t) for _, t in pairs) + 1
    ids_BL, _ = pad_right([inp for inp, _ in forced], pad_id, length=L)
    targets_BL, _ = pad_right([labels for _, labels in forced], -100, length=L)
    return {"src_BS": src_BS, "src_mask_BS": src_mask_BS, "ids_BL": ids_BL, "targets_BL": targets_BL}


class PairBatches:
    """Encoded pairs split into train/val, served as padded model-ready batches.

    A batch is a dict the encoder-decoder's ``forward`` takes as keyword arguments:
    src_BS, src_mask_BS (True for real tokens), ids_BL (``<bos> y``), targets_BL (``y <eos>``, -100 on padding).
    """

    def __init__(self, train: list[tuple[list[int], list[int]]], val: list[tuple[list[int], list[int]]],
                 pad_id: int, bos_id: int, eos_id: int, seed: int):
        if not train or not val:
            raise DataError(f"need training and validation pairs, got {len(train)} and {len(val)}")
        self.splits = {"train": train, "val": val}
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self.generator = torch.Generator().manual_seed(seed)
        self._chunks: dict[tuple[str, int], list[list[int]]] = {}

    def chunks(self, split: str, batch_size: int) -> list[list[int]]:
        """Indices sorted by (source, target) length, cut into batches of ``batch_size``."""
        key = (split, batch_size)
        if key not in self._chunks:
            pairs = self.splits[split]
            order = sorted(range(len(pairs)), key=lambda i: (len(pairs[i][0]), len(pairs[i][1]), i))
            self._chunks[key] = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        return self._chunks[key]

    def collate(self, pairs: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
        return collate_pairs(pairs, self.pad_id, self.bos_id, self.eos_id)

    def batch(self, split: str, batch_size: int) -> dict[str, torch.Tensor]:
        chunks = self.chunks(split, batch_size)
        i = int(torch.randint(len(chunks), (1,), generator=self.generator))
        return self.collate([self.splits[split][j] for j in chunks[i]])

    def val_batches(self, batch_size: int, n: int) -> list[dict[str, torch.Tensor]]:
        """The first ``n`` length-sorted validation batches (all of them when there are fewer)."""
        chunks = self.chunks("val", batch_size)
        step = max(1, len(chunks) // n)            # spread over short and long sentences alike
        return [self.collate([self.splits["val"][j] for j in c]) for c in chunks[::step][:n]]
