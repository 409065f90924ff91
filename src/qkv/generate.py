"""Text generation: logits processors, the KV-cache decode loop, stop strings and streaming.

Legend: B batch, L prompt length, T prompt + new positions, M keys seen so far, V vocab, E a few chosen token
ids (stop ids, biased ids).

    prompt_BL ──prefill (one call, last position only)──> logits_BV
    loop: logits_BV ─> logit_bias ─> penalties ─> temperature ─> top-k ─> top-p ─> min-p ─> argmax | sample ─> next_B
          next_B ──decode step (L = 1 over M cached keys)──> logits_BV

Processors are pure functions of ``logits_BV`` applied in that fixed order. logit_bias is OpenAI's (a
fixed number added to a token's logit: -100 all but bans it, 100 all but forces it). The penalties follow two
published rules: repetition (Keskar et al., 2019, CTRL) divides a positive logit by ``p`` and multiplies
a negative one by ``p`` for every token already in the prompt or the output; presence/frequency (OpenAI's
API) subtract ``presence * (count > 0) + frequency * count`` over the generated tokens only. Temperature
0 means greedy: top-k/top-p/min-p never remove the argmax, so they are skipped.

Batches are LEFT padded (``key_mask_BL`` True for real tokens) so every row's next token sits in the last
column; the model counts positions over real tokens only, so each row decodes exactly as it would alone.

Text comes out incrementally: a piece is released only when it decodes cleanly (a multi-byte character
split across byte-level BPE tokens never shows as U+FFFD), and text that could still become a stop string
is held back until it cannot.

    >>> generate(model, tok, "ROMEO:", max_new_tokens=20, temperature=0.8, top_p=0.95, seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from contextlib import closing
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from .errors import InputError
from .grammar import json_constraints
from .logprobs import Completion, StepLogprobs
from .padding import pad_left
from .runtime import choose_python_api_threads
from .validation import check_fields
from .text_stream import TextStream, continuation_context


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 64               # new tokens only, the prompt not counted
    temperature: float = 1.0               # 0 = greedy; higher = more random
    top_k: int | None = None               # keep the k most likely tokens; None keeps all
    top_p: float = 1.0                     # nucleus: the smallest set whose probability reaches p; 1 = off
    min_p: float = 0.0                     # drop tokens below min_p * (top probability); 0 = off
    repetition_penalty: float = 1.0        # CTRL, multiplicative, prompt + output; 1 = off
    presence_penalty: float = 0.0          # OpenAI, additive, output only, -2..2
    frequency_penalty: float = 0.0         # OpenAI, additive per occurrence, output only, -2..2
    stop: tuple[str, ...] | list[str] | str = ()   # strings that end the text (never returned)
    ignore_eos: bool = False               # keep going past the tokenizer's eos token
    seed: int | None = None                # a private generator: same seed, same text (default: a fresh
                                           # one each run)
    use_cache: bool = True                 # False recomputes the whole sequence each step (for comparison)
    json_schema: dict | None = None        # the text is JSON matching this schema ({"type": "object"}: any
                                           # object); decoding is masked by its grammar (``qkv.grammar``)
    context_shift: bool = False            # past the model's context, drop the oldest half of the window
                                           # and go on (llama.cpp's --context-shift); see iter_ids
    logit_bias: dict[int, float] | None = None   # {token id: added to its logit}, each -100..100 (OpenAI's)

    def __post_init__(self):
        def bad(msg):
            raise InputError(msg)
        check_fields(self, error=InputError)            # types first; the ranges below say what each means
        if self.max_new_tokens < 0:
            bad(f"max_new_tokens={self.max_new_tokens} must be an integer >= 0")
        if self.temperature < 0:
            bad(f"temperature={self.temperature} must be >= 0 (0 = greedy, 1 = the model's distribution)")
        if self.top_k is not None and self.top_k < 1:
            bad(f"top_k={self.top_k} must be an integer >= 1; leave it unset (None) to keep every token")
        if not 0.0 < self.top_p <= 1.0:
            bad(f"top_p={self.top_p} must be in (0, 1]; use 1 to turn nucleus sampling off")
        if not 0.0 <= self.min_p <= 1.0:
            bad(f"min_p={self.min_p} must be in [0, 1]; use 0 to turn it off")
        if self.repetition_penalty <= 0:
            bad(f"repetition_penalty={self.repetition_penalty} must be > 0 (1 = off, 1.1-1.3 is typical)")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                bad(f"{name}={getattr(self, name)} must be between -2 and 2 (0 = off)")
        if not all(self.stops):
            bad(f"stop={self.stop!r} must be a list of non-empty strings")
        for token, bias in (self.logit_bias or {}).items():
            if not _is_int(token) or token < 0 or isinstance(bias, bool) or not isinstance(bias, (int, float)) \
                    or not -100 <= bias <= 100:
                bad(f"logit_bias {{{token!r}: {bias!r}}}: keys must be token ids (integers >= 0) and values "
                    f"numbers between -100 and 100")

    @property
    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def make_config(config: GenerationConfig | None = None, **params) -> GenerationConfig:
    """A config from keyword parameters (on top of ``config``), naming unknown keys."""
    names = {f.name for f in dataclasses.fields(GenerationConfig)}
    unknown = sorted(set(params) - names)
    if unknown:
        raise InputError(f"unknown generation parameter(s) {unknown}; valid: {sorted(names)}")
    return dataclasses.replace(config or GenerationConfig(), **params)


# ---- logits processors: pure functions, applied in this order ---------------------------------------
def add_logit_bias(logits_BV: torch.Tensor, bias: dict[int, float]) -> torch.Tensor:
    """OpenAI's logit_bias: each listed token's logit plus its bias (in float32, as the server always did)."""
    B, device = logits_BV.shape[0], logits_BV.device
    ids_E = torch.tensor(list(bias), dtype=torch.long, device=device)
    bias_BE = torch.tensor(list(bias.values()), dtype=torch.float32, device=device).expand(B, -1)
    return logits_BV.float().index_add(1, ids_E, bias_BE)


def repetition_penalty(logits_BV: torch.Tensor, seen_BV: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL: make every token already seen less likely, whatever the sign of its logit."""
    penalized_BV = torch.where(logits_BV > 0, logits_BV / penalty, logits_BV * penalty)
    return torch.where(seen_BV, penalized_BV, logits_BV)


