"""A language model's loss and perplexity over a whole token stream, in non-overlapping windows of its
context (``qkv eval``). Legend: N windows, L tokens per window, V vocab.

Not training's (the trainer's validation loss is ``Trainer.evaluate``), nor a fine-tuned model's task scores
(accuracy, F1: ``qkv.metrics``, which ``qkv evaluate`` reports).
"""

from __future__ import annotations

import sys

import torch
from torch.nn import functional as F
from tqdm import tqdm

from .errors import DataError
from .validation import check_positive_int


@torch.inference_mode()
def perplexity(model, ids: list[int], batch_size: int = 8, window: int | None = None,
               progress: bool = False) -> dict:
    """Mean next-token cross-entropy over every token after the first (each window predicts L tokens).

    window: tokens per window (default and at most the model's max_len; a long-context model evaluates
    faster, and comparably to other models, in shorter windows).
    progress: a bar of tokens scored on stderr, as training's, when stderr is a terminal (a log or a pipe
    gets none)."""
    check_positive_int("batch_size", batch_size)
    if len(ids) < 2:
        raise DataError(f"evaluation text has {len(ids)} token(s); it needs at least 2")
    tokens = torch.tensor(ids, dtype=torch.long)
    L = min(window or model.cfg.max_len, model.cfg.max_len)
    n_full = (len(tokens) - 1) // L
    inputs_NL = tokens[: n_full * L].view(n_full, L)
    targets_NL = tokens[1: n_full * L + 1].view(n_full, L)
    batches = [(inputs_NL[i:i + batch_size], targets_NL[i:i + batch_size]) for i in range(0, n_full, batch_size)]
    tail = len(tokens) - 1 - n_full * L                 # the last, shorter window
    if tail:
        batches.append((tokens[n_full * L: -1][None], tokens[n_full * L + 1:][None]))
    total, count = 0.0, len(tokens) - 1
    with tqdm(total=count, unit="tok", unit_scale=True, leave=False, dynamic_ncols=True,
              disable=not progress or not sys.stderr.isatty()) as bar:
        for x_BL, y_BL in batches:
            logits_BLV = model(x_BL).logits
            total += F.cross_entropy(logits_BLV.flatten(0, 1), y_BL.flatten(), reduction="sum").item()
            bar.update(y_BL.numel())
    return {"loss": total / count, "tokens": count}
