"""attention-cost: time and memory of attention against sequence length, explicit path vs fused path.

The claim (Vaswani et al., 2017, Table 1: self-attention costs O(n^2 d) per layer): "the attention
matrix grows with n^2". Every query scores every key, so both paths do
4 * H * n^2 * D multiply-adds (two matrix products) for n tokens: time grows as n^2 either way. Memory is
where they differ. The explicit path (``qkv.nn.attention.attend(..., return_probs=True)``, the one that
returns the probabilities for pictures) materializes the H x n x n score and probability matrices; the
fused path (``F.scaled_dot_product_attention``, a flash-attention-style kernel on CPU) walks the keys in
blocks with a running softmax and keeps only the n x D output.

The measurement: one causal self-attention call (batch 1, no gradient) on random q, k, v at each length;
the median wall time of a few repeats, and the peak memory of the tensors each path allocates
(``qkv.experiments.measure.PeakMemory``). A least-squares fit of log(cost) on log(n) gives the exponent.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..nn.attention import attend
from ..nn.masks import build_mask
from .measure import loglog_slope, median_seconds, peak_bytes
from .report import Report

TITLE = "The cost of attention: n^2 time, and n^2 memory unless fused"
PATHS = {"explicit": True, "fused": False}      # name -> return_probs


@dataclass(frozen=True)
class Config:
    lengths: tuple[int, ...] = (128, 256, 512, 1024, 2048, 4096)
    n_heads: int = 4
    head_dim: int = 64
    repeats: int = 5
    seed: int = 0


FULL = Config()
QUICK = Config(lengths=(64, 128, 256, 512), repeats=3)


def run(cfg: Config, report: Report, log=print) -> dict:
    results = {p: {"seconds": {}, "bytes": {}} for p in PATHS}
    g = torch.Generator().manual_seed(cfg.seed)
    for n in cfg.lengths:
        q_BHLD, k_BHLD, v_BHLD = (torch.randn(1, cfg.n_heads, n, cfg.head_dim, generator=g) for _ in range(3))
        mask = build_mask(n, n, "causal")
        for path, explicit in PATHS.items():
            def call():
                return attend(q_BHLD, k_BHLD, v_BHLD, mask, return_probs=explicit)
            with torch.no_grad():
                results[path]["bytes"][n] = peak_bytes(call)
                results[path]["seconds"][n] = median_seconds(call, cfg.repeats)
        log(f"attention-cost: n={n:<5} explicit {results['explicit']['seconds'][n] * 1e3:8.2f} ms "
            f"{results['explicit']['bytes'][n] / 2**20:8.1f} MiB | "
            f"fused {results['fused']['seconds'][n] * 1e3:8.2f} ms "
            f"{results['fused']['bytes'][n] / 2**20:8.2f} MiB")
    upper = list(cfg.lengths[len(cfg.lengths) // 2 - 1:])      # the larger lengths, past fixed overheads
    for path in PATHS:
        r = results[path]
        r["time_exponent"] = loglog_slope(upper, [r["seconds"][n] for n in upper])
        r["memory_exponent"] = loglog_slope(list(cfg.lengths), [r["bytes"][n] for n in cfg.lengths])
    _write(cfg, report, results)
    return results


def _write(cfg: Config, report: Report, r: dict) -> None:
    from ..viz.output import png_figure
    ns = list(cfg.lengths)
    flops = {n: 4 * cfg.n_heads * n * n * cfg.head_dim for n in ns}      # 2 products x 2 flops per MAC
    report.section("Question", __doc__.split("\n\n")[1])
    report.section("Setup", __doc__.split("\n\n")[2] + f"\n\n{cfg.n_heads} heads of dimension {cfg.head_dim}, "
                   f"float32, causal mask, {cfg.repeats} timed repeats after one warm-up call.")
    report.section("Results")
    report.table(["n", "explicit ms", "fused ms", "explicit / fused time", "explicit MiB", "fused MiB",
                  "fused GFLOP/s"],
                 [[n, f"{r['explicit']['seconds'][n] * 1e3:.2f}", f"{r['fused']['seconds'][n] * 1e3:.2f}",
                   f"{r['explicit']['seconds'][n] / r['fused']['seconds'][n]:.1f}x",
                   f"{r['explicit']['bytes'][n] / 2**20:.1f}", f"{r['fused']['bytes'][n] / 2**20:.2f}",
                   f"{flops[n] / r['fused']['seconds'][n] / 1e9:.1f}"] for n in ns])
    report.table(["path", "time exponent (larger n)", "memory exponent"],
                 [[p, f"{r[p]['time_exponent']:.2f}", f"{r[p]['memory_exponent']:.2f}"] for p in PATHS])
    for key, unit, scale, name, caption in (
            ("seconds", "ms", 1e3, "time.png", "Time of one attention call vs sequence length (log-log)"),
            ("bytes", "MiB", 2.0 ** -20, "memory.png", "Peak memory of the tensors one attention call "
                                                         "allocates vs sequence length (log-log)")):
        with png_figure(report.figure(name, caption), 6.0, 4.0) as fig:
            ax = fig.subplots()
            exponent = "time_exponent" if key == "seconds" else "memory_exponent"
            for path in PATHS:
                ax.plot(ns, [r[path][key][n] * scale for n in ns], marker="o",
                        label=f"{path} (exponent {r[path][exponent]:.2f})")
            top = r["explicit"][key][ns[-1]] * scale
            ax.plot(ns, [top * (n / ns[-1]) ** 2 for n in ns], "k:", label="n^2")
            if key == "bytes":
                low = r["fused"][key][ns[-1]] * scale
                ax.plot(ns, [low * n / ns[-1] for n in ns], "k--", alpha=0.5, label="n")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set(xlabel="sequence length n", ylabel=unit)
            ax.legend(loc="upper left", fontsize="small", framealpha=0.6)   # the curves end high on the right
            ax.grid(alpha=0.3)
    e, f = r["explicit"], r["fused"]
    n = ns[-1]
    report.section("What it shows", "\n".join([
        f"- Time grows as n^{e['time_exponent']:.2f} (explicit) and n^{f['time_exponent']:.2f} (fused) over the "
        f"larger lengths. Both do the same 4 H n^2 D flops" + (
            "" if min(e["time_exponent"], f["time_exponent"]) >= 1.8 else
            " (an exponent below 2 means fixed costs per call, or a busy machine, still weigh at these lengths)")
        + f"; the fused kernel is {e['seconds'][n] / f['seconds'][n]:.1f}x faster at n = {n} because it never "
        f"writes the n x n matrices to memory and reads them back.",
        f"- Memory grows as n^{e['memory_exponent']:.2f} on the explicit path ({e['bytes'][n] / 2**20:.0f} MiB "
        f"at n = {n}: scores and probabilities, {cfg.n_heads} x {n} x {n} floats each, plus the mask) and as "
        f"n^{f['memory_exponent']:.2f} on the fused path ({f['bytes'][n] / 2**20:.1f} MiB, the output alone).",
        "- So pictures of attention (which need the probabilities) cost n^2 memory, and training or serving "
        "long contexts uses the fused path.",
    ]))
