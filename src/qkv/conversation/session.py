"""A conversation with a chat model: the template renders the history, the reply streams, and the KV cache
carries over from turn to turn.

    >>> session = ChatSession(model, system="Answer in one sentence.")          # doctest: +SKIP
    >>> for piece in session.say("What is the capital of France?"): print(piece, end="")   # doctest: +SKIP
    >>> qkv.chat(model, [{"role": "user", "content": "Hi"}], temperature=0)     # doctest: +SKIP

Each turn renders the whole conversation (the template decides the layout) and tokenizes it; the cache
already holds the keys and values of the tokens the previous turn saw, so only the tokens after the
longest common prefix are computed (typically the end of the last reply and the new message). Where the
template lays out old turns differently once a new one is added, the shared prefix is shorter and more is
recomputed; the result is the same either way (a test compares it with a fresh computation).

A reply ends at an end-of-turn id (the tokenizer's eos and any extra stop ids), a stop string, or
``max_new_tokens``. When the conversation no longer fits the context, the oldest turns after the system
message are dropped, each user message with the replies to it, so that the conversation still opens with a
user message (``notices`` says so in one line); a single message longer than the context is an ``InputError``.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import torch

from ..errors import InputError
from ..generate import GenerationConfig, iter_ids, make_config
from ..grammar import json_constraints
from ..text_stream import TextStream
from .template import check_messages, render_chat

DEFAULT_CONTEXT = 4096          # cache positions allocated by default (the model's max_len when smaller)


class ChatSession:
    def __init__(self, model, tokenizer=None, system: str | None = None, context: int | None = None,
                 config: GenerationConfig | None = None):
        """context: KV-cache positions to allocate (default min(max_len, 4096)); config: the default sampling."""
        self.model, self.tokenizer = model, tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
        if self.tokenizer is None or self.tokenizer.chat_template is None:
            raise InputError("this model has no chat template (tokenizer_config.json's chat_template or the GGUF "
                             "tokenizer.chat_template); use `qkv generate --prompt` for plain continuation")
        max_len = model.cfg.max_len
        self.context = min(context or DEFAULT_CONTEXT, max_len)
        if context is not None and not 1 < context <= max_len:
            raise InputError(f"context={context} must be between 2 and the model's max_len={max_len}")
        self.system = system
        self.config = config or GenerationConfig()
        self.notices: list[str] = []
        self.reply_tokens = 0                                # tokens of the last reply (for speed figures)
        self.caches = None
        self.cached_ids: list[int] = []
        self.reset()

    def reset(self) -> None:
        """Forget the conversation (the system message stays)."""
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self.cached_ids = []
        if self.caches is not None:
            for c in self.caches:
                c.reset()

    def prompt_ids(self, messages: list[dict] | None = None) -> list[int]:
        """The token ids of the rendered conversation, ready for the assistant's turn."""
        tok = self.tokenizer
        text = render_chat(tok.chat_template, self.messages if messages is None else messages, True, tok.specials)
        return tok.encode(text)

    def _fit(self, max_new: int) -> tuple[list[int], int]:
        """Prompt ids and the new-token budget, dropping the oldest turns when the context is too small."""
        ids = self.prompt_ids()
        dropped = 0
        first = 1 if self.messages and self.messages[0]["role"] == "system" else 0
        while len(ids) + max_new > self.context and len(self.messages) - first > 1:
            del self.messages[first]                         # the oldest turn after the system message,
            dropped += 1
            while len(self.messages) - first > 1 and self.messages[first]["role"] != "user":
                del self.messages[first]                     # with the replies to it: templates such as
                dropped += 1                                 # Mistral's refuse a conversation that opens otherwise
            ids = self.prompt_ids()
        if dropped:
            self.notices.append(f"dropped the {dropped} oldest message(s) to fit the {self.context}-token context")
        if len(ids) >= self.context:
            raise InputError(f"the conversation needs {len(ids)} tokens but the context holds {self.context}; "
                             f"shorten the message or raise the context (--context, at most {self.model.cfg.max_len})")
        if len(ids) + max_new > self.context:
            self.notices.append(f"the reply is limited to {self.context - len(ids)} tokens by the "
                                f"{self.context}-token context")
        return ids, min(max_new, self.context - len(ids))

    def respond(self, config: GenerationConfig | None = None, **params) -> Iterator[str]:
        """Stream the assistant's reply to the conversation so far; it is appended to ``messages`` at the end."""
        cfg = make_config(config or self.config, **params)
        check_messages(self.messages)
        ids, max_new = self._fit(cfg.max_new_tokens)
        cfg = dataclasses.replace(cfg, max_new_tokens=max_new)
        if self.caches is None:
            self.caches = self.model.new_caches(1, self.context)
        shared = 0
        for a, b in zip(self.cached_ids, ids[:-1]):          # at least one new token must be computed
            if a != b:
                break
            shared += 1
        for c in self.caches:
            c.truncate(shared)
        stops = self.tokenizer.stop_ids
        stream, reply_ids, text = TextStream(self.tokenizer, cfg.stops), [], ""
        device = next(self.model.parameters()).device
        make_constraint = json_constraints(self.tokenizer, self.model.cfg.vocab_size, cfg.json_schema)
        constraint = make_constraint() if make_constraint else None
        steps = iter_ids(self.model, torch.tensor([ids], device=device), cfg, eos_id=stops, caches=self.caches,
                         constraints=[constraint] if constraint is not None else None)
        try:
            for next_B in steps:
                t = int(next_B[0])
                reply_ids.append(t)
                piece = stream.take(t, () if cfg.ignore_eos else stops, constraint)
                text += piece
                if piece:
                    yield piece
                if stream.done:
                    break
            piece = stream.finish()
            text += piece
            if piece:
                yield piece
        finally:
            steps.close()
            # a reply stopped mid-step (Ctrl-C) may leave the first layers one position ahead of the rest
            filled = min(c.length for c in self.caches)
            for c in self.caches:
                c.truncate(filled)
            self.cached_ids = (ids + reply_ids)[:filled]
            self.reply_tokens = len(reply_ids)
            if reply_ids:
                self.messages.append({"role": "assistant", "content": text})

    def say(self, text: str, config: GenerationConfig | None = None, **params) -> Iterator[str]:
        """Add a user message and stream the reply."""
        if not isinstance(text, str):
            raise InputError(f"a message must be a string, got {type(text).__name__}")
        self.messages.append({"role": "user", "content": text})
        return self.respond(config, **params)


def chat_stream(model, messages, config: GenerationConfig | None = None, tokenizer=None, **params) -> Iterator[str]:
    """Stream the assistant's reply to ``messages`` (a list of {"role", "content"} dicts), piece by piece."""
    messages = check_messages(messages)
    cfg = make_config(config, **params)
    session = ChatSession(model, tokenizer, config=cfg)
    session.messages = messages
    # one reply: a cache as long as this prompt and reply need, not the default context
    session.context = min(model.cfg.max_len, len(session.prompt_ids()) + max(cfg.max_new_tokens, 1))
    return session.respond()


def chat(model, messages, config: GenerationConfig | None = None, tokenizer=None, **params) -> str:
    """The assistant's reply to ``messages``; sampling as ``qkv.generate`` (``temperature=0`` is greedy)."""
    return "".join(chat_stream(model, messages, config, tokenizer, **params))
