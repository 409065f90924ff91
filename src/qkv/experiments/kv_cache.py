"""kv-cache: the time to produce one token at position t, with and without the KV cache.

Decoding produces one token per model call. Without a cache, the call at position t re-reads the whole
prefix: t tokens through every layer, so the per-token time grows with t and a whole sequence of T tokens
costs ~T^2 / 2 token-passes. With the cache (``qkv.nn.kv_cache.KVCache``: each layer keeps the keys and
values it already computed) the call processes only the new token; what still grows with t is that token's
attention over t cached keys, a small term next to the weight matrices until contexts get long.

The measurement: a GPT of the shape below, random weights (time does not depend on the values), a fixed
sequence of tokens decoded one position at a time; each step times one model call that returns the next
token's logits (``last_only``, as ``qkv.generate`` does), cached or recomputing from scratch. The median
over repeats of the whole decode gives each position's time.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from ..config import ModelConfig
from ..models.decoder import GPT
from .report import Report

TITLE = "The KV cache: per-token decode time vs position"


@dataclass(frozen=True)
class Config:
    n_layers: int = 6
    d_model: int = 384
    n_heads: int = 6
    vocab_size: int = 4096
    positions: int = 512                  # tokens decoded
    repeats: int = 3
    seed: int = 0


FULL = Config()
QUICK = Config(n_layers=2, d_model=128, n_heads=4, vocab_size=512, positions=128, repeats=1)


@torch.inference_mode()
def decode_times(model: GPT, ids_1T: torch.Tensor, cached: bool) -> tuple[list[float], list[int]]:
    """Seconds of the call that yields the logits after each position 0..T-1, and the token positions that
    call ran through the layers (counted at the first block: the work the time reflects)."""
    T = ids_1T.shape[1]
    caches = model.new_caches(1, T) if cached else None
    times, passes = [], []
    hook = model.blocks[0].register_forward_pre_hook(lambda _, args: passes.append(args[0].shape[1]))
    try:
        for t in range(T):
            start = time.perf_counter()
            if cached:
                model(ids_1T[:, t:t + 1], caches=caches, last_only=True)
            else:
                model(ids_1T[:, :t + 1], last_only=True)
            times.append(time.perf_counter() - start)
    finally:
        hook.remove()
    return times, passes


def _line(xs: list[int], ys: list[float]) -> tuple[float, float]:
    """Least-squares slope and intercept."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return slope, my - slope * mx


def run(cfg: Config, report: Report, log=print) -> dict:
    torch.manual_seed(cfg.seed)
    model = GPT(ModelConfig(vocab_size=cfg.vocab_size, max_len=cfg.positions, n_layers=cfg.n_layers,
                            d_model=cfg.d_model, n_heads=cfg.n_heads)).eval()
    ids_1T = torch.randint(0, cfg.vocab_size, (1, cfg.positions), generator=torch.Generator().manual_seed(cfg.seed))
    decode_times(model, ids_1T[:, :8], True)                      # warm-up: first-call allocations
    results = {}
    for name, cached in (("with cache", True), ("without cache", False)):
        runs = [decode_times(model, ids_1T, cached) for _ in range(cfg.repeats)]
        per_position = [statistics.median(r[t] for r, _ in runs) for t in range(cfg.positions)]
        slope, intercept = _line(list(range(cfg.positions)), per_position)
        results[name] = {"seconds": per_position, "total": sum(per_position), "slope": slope,
                         "intercept": intercept, "token_passes": runs[0][1]}
        log(f"kv-cache: {name:<14} {sum(per_position):7.2f} s for {cfg.positions} tokens, "
            f"{slope * 1e6:8.2f} us more per position")
    results["params"] = model.num_params()
    _write(cfg, report, results)
    return results


def _write(cfg: Config, report: Report, r: dict) -> None:
    from ..viz.output import png_figure
    cache, plain = r["with cache"], r["without cache"]
    T = cfg.positions
    report.section("Question", __doc__.split("\n\n")[1])
    report.section("Setup", __doc__.split("\n\n")[2] + f"\n\nGPT: {cfg.n_layers} layers, d_model {cfg.d_model}, "
                   f"{cfg.n_heads} heads, vocabulary {cfg.vocab_size} ({r['params']:,} parameters), float32, "
                   f"{T} positions, {cfg.repeats} repeat(s).")
    report.section("Results")
    marks = sorted({0, T // 8, T // 4, T // 2, T - 1})
    report.table(["position"] + [f"{p}" for p in marks],
                 [["with cache (ms)"] + [f"{cache['seconds'][p] * 1e3:.2f}" for p in marks],
                  ["without cache (ms)"] + [f"{plain['seconds'][p] * 1e3:.2f}" for p in marks]])
    report.table(["", "total for all tokens (s)", "fitted growth per position (us)", "fitted time at position 0 (ms)"],
                 [[name, f"{x['total']:.2f}", f"{x['slope'] * 1e6:.2f}", f"{x['intercept'] * 1e3:.2f}"]
                  for name, x in (("with cache", cache), ("without cache", plain))])
    with png_figure(report.figure("decode_time.png", "Time of the call that produces the next token, by "
                                  "position"), 6.4, 4.0) as fig:
        ax = fig.subplots()
        for i, (name, x) in enumerate((("with cache", cache), ("without cache", plain))):
            ax.plot(range(T), [s * 1e3 for s in x["seconds"]], lw=0.8, alpha=0.6, color=f"C{i}")
            ax.plot([0, T - 1], [(x["intercept"]) * 1e3, (x["intercept"] + x["slope"] * (T - 1)) * 1e3],
                    color=f"C{i}", lw=2, label=f"{name}: {x['slope'] * 1e6:.1f} us more per position")
        ax.set(xlabel="position t", ylabel="ms per token")
        ax.set_ylim(bottom=0)                  # a fit through a noisy run may dip below 0 ms; time cannot
        ax.legend()
        ax.grid(alpha=0.3)
    report.section("What it shows", "\n".join([
        f"- Without the cache the per-token time grows by {plain['slope'] * 1e6:.1f} us per position (the prefix "
        f"is re-read each step); with it, by {cache['slope'] * 1e6:.2f} us (attention over the cached keys, "
        f"small next to the weights at this length, and within the timing noise).",
        f"- At position {T - 1}: {plain['seconds'][-1] * 1e3:.1f} ms without vs {cache['seconds'][-1] * 1e3:.1f} ms "
        f"with the cache; all {T} tokens: {plain['total']:.2f} s vs {cache['total']:.2f} s "
        f"({plain['total'] / cache['total']:.1f}x), for {sum(plain['token_passes']):,} token passes through the "
        f"layers against {sum(cache['token_passes']):,}.",
        f"- The cache pays for it in memory: keys and values, 2 x {cfg.n_layers} layers x {T} positions x "
        f"{cfg.d_model} floats = {2 * cfg.n_layers * T * cfg.d_model * 4 / 2**20:.1f} MiB per sequence here, "
        f"growing linearly with the context.",
    ]))
