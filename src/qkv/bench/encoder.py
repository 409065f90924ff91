"""Encoder inference speed: sentences/s of a BERT-base forward pass, qkv's ``Encoder`` against Hugging
Face's ``BertModel`` of the same shape, timed in the same process.

The shape is BERT-base: 12 layers, 12 heads, d_model 768, FFN 3072, GELU, post-norm LayerNorm (eps 1e-12),
vocabulary 30522, 512 positions, 2 segments; random weights, float32. A call is what embedding or
classifying a batch costs: 32 sentences of 128 tokens, no padding (attention mask all ones, segment ids
all zero, as a tokenizer gives for full rows), eval mode under ``torch.inference_mode``, the last hidden
states returned. Both sides do the same arithmetic; only the implementations differ:

    qkv     Encoder (wq + fused wkv projections, SDPA; an all-True mask is dropped, so SDPA runs unmasked),
            with ``use_onednn`` as ``qkv embed`` / ``predict`` / ``evaluate`` run it: on AVX-512 CPUs every
            Linear goes through oneDNN, GELU fused into the FFN's first GEMM (``--no-onednn``: plain MKL)
    hf      BertModel(attn_implementation="sdpa"), as its users get it (eager), pooler included (its
            forward always runs it: one 768 x 768 product per sentence, < 0.1% of the work)

Timing: ``warmup`` untimed calls per side, then ``rounds`` rounds of one call per side, the two sides
alternating and who goes first alternating too, so load from other processes falls on both alike.
Reported: the median and the best round of each side and the median over rounds of the per-round ratio.

What bounds it: ~80% of a forward is the same six GEMMs per layer on both sides (97% of the FLOPs); the
rest is GELU, SDPA, LayerNorm, residual adds, and the bias broadcast addmm copies into its output. With
MKL on both sides (2 AVX2 cores, AMD EPYC Zen 3) qkv and hf ran at the same speed: the same kernels. The one
lever that moved it is the GEMM library: MKL runs AVX2 code on AMD processors, oneDNN runs AVX-512 where the
processor has it (Zen 4), and there oneDNN's GEMMs are faster than MKL's (``qkv.runtime.onednn``; the figures
are bench/README.md's). Levers tried that did not pay: oneDNN on the AVX2 machine (slower than MKL), MKL
pre-packed weights and column-major weights (within noise), oneDNN pre-packed (reordered) weights
(within noise of oneDNN on plain weights), torch.compile (no gain: the GEMMs dominate and the input
checks break the graph).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from typing import Callable

import torch

from ..config import ModelConfig
from ..models.encoder import Encoder
from ..runtime.onednn import OneDNNLinear, use_onednn

SHAPE = dict(vocab_size=30522, max_len=512, n_layers=12, d_model=768, n_heads=12, d_ff=3072, type_vocab_size=2)


def bert_config(layers: int) -> ModelConfig:
    return ModelConfig(**dict(SHAPE, n_layers=layers), norm="layernorm", norm_eps=1e-12, norm_placement="post",
                       mlp="gelu", pos="learned", mask="bidirectional", embed_norm=True, dropout=0.0)


def _inputs(batch: int, length: int):
    ids_BL = torch.randint(0, SHAPE["vocab_size"], (batch, length), generator=torch.Generator().manual_seed(0))
    return ids_BL, torch.ones(batch, length, dtype=torch.long), torch.zeros(batch, length, dtype=torch.long)


def ours(batch: int, length: int, layers: int, seed: int = 0,
         onednn: bool = True) -> tuple[Callable[[], torch.Tensor], dict]:
    torch.manual_seed(seed)
    model = Encoder(bert_config(layers)).eval()
    if onednn:
        use_onednn(model)
    ids_BL, mask_BL, types_BL = _inputs(batch, length)
    key_mask_BL = mask_BL.bool()

    def call() -> torch.Tensor:
        with torch.inference_mode():
            return model(ids_BL, key_mask_BL=key_mask_BL, types_BL=types_BL).hidden
    linear = "oneDNN" if any(isinstance(m, OneDNNLinear) for m in model.modules()) else "MKL (nn.Linear)"
    return call, dict(model="qkv.models.Encoder", params=model.num_params(), linear=linear,
                      cpu_capability=torch.backends.cpu.get_cpu_capability())


def huggingface(batch: int, length: int, layers: int, seed: int = 0) -> tuple[Callable[[], torch.Tensor], dict]:
    import transformers
    transformers.logging.set_verbosity_error()
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=SHAPE["vocab_size"], hidden_size=SHAPE["d_model"],
                                  num_hidden_layers=layers, num_attention_heads=SHAPE["n_heads"],
                                  intermediate_size=SHAPE["d_ff"], max_position_embeddings=SHAPE["max_len"],
                                  type_vocab_size=SHAPE["type_vocab_size"], hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0, attn_implementation="sdpa")
    model = transformers.BertModel(cfg).eval()
    ids_BL, mask_BL, types_BL = _inputs(batch, length)

    def call() -> torch.Tensor:
        with torch.inference_mode():
            return model(input_ids=ids_BL, attention_mask=mask_BL, token_type_ids=types_BL).last_hidden_state
    info = dict(model="transformers.BertModel", version=transformers.__version__,
                params=sum(p.numel() for p in model.parameters()),
                attn_implementation=model.config._attn_implementation)
    return call, info


def _time(call: Callable) -> float:
    t0 = time.perf_counter()
    call()
    return time.perf_counter() - t0


def alternate(sides: dict[str, tuple[Callable, dict]], warmup: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each side: ``warmup`` untimed calls each, then ``rounds`` rounds of one call per side,
    the order alternating every round (load from other processes falls on both sides alike)."""
    for call, _ in sides.values():
        for _ in range(warmup):
            call()
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(rounds):
        for name in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
            seconds[name].append(_time(sides[name][0]))
    return seconds


