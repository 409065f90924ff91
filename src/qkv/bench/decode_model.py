"""Decoding a real model (``qkv bench decode --model PATH``): prefill and batch-1 decode tokens/s of qkv in
float32, int8 and 4-bit, next to transformers (float32, its own cache) and llama.cpp (llama-cpp-python on
the same GGUF file), at the same thread counts, prompt and number of new tokens, in one process.

    prefill tokens/s = prompt length / time to the first new token
    decode tokens/s  = (new tokens - 1) / time from the first new token to the last        (greedy, eos ignored)

The prompt is the first ``prompt_len`` tokens of the bundled tiny shakespeare. qkv runs as ``qkv generate``
does (``iter_ids``); transformers as its users get it (``generate``; decode time = a run of n tokens minus a
run of 1, both with the prefill); llama.cpp through its Python binding's ``eval`` (the C++ engine, one call
per token). llama-cpp-python is optional (``pip install 'qkv[bench]'``, a few minutes of C++ build); without
it that column is skipped and the result says so. Rounds alternate the order of the sides, so load from
other processes falls on all of them alike; figures are medians over rounds.

The bound: at batch 1 every weight is read once per new token, and so is the KV cache, so decode cannot
beat ``bandwidth / (weight bytes + cache bytes) per token`` (bandwidth measured by a 256 MiB copy at the
same thread count). Each side's bytes are its own: 4 per float32 weight, 1 per int8 weight (+ scales), 0.5
per 4-bit weight (+ scales and zeros), the GGUF file's tensor bytes for llama.cpp; the cache at its mean
length over the decode, float32 for transformers, float16 for llama.cpp (its default), and for qkv what
``cache_dtype`` (``--kv-cache-dtype``) says: float32 unless asked.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from ..generate import GenerationConfig, iter_ids
from .. import native
from ..native.fused import is_fused
from ..nn.kv_cache import CACHE_DTYPES
from ..quant import Int4Linear, Int8Linear, quantize_model
from ..runtime.inference import for_inference
from .decode import copy_bandwidth

PATHS = {32: "fp32", 8: "int8", 4: "4-bit"}


def weight_bytes(model) -> int:
    """Bytes of weights a decode step reads: every matrix the token passes through, each norm; of the
    embedding table only the head reads all of it (a tied head is the table, read once)."""
    total, seen = 0, set()
    for module in model.modules():
        tensors = []
        if isinstance(module, Int8Linear):
            tensors = [module.weight, module.scales]
        elif isinstance(module, Int4Linear):
            tensors = [module.weight, module.scales, module.zeros]   # as many bytes as the kernel's packing
        elif isinstance(module, (torch.nn.Linear, torch.nn.modules.normalization.RMSNorm)) or \
                type(module).__name__ in ("RMSNorm", "LayerNorm"):
            tensors = [module.weight]
        if tensors and isinstance(getattr(module, "bias", None), torch.Tensor):
            tensors.append(module.bias)
        for t in tensors:
            if id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
    return total


def cache_bytes(cfg, prompt_len: int, new_tokens: int, element_size: int) -> int:
    """Bytes of keys and values a decode step reads, at the mean cache length over ``new_tokens`` steps."""
    mean_length = prompt_len + new_tokens / 2
    return int(cfg.n_layers * 2 * cfg.kv_heads * cfg.head_dim * element_size * mean_length)


def _prompt_ids(tokenizer, prompt_len: int) -> list[int]:
    text = (Path(__file__).resolve().parents[1] / "data" / "shakespeare.txt").read_text(encoding="utf-8")
    ids = tokenizer.encode(text[: prompt_len * 8])[:prompt_len]
    if len(ids) < prompt_len:
        raise RuntimeError(f"the bundled text gives only {len(ids)} tokens")
    return ids


def _qkv_side(model, ids: list[int], new_tokens: int):
    model = for_inference(model)                         # as `qkv generate` runs it
    cfg = GenerationConfig(max_new_tokens=new_tokens, temperature=0, ignore_eos=True)
    prompt_BL = torch.tensor([ids])

    def run() -> tuple[float, float]:
        t0 = time.perf_counter()
        steps = iter_ids(model, prompt_BL, cfg)
        next(steps)
        t1 = time.perf_counter()
        n = 1 + sum(1 for _ in steps)
        t2 = time.perf_counter()
        assert n == new_tokens
        return len(ids) / (t1 - t0), (new_tokens - 1) / (t2 - t1)
    return run


def _hf_side(path: Path, ids: list[int], new_tokens: int):
    import transformers
    if path.suffix == ".gguf":
        model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(path)
    model = model.eval()                              # float32 already (a GGUF load refuses .float())
    prompt_BL = torch.tensor([ids])

    def gen(n: int) -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(prompt_BL, attention_mask=torch.ones_like(prompt_BL), max_new_tokens=n,
                                 min_new_tokens=n, do_sample=False, pad_token_id=0)
        assert out.shape[1] == len(ids) + n
        return time.perf_counter() - t0

    def run() -> tuple[float, float]:
        one = gen(1)
        return len(ids) / one, (new_tokens - 1) / max(gen(new_tokens) - one, 1e-9)
    info = dict(model=f"transformers {type(model).__name__}.generate", version=transformers.__version__,
                weight_bytes=weight_bytes(model))
    return run, info


def llama_cpp_worker(path: Path):
    """A function that sends one request to llama.cpp in a worker process (``llama_cpp_worker.py`` says why
    and what it answers), and the version; ImportError when llama-cpp-python is not installed."""
    import importlib.util
    import subprocess
    import sys
    if importlib.util.find_spec("llama_cpp") is None:
        raise ImportError("llama_cpp")
    worker = subprocess.Popen([sys.executable, str(Path(__file__).with_name("llama_cpp_worker.py"))],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(request: dict) -> dict:
        worker.stdin.write(json.dumps({"model": str(path), **request}) + "\n")
        worker.stdin.flush()
        line = worker.stdout.readline()
        if not line:
            raise RuntimeError(f"the llama.cpp worker stopped (exit status {worker.wait()})")
        return json.loads(line)
    return ask, ask({"version": True})["version"]


def _llama_cpp_side(path: Path, ids: list[int], new_tokens: int, threads: int):
    """llama.cpp's prefill and decode rates on ``ids``; ImportError when it is not installed."""
    ask, version = llama_cpp_worker(path)

    def run() -> tuple[float, float]:
        r = ask({"ids": ids, "new_tokens": new_tokens, "threads": threads})
        return r["prefill"], r["decode"]
    from ..interop.gguf import GGUFFile
    size = sum(int(t.n_bytes) for t in GGUFFile(path).tensors.values())
    return run, dict(model="llama.cpp (llama-cpp-python Llama.eval, own process)",
                     version=version, weight_bytes=size)


