"""The decode loop of ``qkv serve``: one thread owns the model and batches every request continuously.

    submit(seq) ─> waiting (bounded: QueueFull past max_queue, which the server answers with 429)
    loop:  admit: take waiting sequences into the free rows (max_batch in all), prefill their prompts in
                  one left-padded forward, sample each first token, and add them to the running rows
           step:  one forward of every running row's last token (``BatchRows``), then each row samples
                  with its OWN parameters, penalties and seeded generator (``qkv.generate.next_token``)
           leave: a row that hit eos, a stop string or its token budget, or whose client went away
                  (``seq.cancel()``), is dropped before the next step

A row computes what it would alone (positions over real tokens only, right-aligned rows with a padding
mask, see ``rows``), and its generator is private, so its tokens do not depend on who else is in the batch: a test
checks greedy and seeded replies against ``qkv.generate`` on the same prompt. Short requests leave as
soon as they finish, so they are never held behind long ones.

Events go to ``seq.emit`` from the engine thread (the server hands them to its event loop): one ``Token``
per sampled token, then one ``Finish`` or ``Failure``. An exception while serving one sequence fails that
sequence alone; one in a batched forward fails the rows in that batch, and the loop goes on.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import QkvError
from ..generate import GenerationConfig, Penalties, next_token
from ..logprobs import token_logprobs
from ..padding import pad_left
from ..text_stream import TextStream
from .rows import BatchRows

log = logging.getLogger("qkv.serve")


class QueueFull(QkvError):
    """More sequences are waiting than ``max_queue`` allows."""


@dataclass
class Token:
    id: int
    text: str                                 # the text this token releases ('' while a character or a
    logprob: float | None = None              # possible stop string is incomplete)
    top: list[tuple[int, float]] | None = None
    ends_turn: bool = False                   # an eos / end-of-turn id: not part of the text


@dataclass
class Finish:
    reason: str                               # "stop" (eos or a stop string) or "length"
    completion_tokens: int


@dataclass
class Failure:
    message: str


@dataclass(eq=False)
class Sequence:
    """One text to generate. ``logprobs``: report each sampled token's log-probability, with the
    ``top_logprobs`` most likely alternatives (``qkv.logprobs``); ``constraint``: an object with
    ``mask(logits_1V)`` and ``advance(token_id)`` (structured output). logit_bias is ``cfg.logit_bias``.
    ``context``: ids the text continues (a completion's last prompt token; ``qkv.text_stream.TextStream``)."""
    prompt_ids: list[int]
    cfg: GenerationConfig
    emit: Callable[[object], None] | None = None      # set before submit: where the events go
    logprobs: bool = False
    top_logprobs: int = 0
    constraint: object | None = None
    context: list[int] = field(default_factory=list)
    submitted_at: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    cancelled: bool = False

    def cancel(self) -> None:
        """Leave at the next step (a client that went away); read by the engine thread only."""
        self.cancelled = True


class _Running:
    """A sequence's decoding state while it holds a row."""

    def __init__(self, seq: Sequence, model, device):
        self.seq, self.cfg = seq, seq.cfg
        tokenizer = model.tokenizer
        self.stop_ids = () if seq.cfg.ignore_eos else tokenizer.stop_ids
        self.stream = TextStream(tokenizer, seq.cfg.stops, context=seq.context)
        self.penalties = Penalties(seq.cfg, torch.tensor([seq.prompt_ids], device=device), model.cfg.vocab_size)
        self.generator = torch.Generator(device).manual_seed(seq.cfg.seed) if seq.cfg.seed is not None else None
        self.generated = 0
        self.next_id: int | None = None
        self.done = False

    def choose(self, logits_1V: torch.Tensor) -> None:
        """Sample this row's next token from its logits, emit it, and note whether the row is done."""
        seq, cfg = self.seq, self.cfg
        model_1V = logits_1V = logits_1V.float()         # the model's own, for log-probabilities
        if seq.constraint is not None:
            logits_1V = seq.constraint.mask(logits_1V)
        next_1 = next_token(logits_1V, cfg, self.penalties.seen_BV, self.penalties.counts_BV, self.generator)
        t = int(next_1[0])
        self.penalties.record(next_1)
        if seq.constraint is not None:
            seq.constraint.advance(t)
        self.generated += 1
        text, reason = self.stream.take(t, self.stop_ids, seq.constraint), None
        if self.stream.done:                      # eos, a stop string, or the JSON value is complete
            reason = "stop"
        elif self.generated >= cfg.max_new_tokens:
            text, reason = text + self.stream.finish(), "length"
        logprob = top = None
        if seq.logprobs:
            scored = token_logprobs(model_1V, next_1, seq.top_logprobs)[0]
            logprob, top = scored.logprob, list(scored.top) if seq.top_logprobs else None
        if seq.first_token_at is None:
            seq.first_token_at = time.monotonic()
        seq.emit(Token(t, text, logprob, top, ends_turn=t in self.stop_ids))
        self.next_id = t
        if reason is not None:
            self.done = True
            seq.emit(Finish(reason, self.generated))


class Engine:
    def __init__(self, model, max_batch: int = 8, max_queue: int = 64):
        self.model, self.max_batch, self.max_queue = model, max_batch, max_queue
        self.device = next(model.parameters()).device
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.running: list[_Running] = []
        self.rows = BatchRows(model)
        self.wake = threading.Condition()
        self.stopping = False
        self.threads = torch.get_num_threads()    # torch's thread setting is per thread: carry it over
        self.tokens_generated = 0                 # read by /metrics
        self.on_first_token: Callable[[float], None] | None = None     # seconds from submit to first token
        self.on_tokens: Callable[[int], None] | None = None            # tokens sampled (for a rate)
        self.thread = threading.Thread(target=self._loop, name="qkv-engine", daemon=True)

    # ---- the request side (any thread) ----------------------------------------------------------------
    def start(self) -> "Engine":
        self.thread.start()
        return self

    def stop(self, timeout: float | None = 10.0) -> None:
        with self.wake:
            self.stopping = True
            self.wake.notify()
        if self.thread.is_alive():
            self.thread.join(timeout)

    def submit(self, seqs: list[Sequence]) -> None:
        """Queue sequences (all or none); QueueFull when the queue has no room for them."""
        with self.wake:
            if any(s.emit is None for s in seqs):
                raise ValueError("set seq.emit (where its events go) before submitting it")
            if self.stopping:
                raise QueueFull("the server is shutting down")
            if len(self.waiting) + len(seqs) > self.max_queue:
                raise QueueFull(f"{len(self.waiting)} sequences are waiting and the queue holds {self.max_queue}; "
                                f"retry later")
            self.waiting.extend(seqs)
            self.wake.notify()

    @property
    def queue_length(self) -> int:
        return len(self.waiting)

    @property
    def batch_size(self) -> int:
        return len(self.running)

    # ---- the engine thread ----------------------------------------------------------------------------
    def _loop(self) -> None:
        torch.set_num_threads(self.threads)
        with torch.inference_mode():
            while True:
                with self.wake:
                    while not self.stopping and not self.waiting and not self.running:
                        self.wake.wait()
                    if self.stopping:
                        break
                try:
                    self._admit()
                    self._leave()
                    if self.running:
                        self._step()
                        self._leave()
                except Exception as e:         # a bug outside one request: fail the batch, keep serving
                    log.exception("the decode loop failed")
                    for r in self.running:
                        _emit(r.seq, Failure(f"{type(e).__name__}: {e}"))
                    self.running, self.rows = [], BatchRows(self.model)
        for seq in [r.seq for r in self.running] + list(self.waiting):
            _emit(seq, Failure("the server is shutting down"))

    def _admit(self) -> None:
        """Take waiting sequences into the free rows: prefill them together (left-padded), sample each
        one's first token, and add the unfinished ones to the batch."""
        joining = []
        with self.wake:
            while self.waiting and len(self.running) + len(joining) < self.max_batch:
                seq = self.waiting.popleft()
                if not seq.cancelled:
                    joining.append(seq)
        rows = []
        for seq in joining:
            try:
                rows.append(_Running(seq, self.model, self.device))
            except Exception as e:             # this sequence alone fails
                log.exception("request failed before prefill")
                _emit(seq, Failure(f"{type(e).__name__}: {e}"))
        if not rows:
            return
        try:
            caches, logits_BV = self._prefill([r.seq.prompt_ids for r in rows])
            groups = [(rows, caches, logits_BV)]
        except Exception:                      # find the one that fails: each alone
            groups = []
            for r in rows:
                try:
                    groups.append(([r], *self._prefill([r.seq.prompt_ids])))
                except Exception as e:
                    log.exception("request failed during prefill")
                    _emit(r.seq, Failure(f"{type(e).__name__}: {e}"))
        for group, caches, logits_BV in groups:
            joined = []
            for b, row in enumerate(group):
                try:
                    row.choose(logits_BV[b:b + 1])
                except Exception as e:
                    log.exception("request failed while sampling")
                    _emit(row.seq, Failure(f"{type(e).__name__}: {e}"))
                    continue
                self._count(row)
                if not row.done:
                    joined.append(b)
            # running first: should adding the rows fail, the loop fails them with the batch (else their
            # clients would wait for an event that never comes)
            self.running += [group[b] for b in joined]
            self.rows.add(caches, [len(r.seq.prompt_ids) for r in group], joined)

    def _prefill(self, prompts: list[list[int]]):
        """One forward over left-padded prompts: (their caches, logits_BV of each one's last position)."""
        ids_BL, key_mask_BL = pad_left(prompts, 0, self.device)
        caches = self.model.new_caches(*ids_BL.shape)
        mask = None if bool(key_mask_BL.all()) else key_mask_BL      # equal lengths: the mask-free path
        return caches, self.model(ids_BL, caches=caches, key_mask_BM=mask, last_only=True).logits[:, -1]

    def _step(self) -> None:
        ids_B1 = torch.tensor([[r.next_id] for r in self.running], device=self.device)
        try:
            logits_BV = self.rows.step(ids_B1)
        except Exception as e:                 # the batch's rows fail; the loop (and the server) goes on
            log.exception("a batched decode step failed")
            for r in self.running:
                r.done = True
                _emit(r.seq, Failure(f"{type(e).__name__}: {e}"))
            return
        for b, r in enumerate(self.running):
            try:
                r.choose(logits_BV[b:b + 1])
            except Exception as e:
                log.exception("request failed while sampling")
                r.done = True
                _emit(r.seq, Failure(f"{type(e).__name__}: {e}"))
            self._count(r)

    def _count(self, row: _Running) -> None:
        self.tokens_generated += 1
        if self.on_tokens is not None:
            self.on_tokens(1)
        if row.generated == 1 and self.on_first_token is not None:
            self.on_first_token(row.seq.first_token_at - row.seq.submitted_at)

    def _leave(self) -> None:
        keep = [b for b, r in enumerate(self.running) if not (r.done or r.seq.cancelled)]
        if len(keep) < len(self.running):
            self.running = [self.running[b] for b in keep]
            self.rows.keep(keep)


def _emit(seq: Sequence, event) -> None:
    try:
        seq.emit(event)
    except Exception:                          # a receiver that is gone must not stop the loop
        log.exception("could not deliver an event")
