"""Experiments that test the architectural arguments: each runs in minutes on a laptop CPU and writes a report.

    long-range      attention vs LSTM vs tanh RNN on a token d positions back; the gradient that reaches it
    prenorm-warmup  post-norm vs pre-norm, with and without learning-rate warm-up (Xiong et al., 2020)
    attention-cost  time and memory of attention vs sequence length: explicit vs fused, the n^2 fit
    kv-cache        per-token decode time vs position, with and without the KV cache
    positions       what sinusoidal, learned, RoPE and ALiBi encode; loss past the training length

Each module has a frozen ``Config`` with ``FULL`` (the committed report, <= 10 minutes on 2 cores) and
``QUICK`` (under a minute, run by the test suite) values, and ``run(cfg, report, log) -> dict``.

    >>> results = run_experiment("kv-cache", "runs/experiments/kv-cache", quick=True)   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import torch

from ..errors import InputError, require_extra

EXPERIMENTS = {
    "long-range": "qkv.experiments.long_range",
    "prenorm-warmup": "qkv.experiments.prenorm_warmup",
    "attention-cost": "qkv.experiments.attention_cost",
    "kv-cache": "qkv.experiments.kv_cache",
    "positions": "qkv.experiments.positions",
}


def experiment_module(name: str):
    if name not in EXPERIMENTS:
        raise InputError(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)} (or all)")
    return importlib.import_module(EXPERIMENTS[name])


def run_experiment(name: str, out_dir: str | Path, quick: bool = False, seed: int | None = None,
                   log=print) -> dict:
    """Run experiment ``name`` and write its report to ``out_dir``; return its results."""
    from ..rundir import atomic_dir
    from .report import Report, check_out_dir

    module = experiment_module(name)
    require_extra("matplotlib", "plots", f"experiment {name}")   # now, not after minutes of work
    cfg = module.QUICK if quick else module.FULL
    if seed is not None:
        cfg = dataclasses.replace(cfg, seed=seed)
    out_dir = Path(out_dir)
    check_out_dir(out_dir, name)
    torch.manual_seed(cfg.seed)
    with atomic_dir(out_dir) as tmp:
        report = Report(tmp, name, module.TITLE, cfg, quick)
        results = module.run(cfg, report, log)
        report.write()
    return results
