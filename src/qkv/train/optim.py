"""AdamW with weight-decay groups (Loshchilov & Hutter, 2019) and warmup + cosine learning rate.

Decay applies to matrices (Linear and embedding weights); biases and norm gains are left alone, since
shrinking them toward zero only fights the normalization.

    lr(t) = lr * t / warmup                                   t < warmup
          = min_lr + (lr - min_lr) * (1 + cos(pi * p)) / 2    p = progress after warmup, in [0, 1]
"""

from __future__ import annotations

import math

import torch


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas: tuple[float, float]):
    params = {id(p): p for p in model.parameters() if p.requires_grad}.values()   # tied weights once
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel updates every parameter in one pass (one read and write of each state tensor).
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)


def lr_at(progress: float, step: int, lr: float, warmup: int, min_lr_ratio: float,
          schedule: str = "cosine") -> float:
    """Learning rate at ``step``; ``progress`` in [0, 1] is how much of the run's budget is spent.

    Both schedules warm up linearly to ``lr``. Then ``cosine`` decays to ``lr * min_lr_ratio`` by the end of
    the budget; ``inverse_sqrt`` is the original Transformer's (Vaswani et al., 2017, eq. 3), which peaks at
    d_model^-0.5 * warmup^-0.5 and decays as 1/sqrt(step): written here with the peak ``lr`` given directly.
    """
    if step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "inverse_sqrt":
        return lr * math.sqrt(max(warmup, 1) / (step + 1))
    p = min(max(progress, 0.0), 1.0)
    min_lr = lr * min_lr_ratio
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * p))
