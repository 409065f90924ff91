"""Decoding for encoder-decoders: greedy and beam search over a KV cache, and text in, text out.

Legend: B sources (in a beam search: the live ones), A beams per source, N = B*A decoder rows, J candidates
per source (2A), S source length, V vocab, T tokens so far.

Every search encodes the sources once and projects the cross-attention keys/values once (``Memory``);
each step then runs one new target token per row against the self-attention cache.

Beam search (as in Wu et al., 2016 and the common toolkits), batched: all B*A beams are rows of one decoder
batch. Each step scores every (beam, next token) pair by the beam's total log-probability, keeps the
2A best candidates per source, retires those ending in ``<eos>`` among the top A as finished hypotheses
(scored ``sum log p / length ** length_penalty``, length = generated tokens including ``<eos>``), and keeps
the A best others alive; the caches follow their parents with ``KVCache.reorder``. A source is done when it
has A finished hypotheses (``early_stopping``) or when no live beam can still beat its worst finished one.
A beam of 1 is greedy search, and a test holds the two equal.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import InputError
from .padding import pad_right
from .validation import check_fields, check_positive_int
from .models.seq2seq import EncoderDecoder


@dataclass(frozen=True)
class SearchConfig:
    beam_size: int = 4                  # 1 = greedy
    max_new_tokens: int | None = None   # None -> up to the model's positions
    length_penalty: float = 1.0         # > 1 favours longer outputs, < 1 shorter, 0 = raw log-probability
    early_stopping: bool = True         # stop a source at beam_size finished hypotheses
    use_cache: bool = True              # False recomputes the whole prefix each step (for tests)

    def __post_init__(self):
        check_fields(self, {"beam_size": "[1, inf)", "max_new_tokens": "[1, inf)"}, InputError)


def special_ids(tokenizer) -> tuple[int, int, int]:
    """(bos, eos, pad) ids, or an error naming the fix when the vocabulary lacks one."""
    missing = [name for name, i in (("<bos>", tokenizer.bos_id), ("<eos>", tokenizer.eos_id),
                                    ("<pad>", tokenizer.pad_id)) if i is None]
    if missing:
        raise InputError(f"the tokenizer has no {', '.join(missing)} token; an encoder-decoder needs <bos>, "
                         f"<eos> and <pad>: train its tokenizer with them as special tokens")
    return tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id


class _Steps:
    """One decoder step at a time, with or without the self-attention cache."""

    def __init__(self, model: EncoderDecoder, memory, rows: int, max_new: int, bos: int, use_cache: bool):
        self.model, self.memory = model, memory
        self.caches = model.new_caches(rows, max_new + 1) if use_cache else None
        device = model.head.weight.device
        self.history_NT = torch.full((rows, 1), bos, dtype=torch.long, device=device)   # <bos> + tokens

    def logprobs(self) -> torch.Tensor:
        ids_NT = self.history_NT[:, -1:] if self.caches else self.history_NT
        logits_NTV = self.model.decode(ids_NT, self.memory, self.caches, last_only=True)[0]
        return logits_NTV[:, -1].float().log_softmax(-1)

    def push(self, next_N: torch.Tensor, parent_N: torch.Tensor | None = None) -> None:
        if parent_N is not None:
            self.history_NT = self.history_NT[parent_N]
            for cache in self.caches or ():
                cache.reorder(parent_N)
        self.history_NT = torch.cat([self.history_NT, next_N[:, None]], 1)

    def keep(self, rows_N: torch.Tensor) -> None:
        """Drop every row not in ``rows_N`` (finished sources stop costing compute)."""
        self.history_NT = self.history_NT[rows_N]
        self.memory = self.memory.select(rows_N)
        for cache in self.caches or ():
            cache.select(rows_N)


def _budget(model: EncoderDecoder, cfg: SearchConfig) -> int:
    most = model.cfg.max_len - 1                       # the <bos> takes one position
    return min(cfg.max_new_tokens or most, most)


@torch.inference_mode()
def greedy_search(model: EncoderDecoder, src_BS: torch.Tensor, src_mask_BS: torch.Tensor | None, bos: int,
                  eos: int, cfg: SearchConfig = SearchConfig(beam_size=1)) -> list[list[int]]:
    """The most likely next token at every step. Returns the token ids per source, without <bos>/<eos>."""
    B = src_BS.shape[0]
    steps = _Steps(model, model.encode(src_BS, src_mask_BS), B, _budget(model, cfg), bos, cfg.use_cache)
    source_N = list(range(B))                          # the source each live row decodes
    results: list[list[int]] = [[] for _ in range(B)]
    for _ in range(_budget(model, cfg)):
        next_N = steps.logprobs().argmax(-1)
        steps.push(next_N)
        ended_N = next_N == eos
        if bool(ended_N.any()):
            for r in ended_N.nonzero().flatten().tolist():
                results[source_N[r]] = steps.history_NT[r, 1:-1].tolist()
            live = (~ended_N).nonzero().flatten()
            source_N = [source_N[r] for r in live.tolist()]
            if not source_N:
                break
            steps.keep(live)
    for r, b in enumerate(source_N):                   # out of budget: the tokens so far
        results[b] = steps.history_NT[r, 1:].tolist()
    return results


@torch.inference_mode()
def beam_search(model: EncoderDecoder, src_BS: torch.Tensor, src_mask_BS: torch.Tensor | None, bos: int,
                eos: int, cfg: SearchConfig = SearchConfig()) -> list[list[int]]:
    """The best finished hypothesis per source (token ids without <bos>/<eos>).

    Rows of sources that are done leave the batch, so B (the live sources) shrinks as the search goes.
    """
    B, A = src_BS.shape[0], cfg.beam_size
    if A == 1:
        return greedy_search(model, src_BS, src_mask_BS, bos, eos, cfg)
    device, lp = src_BS.device, cfg.length_penalty
    budget = _budget(model, cfg)
    steps = _Steps(model, model.encode(src_BS, src_mask_BS).repeat(A), B * A, budget, bos, cfg.use_cache)
    scores_BA = torch.zeros(B, A, device=device)
    scores_BA[:, 1:] = float("-inf")                   # all beams start equal: keep one until they differ
    source_B = list(range(B))                          # the source of each live group of A rows
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    rank_1J = torch.arange(2 * A, device=device)[None]
    beam_1A = torch.arange(A, device=device)[None]
    for t in range(1, budget + 1):
        B = len(source_B)
        logp_NV = steps.logprobs()
        V = logp_NV.shape[-1]
        total_BJ, flat_BJ = (scores_BA.reshape(-1, 1) + logp_NV).view(B, A * V).topk(2 * A, dim=1)
        beam_BJ, token_BJ = flat_BJ // V, flat_BJ % V
        is_eos_BJ = token_BJ == eos
        for a, c in (is_eos_BJ & (rank_1J < A)).nonzero().tolist():
            tokens = steps.history_NT[a * A + beam_BJ[a, c], 1:].tolist()
            finished[source_B[a]].append((total_BJ[a, c].item() / t ** lp, tokens))
        # The A best candidates that do not end here stay alive (at most A of the 2A can be <eos>).
        keep_BA = (is_eos_BJ * (2 * A) + rank_1J).argsort(dim=1)[:, :A]
        scores_BA = total_BJ.gather(1, keep_BA)
        parent_N = (torch.arange(B, device=device)[:, None] * A + beam_BJ.gather(1, keep_BA)).reshape(-1)
        steps.push(token_BJ.gather(1, keep_BA).reshape(-1), parent_N)
        live = []
        for a, b in enumerate(source_B):
            hyps = finished[b]
            if len(hyps) >= A:
                hyps.sort(key=lambda h: -h[0])
                del hyps[A:]
                if cfg.early_stopping or hyps[-1][0] >= scores_BA[a, 0].item() / t ** lp:
                    continue                           # done: no live beam can beat the A finished
            live.append(a)
        if len(live) < B:
            source_B = [source_B[a] for a in live]
            if not live:
                break
            live_B = torch.tensor(live, device=device)
            steps.keep((live_B[:, None] * A + beam_1A).reshape(-1))
            scores_BA = scores_BA[live_B]
    for a, b in enumerate(source_B):                   # out of budget: live beams compete as they are
        for beam in range(A):
            finished[b].append((scores_BA[a, beam].item() / budget ** lp,
                                steps.history_NT[a * A + beam, 1:].tolist()))
    return [max(hyps, key=lambda h: h[0])[1] for hyps in finished]


def translate(model: EncoderDecoder, texts: list[str], cfg: SearchConfig = SearchConfig(),
              batch_size: int = 32, truncate: bool = False) -> list[str]:
    """Translate (or summarize) ``texts`` with the model's tokenizers; returns detokenized outputs.

    Sources are batched by length and returned in input order. A source longer than the model's positions
    is an error, or cut to fit with ``truncate=True`` (for long documents in summarization).
    """
    check_positive_int("batch_size", batch_size)
    tokenizer = model.tokenizer
    src_tokenizer = getattr(model, "src_tokenizer", None) or tokenizer
    if tokenizer is None:
        raise InputError("the model has no tokenizer; load it with qkv.load from a checkpoint directory")
    bos, eos, pad = special_ids(tokenizer)
    encoded = src_tokenizer.encode_batch(texts)
    limit = model.cfg.max_len
    for i, ids in enumerate(encoded):
        if len(ids) > limit and not truncate:
            raise InputError(f"source {i} has {len(ids)} tokens but the model has {limit} positions; shorten "
                             f"it or truncate (--truncate)")
        if not ids:
            raise InputError(f"source {i} is empty; give some text to translate")
    encoded = [ids[:limit] for ids in encoded]
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    device = model.head.weight.device
    outputs: list[str] = [""] * len(texts)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        src_BS, src_mask_BS = pad_right([encoded[i] for i in rows], pad)
        src_mask_BS = src_mask_BS.to(device) if not bool(src_mask_BS.all()) else None   # no padding: unmasked
        results = beam_search(model, src_BS.to(device), src_mask_BS, bos, eos, cfg)
        for i, ids in zip(rows, results):
            outputs[i] = tokenizer.decode(ids).strip()
    return outputs
