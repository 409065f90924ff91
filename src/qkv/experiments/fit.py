"""The experiments' training loop: AdamW, optional linear warm-up then a constant rate, optional clipping.

Deliberately smaller than ``qkv.train.Trainer`` (no checkpoints, no schedule after warm-up): each
experiment changes one thing, and a loop this short shows there is nothing else in play.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..train.optim import make_optimizer


def train(model: torch.nn.Module, next_batch: Callable[[], dict], steps: int, lr: float, warmup: int = 0,
          clip: float | None = None, weight_decay: float = 0.0, betas=(0.9, 0.98),
          stop: Callable[[object, dict], bool] | None = None) -> list[float]:
    """Train for ``steps`` steps (fewer if ``stop(output, batch)`` says so); return the loss of every step.

    next_batch() returns the model's keyword arguments, targets included. The rate rises linearly over
    ``warmup`` steps, then stays at ``lr``.
    """
    optimizer = make_optimizer(model, lr, weight_decay, betas)
    model.train()
    losses = []
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup) if warmup else lr
        batch = next_batch()
        out = model(**batch)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        losses.append(out.loss.item())
        if stop is not None and stop(out, batch):
            break
    model.eval()
    return losses


@torch.no_grad()
def mean_loss(model: torch.nn.Module, batches: list[dict]) -> float:
    model.eval()
    return sum(model(**b).loss.item() for b in batches) / len(batches)
