"""Beam search against greedy search, seconds per sentence, in the same run (target: beam 4 <= 2x greedy).

Both searches translate the same sentences with the same model: the first ``--sentences`` lines of the
Multi30k test set (``../shared/data/multi30k/test_2016_flickr.de``) with a trained checkpoint, or random
token sources with a random model of the ``multi30k`` preset's shape (outputs then run to
``--max-new-tokens``, the same budget for both). Batched: ``--batch`` sources per call, so a beam-4 call
decodes 4x as many rows as a greedy one; the cross-attention keys/values are projected once per source in
both. Rounds alternate which search goes first; the figure is the median over rounds.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from ..config import PRESETS, ModelConfig
from ..models import EncoderDecoder
from ..translate import SearchConfig, beam_search

TEST_SET = Path("../shared/data/multi30k/test_2016_flickr.de")


def _sources(model, n: int, batch: int, seed: int = 0):
    """Padded source batches: real sentences when the model has a tokenizer and the test set is present."""
    tokenizer = getattr(model, "src_tokenizer", None) or getattr(model, "tokenizer", None)
    if tokenizer is not None and TEST_SET.is_file():
        rows = [tokenizer.encode(line) for line in TEST_SET.read_text(encoding="utf-8").splitlines()[:n]]
    else:
        g = torch.Generator().manual_seed(seed)
        rows = [torch.randint(3, model.cfg.vocab_size, (int(k),), generator=g).tolist()
                for k in torch.randint(8, 24, (n,), generator=g)]
    pad = getattr(tokenizer, "pad_id", None) or 0
    batches = []
    for i in range(0, n, batch):
        chunk = rows[i:i + batch]
        S = max(map(len, chunk))
        src_BS = torch.tensor([r + [pad] * (S - len(r)) for r in chunk])
        mask_BS = torch.arange(S)[None] < torch.tensor([len(r) for r in chunk])[:, None]
        batches.append((src_BS, mask_BS))
    return batches


def run(as_json: bool, checkpoint: str | None = None, sentences: int = 64, batch: int = 16, beam: int = 4,
        rounds: int = 3, max_new_tokens: int = 40, threads: int | None = None) -> dict:
    if threads:
        torch.set_num_threads(threads)
    if checkpoint:
        from ..loading import load
        from ..runtime.inference import for_inference
        model = for_inference(load(checkpoint))
    else:
        torch.manual_seed(0)
        model = EncoderDecoder(ModelConfig(**PRESETS["multi30k"]["model"], vocab_size=8000)).eval()
    bos, eos = (model.tokenizer.bos_id, model.tokenizer.eos_id) if getattr(model, "tokenizer", None) else (1, 2)
    batches = _sources(model, sentences, batch)
    configs = {"greedy": SearchConfig(beam_size=1, max_new_tokens=max_new_tokens),
               f"beam{beam}": SearchConfig(beam_size=beam, max_new_tokens=max_new_tokens)}

    def timed(cfg):
        start = time.perf_counter()
        for src_BS, mask_BS in batches:
            beam_search(model, src_BS, mask_BS, bos, eos, cfg)
        return (time.perf_counter() - start) / sentences

    timed(configs["greedy"])                                    # warm up allocators and kernels
    times = {name: [] for name in configs}
    for r in range(rounds):
        order = list(configs) if r % 2 == 0 else list(reversed(configs))
        for name in order:
            times[name].append(timed(configs[name]))
    per_sentence = {name: statistics.median(t) for name, t in times.items()}
    result = {"bench": "beam", "checkpoint": checkpoint, "sentences": sentences, "batch": batch,
              "max_new_tokens": max_new_tokens, "threads": torch.get_num_threads(), "rounds": rounds,
              "s_per_sentence": {k: round(v, 5) for k, v in per_sentence.items()},
              "beam_over_greedy": round(per_sentence[f"beam{beam}"] / per_sentence["greedy"], 3)}
    if as_json:
        print(json.dumps(result))
    else:
        for name, s in per_sentence.items():
            print(f"{name:>8}: {1000 * s:8.2f} ms/sentence")
        print(f"beam {beam} / greedy = {result['beam_over_greedy']:.2f}x (target <= 2x)")
    return result
