"""Encoded fine-tuning examples, their padded batches, and batched inference over them.

Legend: B batch, L longest sequence in the batch, K labels.

Every task family turns its examples into ``Item``s: token ids and segment ids as the tokenizer's
``encode_for_model`` made them ([CLS] ... [SEP]), plus the gold labels in one of three layouts,

    layout  labels of one item                       batch key ``labels``
    "B"     [class id]                               labels_B                (sequence classification)
    "BL"    one id per token, -100 where unscored   labels_BL, padded -100  (tagging)
    "B2"    [start token, end token]                 spans_B2                (extractive QA)
    "LM"    next-token ids, -100 where unscored      targets_BL, padded -100 (a decoder: chat turns)

which is the shape each head's loss takes (``qkv.models.encoder``). ``TaskBatches`` is the trainer's data
object: training batches draw items from a private generator (its state is the data position, so resume
is exact); validation batches are the first items of the validation split, in order.

Grouping by length: a batch is padded to its longest item, and 32 sentences drawn at random from SST-2 or UD EWT
pad to several times their real tokens (bench/README.md). With ``group_by_length`` a training batch is drawn
from a window of ``GROUP_WINDOW`` batches' worth of neighbours in the items sorted by length (ties in a seeded
random order; the window wraps around), which pads very little, and every item is still equally likely.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch

from ..errors import DataError
from ..padding import pad_right

Layout = Literal["B", "BL", "B2", "LM"]
GROUP_WINDOW = 4            # a length-grouped batch is drawn from 4 x batch_size neighbours in length order


@dataclass(frozen=True)
class Item:
    ids: list[int]
    types: list[int]
    labels: list[int]
    word_ids: list[int | None] | None = None     # tagging: the word each token belongs to (None: special)
    feature: object | None = None                # QA: the window (QAFeature) whose offsets map tokens to text


def collate(items: Sequence[Item], layout: Layout, pad_id: int, with_labels: bool = True) -> dict:
    """Right-padded model kwargs: ids_BL, key_mask_BL (True on real tokens), types_BL and ``labels``; for a
    decoder ("LM") ids_BL and targets_BL (-100 on padding), the causal mask keeping padding out of sight."""
    if layout == "LM":
        ids_BL, _ = pad_right([it.ids for it in items], pad_id)
        targets_BL, _ = pad_right([it.labels for it in items], -100)
        return {"ids_BL": ids_BL, "targets_BL": targets_BL} if with_labels else {"ids_BL": ids_BL}
    ids_BL, key_mask_BL = pad_right([it.ids for it in items], pad_id)
    types_BL, _ = pad_right([it.types for it in items], 0)
    batch = {"ids_BL": ids_BL, "key_mask_BL": key_mask_BL, "types_BL": types_BL}
    if with_labels:
        if layout == "BL":
            labels, _ = pad_right([it.labels for it in items], -100, length=ids_BL.shape[1])
        else:
            labels = torch.tensor([it.labels for it in items], dtype=torch.long)
            labels = labels[:, 0] if layout == "B" else labels
        batch["labels"] = labels
    return batch


class TaskBatches:
    """The trainer's data object over encoded items: ``.batch``, ``.val_batches``, ``.generator``, ``.splits``."""

    def __init__(self, train: list[Item], val: list[Item], layout: Layout, pad_id: int, seed: int,
                 group_by_length: bool = True):
        for name, split in (("training", train), ("validation", val)):
            if not split:
                raise DataError(f"the {name} data has no examples; check the --data / --eval-data files")
        self.splits = {"train": train, "val": val}
        self.layout, self.pad_id = layout, pad_id
        self.generator = torch.Generator().manual_seed(seed)
        self.by_length = None
        if group_by_length:
            ties = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed + 1)).tolist()
            self.by_length = sorted(range(len(train)), key=lambda i: (len(train[i].ids), ties[i]))

    def batch(self, split: str, batch_size: int) -> dict:
        items = self.splits[split]
        if split == "train" and self.by_length is not None:
            window = min(GROUP_WINDOW * batch_size, len(items))
            start = int(torch.randint(len(items), (1,), generator=self.generator))
            offsets = torch.randint(window, (batch_size,), generator=self.generator).tolist()
            picks = [self.by_length[(start + k) % len(items)] for k in offsets]
        else:
            picks = torch.randint(len(items), (batch_size,), generator=self.generator).tolist()
        return collate([items[i] for i in picks], self.layout, self.pad_id)

    def val_batches(self, batch_size: int, n: int) -> list[dict]:
        items = self.splits["val"][: batch_size * n]
        return [collate(items[i:i + batch_size], self.layout, self.pad_id)
                for i in range(0, len(items), batch_size)]


@torch.inference_mode()
def item_logits(model, items: Sequence[Item], pad_id: int, batch_size: int = 64) -> list[torch.Tensor]:
    """The model's logits for each item, unpadded: logits_K (classification) or logits_nK for n tokens.

    Items are sorted by length first, so each batch pads little; the result is in the items' order.
    """
    was_training = model.training
    model.eval()
    order = sorted(range(len(items)), key=lambda i: len(items[i].ids))
    out: list[torch.Tensor | None] = [None] * len(items)
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            batch = collate([items[i] for i in chunk], "B", pad_id, with_labels=False)
            logits = model(**batch).logits.float()
            for row, i in enumerate(chunk):
                out[i] = logits[row] if logits.dim() == 2 else logits[row, :len(items[i].ids)]
    finally:
        model.train(was_training)
    return out