def run(model_path: str, json_out: bool = False, bits=(32, 8, 4), prompt_len: int = 512, new_tokens: int = 64,
        rounds: int = 3, threads=(1, 2), hf: bool = True, llama_cpp: bool = True, cache_dtype: str = "float32") -> dict:
    """Measure every side at every thread count; print a table or one JSON line; return the result."""
    from ..interop import is_gguf
    from ..loading import load
    path = Path(model_path)
    base = load(path)
    ids = _prompt_ids(base.tokenizer, prompt_len)
    if prompt_len + new_tokens > base.cfg.max_len:
        raise RuntimeError(f"prompt {prompt_len} + {new_tokens} new tokens exceed the model's {base.cfg.max_len}")
    sides, notes = {}, []
    for b in bits:
        if b == 32:
            model = base
        elif b == 4 and is_gguf(path):
            model = load(path, quantized=True)            # the file's own 4-bit blocks
        else:
            model = load(path)
            quantize_model(model, b)
        model.cache_dtype = CACHE_DTYPES[cache_dtype]
        sides[f"qkv_{PATHS[b]}"] = (_qkv_side(model, ids, new_tokens), dict(
            model=f"qkv {PATHS[b]}" + (" (the file's blocks)" if b == 4 and is_gguf(path) else ""),
            weight_bytes=weight_bytes(model), fused_decode=is_fused(model)))   # for_inference's swap took it
    if hf:
        try:
            sides["transformers_fp32"] = _hf_side(path, ids, new_tokens)
        except ImportError:
            notes.append("transformers is not installed: its column is skipped")
    results = {}
    for t in threads:
        torch.set_num_threads(t)
        these = dict(sides)
        if llama_cpp and is_gguf(path):
            try:
                these["llama_cpp"] = _llama_cpp_side(path, ids, new_tokens, t)
            except ImportError:
                if not notes or "llama" not in notes[-1]:
                    notes.append("llama-cpp-python is not installed (pip install 'qkv[bench]'): its column is skipped")
        for fn, _ in these.values():
            fn()                                          # warm up
        per = {name: [] for name in these}
        bandwidths = []
        for r in range(rounds):
            bandwidths.append(copy_bandwidth(repeats=3))
            for name in (list(these) if r % 2 == 0 else list(these)[::-1]):
                per[name].append(these[name][0]())
        bandwidth = statistics.median(bandwidths)
        row = {}
        for name, (_, info) in these.items():
            prefill = statistics.median(p for p, _ in per[name])
            decode = statistics.median(d for _, d in per[name])
            element = {"llama_cpp": 2, "transformers_fp32": 4}.get(name, CACHE_DTYPES[cache_dtype].itemsize)
            cache = cache_bytes(base.cfg, len(ids), new_tokens, element)
            bound = bandwidth / (info["weight_bytes"] + cache)
            row[name] = dict(prefill_tokens_per_s=round(prefill, 1), decode_tokens_per_s=round(decode, 2),
                             bound_tokens_per_s=round(bound, 1), fraction_of_bound=round(decode / bound, 3),
                             weight_mb=round(info["weight_bytes"] / 1e6, 1), cache_mb=round(cache / 1e6, 1),
                             rounds=[[round(p, 1), round(d, 2)] for p, d in per[name]])
        results[str(t)] = dict(sides=row, bandwidth_gb_s=round(bandwidth / 1e9, 2))
    first = results[str(threads[0])]["sides"]
    headline = next(n for n in ("qkv_4-bit", "qkv_int8", "qkv_fp32") if n in first)
    result = {"bench": "decode", "model": str(path), "tokens_per_s": first[headline]["decode_tokens_per_s"],
              "headline": f"{headline} decode, {threads[0]} thread(s)",
              "ratio": round(first[headline]["decode_tokens_per_s"]
                             / first["transformers_fp32"]["decode_tokens_per_s"], 3)
              if "transformers_fp32" in first else None,
              "threads": results, "prompt_len": prompt_len, "new_tokens": new_tokens, "rounds": rounds,
              "kv_cache_dtype": cache_dtype,
              "sides": {name: info for name, (_, info) in sides.items()}, "notes": notes,
              "load_avg_1m": round(os.getloadavg()[0], 2), "torch": torch.__version__,
              "cpu": _cpu_name(), "cpu_flags": torch.backends.cpu.get_cpu_capability(),
              "quantized_kernels": native.variant()}
    if json_out:
        print(json.dumps(result))
    else:
        _print_table(result)
    return result


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _print_table(r: dict) -> None:
    print(f"{r['model']}: prompt {r['prompt_len']} tokens, {r['new_tokens']} new, greedy, batch 1, qkv's KV "
          f"cache {r['kv_cache_dtype']} "
          f"({r['cpu']}, {r['cpu_flags']}, quantized kernels {r['quantized_kernels']}, load {r['load_avg_1m']})")
    for t, row in r["threads"].items():
        print(f"  {t} thread(s), copy bandwidth {row['bandwidth_gb_s']} GB/s")
        print(f"    {'side':<20}{'prefill tok/s':>14}{'decode tok/s':>14}{'bound':>9}{'of bound':>10}"
              f"{'MB/token':>10}{'of it cache':>12}")
        for name, s in row["sides"].items():
            print(f"    {name:<20}{s['prefill_tokens_per_s']:>14.1f}{s['decode_tokens_per_s']:>14.2f}"
                  f"{s['bound_tokens_per_s']:>9.1f}{s['fraction_of_bound']:>10.0%}"
                  f"{s['weight_mb'] + s['cache_mb']:>10.1f}{s['cache_mb']:>12.1f}")
    for note in r["notes"]:
        print(f"  note: {note}")
