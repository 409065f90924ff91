"""Measuring on a CPU: wall time (median of repeats) and the peak memory of the tensors an operation makes.

PyTorch reports peak memory only for CUDA. On a CPU we count it ourselves: ``PeakMemory`` is a
``TorchDispatchMode``, so it sees every tensor every operator returns. It adds each new storage's bytes
when it appears and subtracts them when the last tensor using it is freed (a ``weakref.finalize``), and
keeps the maximum. Storages that existed before (the inputs, the weights) and views of them count nothing.
What it cannot see is scratch memory a fused kernel allocates and frees inside itself (a few blocks of
the inputs for the CPU flash-attention kernel), so it measures what each path keeps alive between
operators; that is what grows with n^2 in the explicit path.
"""

from __future__ import annotations

import math
import statistics
import time
import weakref
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class PeakMemory(TorchDispatchMode):
    """``with PeakMemory() as m: f()`` then ``m.peak``: the most bytes of new tensor storage alive at once."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, list[int]] = {}      # storage pointer -> [bytes, tensors using it]
        self.external: set[int] = set()           # storages made before we started watching
        self.now = self.peak = 0

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del self.live[key]
            self.now -= entry[0]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for t in tree_flatten((args, kwargs))[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in self.live:
                self.external.add(t.untyped_storage().data_ptr())
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key in self.external or key == 0:
                continue
            if key in self.live:
                self.live[key][1] += 1
            else:
                self.live[key] = [storage.nbytes(), 1]
                self.now += storage.nbytes()
                self.peak = max(self.peak, self.now)
            weakref.finalize(t, self._release, key)
        return out


def peak_bytes(fn: Callable[[], object]) -> int:
    """The peak memory of new tensors while ``fn()`` runs (its result freed at the end)."""
    with PeakMemory() as meter:
        result = fn()
        del result
    return meter.peak


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """The median wall time of ``repeats`` calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def loglog_slope(xs: list[float], ys: list[float]) -> float:
    """The least-squares exponent p of y = c * x^p: 2 for quadratic growth, 1 for linear."""
    lx = [math.log(x) for x in xs]
    ly = [math.log(max(y, 1e-30)) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)
