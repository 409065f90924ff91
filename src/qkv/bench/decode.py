"""Decoding speed at batch 1: qkv's generation loop against transformers' ``generate`` and against the
memory-bandwidth bound, in the same process.

The shape is GPT-2 small (12 layers, 12 heads, d_model 768, vocabulary 50257, context 1024, GELU-tanh),
random weights, float32. Each run is a 32-token prompt and 128 new tokens, greedy, with the KV cache;
tokens/s = 128 / (time from the prompt to the 128th token), prefill included, for both libraries.

Why a bound: at batch 1 each new token multiplies one vector by every weight matrix, one multiply-add per
weight read, so the step waits on memory, not arithmetic. Every weight is read once per token; for a
tied model the head reads the whole V x C embedding, while the input lookup reads one row. So

    bound_tokens_per_s = bandwidth / weight bytes read per token

with the bandwidth measured here by copying a 256 MiB tensor (bytes read + bytes written, STREAM's convention)
under the same thread setting, once per round, median over rounds. KV-cache reads (< 2% of the weights at these
lengths) are left out, so the bound is slightly optimistic.

qkv runs as ``qkv generate`` does: ``for_inference`` (eval mode and, for this GPT, ``decode_layout``: wide
matrices stored column-major, which CPU BLAS streams faster), ``generate_ids``. The ``plain`` side is the
same in eval mode only.
Hugging Face runs as a user gets it: ``GPT2LMHeadModel(...).generate`` (eager, SDPA, DynamicCache).
Rounds alternate who goes first, so load from other processes falls on all sides alike; the figure is
the median over rounds.
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
from ..generate import GenerationConfig, generate_ids
from ..runtime.inference import for_inference
from ..models import GPT
from ..runtime import synchronize

SHAPE = dict(vocab_size=50257, max_len=1024, n_layers=12, d_model=768, n_heads=12, mlp="gelu_tanh")


def copy_bandwidth(nbytes: int = 256 * 2**20, repeats: int = 5, device: torch.device = torch.device("cpu")) -> float:
    """Bytes moved per second (read + write) copying one large float32 tensor; the best of ``repeats``."""
    src = torch.ones(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)                                    # touch every page before timing
    best = min(_time(lambda: dst.copy_(src), device) for _ in range(repeats))
    return 2 * nbytes / best


def weight_bytes_per_token(model: GPT) -> int:
    """Bytes of weights one decode step reads: everything except tables that are only indexed (the
    position table, and the token embedding unless the head reads it as its weight)."""
    indexed = {id(p) for p in model.pos.parameters()}
    if model.head.weight is not model.tok.weight:
        indexed.add(id(model.tok.weight))
    return sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in indexed)


def ours(prompt_BL: torch.Tensor, new_tokens: int, layout: bool, seed: int = 0) -> tuple[Callable, dict]:
    torch.manual_seed(seed)
    model = GPT(ModelConfig(**SHAPE)).to(prompt_BL.device).eval()
    if layout:
        for_inference(model)                          # as `qkv generate` runs it
    cfg = GenerationConfig(max_new_tokens=new_tokens, temperature=0)

    def run() -> int:
        return generate_ids(model, prompt_BL, cfg).shape[1]
    info = dict(model="qkv.GPT + qkv.generate.generate_ids", decode_layout=layout, params=model.num_params(),
                weight_bytes_per_token=weight_bytes_per_token(model))
    return run, info


def huggingface(prompt_BL: torch.Tensor, new_tokens: int, seed: int = 0) -> tuple[Callable, dict]:
    import transformers
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=SHAPE["vocab_size"], n_positions=SHAPE["max_len"],
                                  n_embd=SHAPE["d_model"], n_layer=SHAPE["n_layers"], n_head=SHAPE["n_heads"],
                                  activation_function="gelu_new", bos_token_id=None, eos_token_id=None,
                                  attn_implementation="sdpa")
    model = transformers.GPT2LMHeadModel(cfg).to(prompt_BL.device).eval()
    attention_mask_BL = torch.ones_like(prompt_BL)

    def run() -> int:
        with torch.inference_mode():
            out_BT = model.generate(prompt_BL, attention_mask=attention_mask_BL, max_new_tokens=new_tokens,
                                    do_sample=False, use_cache=True, pad_token_id=0)
        return out_BT.shape[1] - prompt_BL.shape[1]
    info = dict(model="transformers.GPT2LMHeadModel.generate", version=transformers.__version__,
                params=sum(p.numel() for p in model.parameters()), attn_implementation="sdpa")
    return run, info


def _time(fn: Callable, device: torch.device = torch.device("cpu")) -> float:
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def run(json_out: bool = False, *, prompt_len: int = 32, new_tokens: int = 128, rounds: int = 3,
        hf: bool = True, plain: bool = True, threads: int | None = None,
        device: torch.device = torch.device("cpu")) -> dict:
    """Time every side and return (and print) the result; with ``json_out`` print exactly one JSON line."""
    if threads is not None:
        torch.set_num_threads(threads)
    prompt_BL = torch.randint(0, SHAPE["vocab_size"], (1, prompt_len), generator=torch.Generator().manual_seed(0))
    prompt_BL = prompt_BL.to(device)
    sides: dict[str, tuple[Callable, dict]] = {"qkv": ours(prompt_BL, new_tokens, layout=True)}
    if plain and device.type == "cpu":                # decode_layout is a CPU-only change: nothing to compare
        sides["qkv_plain"] = ours(prompt_BL, new_tokens, layout=False)
    note = None
    if hf:
        try:
            sides["hf"] = huggingface(prompt_BL, new_tokens)
        except ImportError:
            note = "transformers is not installed: Hugging Face side skipped (pip install transformers)"
    for fn, _ in sides.values():                      # warm up: first-call allocations, lazy inits
        fn()
    per_round: dict[str, list[float]] = {name: [] for name in sides}
    bandwidths = []
    for r in range(rounds):
        # per round: the bound sees the same load as the runs
        bandwidths.append(copy_bandwidth(repeats=3, device=device))
        order = list(sides) if r % 2 == 0 else list(sides)[::-1]
        for name in order:
            fn = sides[name][0]
            t0 = time.perf_counter()
            made = fn()
            synchronize(device)
            per_round[name].append(made / (time.perf_counter() - t0))
            if made != new_tokens:                    # e.g. an eos slipped through: the rate would lie
                raise RuntimeError(f"{name} generated {made} tokens instead of {new_tokens}")
    bandwidth = statistics.median(bandwidths)
    weight_bytes = sides["qkv"][1]["weight_bytes_per_token"]
    bound = bandwidth / weight_bytes
    tok_s = {name: statistics.median(v) for name, v in per_round.items()}
    result = {
        "bench": "decode",
        "tokens_per_s": round(tok_s["qkv"], 2),
        "hf_tokens_per_s": round(tok_s["hf"], 2) if "hf" in tok_s else None,
        "ratio": round(tok_s["qkv"] / tok_s["hf"], 3) if "hf" in tok_s else None,
        "plain_tokens_per_s": round(tok_s["qkv_plain"], 2) if "qkv_plain" in tok_s else None,
        "bandwidth_gb_s": round(bandwidth / 1e9, 2),
        "weight_mb_per_token": round(weight_bytes / 1e6, 1),
        "bound_tokens_per_s": round(bound, 2),
        "fraction_of_bound": round(tok_s["qkv"] / bound, 3),
        "hf_fraction_of_bound": round(tok_s["hf"] / bound, 3) if "hf" in tok_s else None,
        "shape": dict(SHAPE, batch=1, prompt_len=prompt_len, new_tokens=new_tokens, dtype="float32",
                      sampling="greedy"),
        "timing": dict(rounds=rounds, statistic="median over rounds, prefill included",
                       rounds_tok_s={k: [round(x, 2) for x in v] for k, v in per_round.items()},
                       rounds_bandwidth_gb_s=[round(b / 1e9, 2) for b in bandwidths]),
        "sides": {name: info for name, (_, info) in sides.items()},
        "threads": torch.get_num_threads(),
        "load_avg_1m": round(os.getloadavg()[0], 2),   # > cores: other processes share them; expect noise
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }
    if note:
        result["note"] = note
    if json_out:
        print(json.dumps(result))
    else:
        _print_table(result)
    return result


def _print_table(r: dict) -> None:
    s = r["shape"]
    print(f"decode on {r['device']}, batch 1, GPT-2 small shape ({s['n_layers']} layers, d_model {s['d_model']}, vocab "
          f"{s['vocab_size']}), {s['prompt_len']}-token prompt + {s['new_tokens']} new, greedy, fp32, "
          f"{r['threads']} threads")
    print(f"  qkv (decode_layout)     {r['tokens_per_s']:8.2f} tok/s   {r['fraction_of_bound']:.0%} of the bound")
    if r["plain_tokens_per_s"] is not None:
        print(f"  qkv (plain layout)      {r['plain_tokens_per_s']:8.2f} tok/s")
    if r["hf_tokens_per_s"] is not None:
        print(f"  transformers generate   {r['hf_tokens_per_s']:8.2f} tok/s   {r['hf_fraction_of_bound']:.0%} "
              f"of the bound")
        print(f"  ratio qkv / hf: {r['ratio']:.2f}x")
    if r["load_avg_1m"] > os.cpu_count():
        print(f"  warning: load average {r['load_avg_1m']} > {os.cpu_count()} cores; other processes skew timings")
    print(f"  bound: {r['weight_mb_per_token']:.0f} MB of weights per token / {r['bandwidth_gb_s']:.1f} GB/s copy "
          f"bandwidth = {r['bound_tokens_per_s']:.1f} tok/s")
    if "note" in r:
        print(f"  note: {r['note']}")