def presence_frequency_penalty(logits_BV: torch.Tensor, counts_BV: torch.Tensor, presence: float,
                               frequency: float) -> torch.Tensor:
    """OpenAI: logit -= presence * (count > 0) + frequency * count, counts over generated tokens."""
    return logits_BV - presence * (counts_BV > 0) - frequency * counts_BV


def top_k_filter(logits_BV: torch.Tensor, k: int) -> torch.Tensor:
    kth_B1 = logits_BV.topk(min(k, logits_BV.shape[-1]), dim=-1).values[:, -1:]
    return logits_BV.masked_fill(logits_BV < kth_B1, float("-inf"))


def top_p_filter(logits_BV: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose total probability reaches p (Holtzman et al., 2020)."""
    sorted_BV, order_BV = logits_BV.sort(dim=-1, descending=True)
    probs_BV = sorted_BV.softmax(dim=-1)
    before_BV = probs_BV.cumsum(dim=-1) - probs_BV           # mass of the strictly more likely tokens
    drop_sorted_BV = before_BV >= p                          # the set already reached p without this one
    drop_BV = drop_sorted_BV.scatter(-1, order_BV, drop_sorted_BV)
    return logits_BV.masked_fill(drop_BV, float("-inf"))


def min_p_filter(logits_BV: torch.Tensor, min_p: float) -> torch.Tensor:
    """Drop tokens whose probability is below min_p times the top token's (Nguyen et al., 2024)."""
    probs_BV = logits_BV.softmax(dim=-1)
    return logits_BV.masked_fill(probs_BV < min_p * probs_BV.amax(dim=-1, keepdim=True), float("-inf"))


def next_token(logits_BV: torch.Tensor, cfg: GenerationConfig, seen_BV=None, counts_BV=None,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply the processors in order, then argmax (temperature 0) or sample. Returns next_B."""
    if cfg.logit_bias:
        logits_BV = add_logit_bias(logits_BV, cfg.logit_bias)
    if cfg.repetition_penalty != 1.0:
        logits_BV = repetition_penalty(logits_BV, seen_BV, cfg.repetition_penalty)
    if cfg.presence_penalty or cfg.frequency_penalty:
        logits_BV = presence_frequency_penalty(logits_BV, counts_BV, cfg.presence_penalty, cfg.frequency_penalty)
    if cfg.greedy:
        return logits_BV.argmax(dim=-1)
    logits_BV = logits_BV.float() / cfg.temperature
    if cfg.top_k is not None:
        logits_BV = top_k_filter(logits_BV, cfg.top_k)
    if cfg.top_p < 1.0:
        logits_BV = top_p_filter(logits_BV, cfg.top_p)
    if cfg.min_p > 0.0:
        logits_BV = min_p_filter(logits_BV, cfg.min_p)
    return torch.multinomial(logits_BV.softmax(dim=-1), 1, generator=generator)[:, 0]


class Penalties:
    """The token history the penalties read: ``seen_BV`` (prompt + output, for the repetition penalty) and
    ``counts_BV`` (output only, for presence/frequency); each None when its penalty is off."""

    def __init__(self, cfg: GenerationConfig, prompt_ids_BL: torch.Tensor, vocab_size: int,
                 key_mask_BL: torch.Tensor | None = None):
        B, L = prompt_ids_BL.shape
        device = prompt_ids_BL.device
        self.rows_B = torch.arange(B, device=device)
        self.seen_BV = self.counts_BV = None
        if cfg.repetition_penalty != 1.0:                       # prompt tokens count; padding does not
            real_BL = key_mask_BL.float() if key_mask_BL is not None else torch.ones(B, L, device=device)
            self.seen_BV = torch.zeros(B, vocab_size, device=device).scatter_add_(1, prompt_ids_BL, real_BL) > 0
        if cfg.presence_penalty or cfg.frequency_penalty:
            self.counts_BV = torch.zeros(B, vocab_size, device=device)

    def record(self, next_B: torch.Tensor) -> None:
        if self.seen_BV is not None:
            self.seen_BV[self.rows_B, next_B] = True
        if self.counts_BV is not None:
            self.counts_BV[self.rows_B, next_B] += 1


# ---- the decode loop ------------------------------------------------------------------------------------
def check_lengths(model, prompt_ids_BL: torch.Tensor, cfg: GenerationConfig) -> None:
    B, L = prompt_ids_BL.shape
    max_len = model.cfg.max_len
    if L == 0:
        raise InputError("the prompt is empty; give at least one token (text prompts start from eos)")
    if L > max_len:
        raise InputError(f"the prompt has {L} tokens but the model's context is max_len={max_len}; "
                         f"shorten the prompt")
    if L + cfg.max_new_tokens > max_len and not cfg.context_shift:
        raise InputError(f"prompt ({L} tokens) + max_new_tokens ({cfg.max_new_tokens}) = "
                         f"{L + cfg.max_new_tokens} exceeds the model's context max_len={max_len}; lower "
                         f"max_new_tokens (--max-new-tokens) to at most {max_len - L}, shorten the prompt, or "
                         f"let the window slide past the context (--context-shift, context_shift=True)")
    model.check_ids(prompt_ids_BL)                            # ids outside the vocabulary
    outside = [t for t in cfg.logit_bias or () if t >= model.cfg.vocab_size]
    if outside:
        raise InputError(f"logit_bias names token {outside[0]}, outside the vocabulary [0, {model.cfg.vocab_size})")


def _stop_tensor(eos_id: int | Sequence[int] | None, device) -> torch.Tensor | None:
    ids = [] if eos_id is None else [eos_id] if isinstance(eos_id, int) else list(eos_id)
    return torch.tensor(ids, dtype=torch.long, device=device) if ids else None


@torch.inference_mode()
def iter_ids(model, prompt_ids_BL: torch.Tensor, cfg: GenerationConfig,
             key_mask_BL: torch.Tensor | None = None, eos_id: int | Sequence[int] | None = None,
             caches: list | None = None, constraints: list | None = None,
             logprobs: StepLogprobs | None = None) -> Iterator[torch.Tensor]:
    """Yield next_B, one new token per row per step. ``eos_id`` is one id or several (chat models end a
    turn with any of a few); a row that produced one keeps yielding the first; the loop ends when every
    row has, or after ``cfg.max_new_tokens`` steps.

    caches: KV caches that already hold the first ``caches[0].length`` prompt positions (a chat keeps
    them between turns), with room for the rest and the new tokens; only the rest is prefilled.
    constraints: one per row (``qkv.grammar.JsonConstraint``): masks the row's logits until its grammar is
    complete; the loop also ends when every row's is.
    logprobs: before each yield, ``logprobs.last`` is set to each row's TokenLogprob (``qkv.logprobs``).

    Context shift (``cfg.context_shift``). When the window ``ids[start:M]`` would outgrow the model's
    context W, its oldest tokens are dropped, keeping the newest W // 2 (llama.cpp drops half as well), and
    the caches are refilled from the kept tokens in one forward call, at positions 0 .. W // 2 - 1. Every
    step thus computes exactly what the model computes on its window without a cache (the test holds
    them equal). llama.cpp instead re-rotates the cached keys to their new positions, which saves the
    refill but keeps states computed with the dropped tokens in view, and works for RoPE only; a refill
    works for every position scheme, learned positions included, since no position passes W - 1.
    """
    choose_python_api_threads()
    check_lengths(model, prompt_ids_BL, cfg)
    B, L = prompt_ids_BL.shape
    T, W = L + cfg.max_new_tokens, model.cfg.max_len
    device = next(model.parameters()).device
    ids_BT = torch.zeros(B, T, dtype=torch.long, device=device)   # the whole sequence, allocated once
    ids_BT[:, :L] = prompt_ids_BL
    key_mask_BT = None
    if key_mask_BL is not None and not bool(key_mask_BL.all()):  # all-real rows take the mask-free path
        key_mask_BT = torch.ones(B, T, dtype=torch.bool, device=device)
        key_mask_BT[:, :L] = key_mask_BL
    generator = torch.Generator(device).manual_seed(cfg.seed) if cfg.seed is not None else None
    penalties = Penalties(cfg, ids_BT[:, :L], model.cfg.vocab_size,
                          key_mask_BT[:, :L] if key_mask_BT is not None else None)
    stops_E = _stop_tensor(eos_id, device)
    stop_on_eos = stops_E is not None and not cfg.ignore_eos
    finished_B = torch.zeros(B, dtype=torch.bool, device=device)
    if caches is None and cfg.use_cache:
        caches = model.new_caches(B, min(T, W))
    elif caches is not None and cfg.context_shift:
        raise InputError("context_shift refills the caches iter_ids makes; with caches of your own (a chat's), "
                         "trim the conversation instead")
    elif caches is not None and (caches[0].length >= L or caches[0].max_len < T):
        raise InputError(f"the KV caches hold {caches[0].length} of the {L} prompt positions with room for "
                         f"{caches[0].max_len}; they must hold fewer than the prompt and have room for {T}")
    M, start = L, 0                                               # the window: columns start .. M - 1

    def forward() -> torch.Tensor:
        """Logits after ``ids[start:M]``, computing only the columns the caches do not hold yet."""
        nonlocal start
        if M - start > W:                                        # only with context_shift (check_lengths)
            start = M - max(1, W // 2)
            for cache in caches or ():
                cache.reset()
        first = start + (caches[0].length if caches else 0)
        mask_BM = key_mask_BT[:, start:M] if key_mask_BT is not None else None
        return model(ids_BT[:, first:M], caches=caches, key_mask_BM=mask_BM, last_only=True).logits[:, -1]

    if cfg.max_new_tokens == 0:
        return
    logits_BV = forward()                                        # prefill: the (rest of the) prompt in one call
    while True:
        model_BV = logits_BV                                     # the model's own, for log-probabilities
        if constraints is not None:
            logits_BV = torch.cat([row_1V if c.finished else c.mask(row_1V)
                                   for c, row_1V in zip(constraints, logits_BV.split(1))])
        next_B = next_token(logits_BV, cfg, penalties.seen_BV, penalties.counts_BV, generator)
        if logprobs is not None:
            logprobs.record(model_BV, next_B)
        if stop_on_eos:
            next_B = next_B.masked_fill(finished_B, int(stops_E[0]))
            finished_B |= torch.isin(next_B, stops_E)
        if constraints is not None:
            for c, t in zip(constraints, next_B.tolist()):
                if not c.finished:
                    c.advance(t)
        ids_BT[:, M] = next_B
        M += 1
        penalties.record(next_B)
        yield next_B
        if M == T or (stop_on_eos and bool(finished_B.all())) or \
                (constraints is not None and all(c.finished for c in constraints)):
            return
        logits_BV = forward()                                    # decode step: only the new token


def generate_ids(model, prompt_ids_BL: torch.Tensor, cfg: GenerationConfig | None = None,
                 key_mask_BM: torch.Tensor | None = None, eos_id: int | Sequence[int] | None = None) -> torch.Tensor:
    """New token ids, (B, n) with n <= max_new_tokens (the prompt is not included). With ``eos_id`` a row
    that finished holds ``eos_id`` from its eos on, and generation ends early once every row has."""
    steps = list(iter_ids(model, prompt_ids_BL, cfg or GenerationConfig(), key_mask_BM, eos_id))
    if not steps:
        return prompt_ids_BL.new_zeros(prompt_ids_BL.shape[0], 0)
    return torch.stack(steps, dim=1)


# ---- text ----------------------------------------------------------------------------------------------

def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """A text prompt's ids as ``qkv generate`` and the server's completions feed them."""
    if not isinstance(prompt, str):
        raise InputError(f"prompt must be a string, got {type(prompt).__name__}")
    ids = tokenizer.prompt_ids(prompt)            # bos first where the model expects it (Llama)
    if not ids:                                   # GPT-2's convention: an empty prompt starts from eos
        if tokenizer.eos_id is None:
            raise InputError("the prompt is empty and the tokenizer has no eos token to start from; "
                             "give a non-empty prompt")
        ids = [tokenizer.eos_id]
    return ids


def _texts(model, tokenizer, prompts: list[str], cfg: GenerationConfig,
           top_logprobs: int | None = None) -> Iterator[tuple[int, str, object]]:
    """Yield (row, piece, logprob) for each token of each unfinished row of a left-padded batch: the text it
    releases (often ''), and with ``top_logprobs`` (0 or more alternatives) its TokenLogprob, else None;
    None for an end-of-turn id too, which is no part of the text. Then the rows' last pieces."""
    rows = [encode_prompt(tokenizer, p) for p in prompts]
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else (tokenizer.eos_id or 0)
    device = next(model.parameters()).device
    ids_BL, key_mask_BL = pad_left(rows, pad, device)
    stop_ids = () if cfg.ignore_eos else tokenizer.stop_ids
    streams = [TextStream(tokenizer, cfg.stops, continuation_context(tokenizer, row)) for row in rows]
    make_constraint = json_constraints(tokenizer, model.cfg.vocab_size, cfg.json_schema)
    constraints = [make_constraint() for _ in rows] if make_constraint else None
    recorder = StepLogprobs(top_logprobs) if top_logprobs is not None else None
    with closing(iter_ids(model, ids_BL, cfg, key_mask_BL, tokenizer.stop_ids,
                          constraints=constraints, logprobs=recorder)) as steps:
        for next_B in steps:
            for b, t in enumerate(next_B.tolist()):
                if streams[b].done:                        # a finished row's later tokens are padding
                    continue
                piece = streams[b].take(t, stop_ids, constraints[b] if constraints else None)
                yield b, piece, recorder.last[b] if recorder is not None and t not in stop_ids else None
            if all(s.done for s in streams):
                return
    for b, s in enumerate(streams):
        piece = s.finish()
        if piece:
            yield b, piece, None


def stream(model, tokenizer, prompt: str, config: GenerationConfig | None = None, **params) -> Iterator[str]:
    """Yield the continuation of ``prompt`` piece by piece as it is produced."""
    cfg = make_config(config, **params)
    for _, piece, _ in _texts(model, tokenizer, [prompt], cfg):
        if piece:
            yield piece


def generate(model, tokenizer, prompt: str | list[str], config: GenerationConfig | None = None, *,
             logprobs: bool = False, top_logprobs: int = 0,
             **params) -> str | list[str] | Completion | list[Completion]:
    """The continuation of one prompt, or of each prompt in a list (batched, left padded).

    With ``logprobs=True`` each continuation comes as a ``qkv.logprobs.Completion``: its ``text`` and, per
    generated token, a ``TokenLogprob`` (the model's log-probability of it, with the ``top_logprobs`` most
    likely tokens), as the server's ``logprobs`` / ``top_logprobs`` report them."""
    cfg = make_config(config, **params)
    if not isinstance(prompt, (str, list, tuple)):
        raise InputError(f"prompt must be a string or a list of strings, got {type(prompt).__name__}")
    if not _is_int(top_logprobs) or not 0 <= top_logprobs <= model.cfg.vocab_size or (top_logprobs and not logprobs):
        raise InputError(f"top_logprobs={top_logprobs!r} must be an integer between 0 and the vocabulary size "
                         f"({model.cfg.vocab_size}), with logprobs=True")
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        return []
    texts, scores = [""] * len(prompts), [[] for _ in prompts]
    for b, piece, scored in _texts(model, tokenizer, prompts, cfg, top_logprobs if logprobs else None):
        texts[b] += piece
        if scored is not None:
            scores[b].append(scored)
    out = [Completion(t, s) for t, s in zip(texts, scores)] if logprobs else texts
    return out[0] if isinstance(prompt, str) else out