def machine() -> dict:
    """Where a figure was measured: threads, cores, the load other processes put on them, torch, CPU."""
    return {"threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
            "torch": torch.__version__, "machine": platform.processor() or platform.machine()}


def against_hf(ours: tuple[Callable, dict], hf_side: Callable[[], tuple[Callable, dict]] | None, unit: str,
               per_call: int, warmup: int, rounds: int) -> dict:
    """qkv's side against transformers' (``hf_side()`` builds it; None or ImportError: qkv alone), timed by
    ``alternate``: per side its info and ``{unit}_per_s`` (median), ``best_{unit}_per_s`` and the rate of
    every round (``per_call`` items a call); ``ratio`` is the median of per-round ratios, ``ratio_best`` that
    of the best rounds."""
    sides, result = {"qkv": ours}, {}
    if hf_side is not None:
        try:
            sides["hf"] = hf_side()
        except ImportError:
            result["note"] = "transformers is not installed: Hugging Face side skipped (pip install transformers)"
    seconds = alternate(sides, warmup, rounds)
    for name, (_, info) in sides.items():
        rates = [per_call / s for s in seconds[name]]
        result[name] = dict(info, **{f"{unit}_per_s": round(statistics.median(rates), 2),
                                     f"best_{unit}_per_s": round(max(rates), 2),
                                     f"rounds_{unit}_per_s": [round(x, 2) for x in rates]})
    if "hf" in sides:
        ratios = [h / q for q, h in zip(seconds["qkv"], seconds["hf"])]     # same round, same load
        result["ratio"] = round(statistics.median(ratios), 3)
        result["ratio_best"] = round(result["qkv"][f"best_{unit}_per_s"] / result["hf"][f"best_{unit}_per_s"], 3)
    return result


def run(json_out: bool = False, *, layers: int = SHAPE["n_layers"], batch: int = 32, length: int = 128,
        warmup: int = 1, rounds: int = 5, hf: bool = True, threads: int | None = None, onednn: bool = True) -> dict:
    """Time both sides and return (and print) the result; with ``json_out`` print exactly one JSON line."""
    if threads is not None:
        torch.set_num_threads(threads)
    result = {
        "bench": "encoder",
        "shape": dict(SHAPE, n_layers=layers, batch=batch, length=length, dtype="float32", padding="none"),
        "timing": dict(warmup=warmup, rounds=rounds, statistic="median over rounds of one forward per side"),
        **machine(),
        **against_hf(ours(batch, length, layers, onednn=onednn),
                     (lambda: huggingface(batch, length, layers)) if hf else None,
                     "sentences", batch, warmup, rounds),
    }
    if json_out:
        print(json.dumps(result))
    else:
        _print_table(result)
    return result


def _print_table(result: dict) -> None:
    s = result["shape"]
    print(f"encoder forward: {s['n_layers']} layers, d_model {s['d_model']}, {s['n_heads']} heads, "
          f"FFN {s['d_ff']}, batch {s['batch']} x {s['length']} tokens, {s['dtype']}, "
          f"{result['threads']} threads "
          f"(load {result['load_avg_1m']} on {result['cpus']} cpus)")
    for name in ("qkv", "hf"):
        if name in result:
            r = result[name]
            name = r["model"] + (f" ({r['linear']})" if "linear" in r else "")
            print(f"  {name:<34} median {r['sentences_per_s']:>8.2f} sentences/s   "
                  f"best {r['best_sentences_per_s']:>8.2f}")
    if "ratio" in result:
        print(f"  qkv / hf: {result['ratio']:.2f}x (median of per-round ratios), "
              f"{result['ratio_best']:.2f}x (best rounds)")
    if "note" in result:
        print(f"  note: {result['note']}")
