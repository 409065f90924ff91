"""Structured output: decoding constrained to JSON that matches a schema, one token mask per step.

Legend: V vocab, b bytes of the bitmask (one bit a token, in 32-bit words).

    schema ──llguidance──> grammar ──> matcher (per sequence)
    each step:  matcher ──> allowed_V (a bitmask over the whole vocabulary) ──> logits of the rest = -inf
                sampled token ──> matcher.consume_token; when the grammar is complete the sequence ends

The grammar engine is llguidance (the Rust library behind Guidance and llama.cpp's ``%llguidance``): it reads
the tokenizer's own ``tokenizers`` JSON, so every token, multi-byte pieces included, is judged by the bytes it
adds, and it needs neither transformers nor a GPU stack. ``bench/grammar_engines.py`` measures the maintained
engines on SmolLM2's 49k vocabulary (figures in bench/README.md): each costs a small fraction of a 135M model's
decode step per token, so the cost does not decide; xgrammar's Python package pulls triton and wants a
transformers tokenizer, and outlines-core wants the vocabulary rebuilt as bytes. The masked logits then go
through the ordinary samplers (``qkv.generate.next_token``), so temperature, top-p and the penalties keep their
meanings inside the grammar. Whitespace is compact (", " and ": " only): a small model cannot wander into
endless blank space that the schema allows. Nor into endless digits: JSON puts no bound on a number's length,
and at temperature 0 a small model can keep writing "0" for hundreds of tokens, so a run of digits stops at
MAX_DIGITS (llama.cpp's JSON grammars cap each part of a number at 16 digits too); the cap holds inside strings
as well, where such runs are as unlikely to be wanted.

    >>> qkv.generate(model, tok, "A person as JSON:", json_schema={"type": "object", "properties": {
    ...     "name": {"type": "string"}}, "required": ["name"]}, temperature=0)     # doctest: +SKIP
    '{"name": "Ada"}'
"""

from __future__ import annotations

import copy
import json

import torch

from .errors import InputError, require_extra

ANY_OBJECT = {"type": "object"}             # response_format {"type": "json_object"}
MAX_DIGITS = 16
DIGITS = "0123456789"
COMPACT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def require_grammar_engine():
    """llguidance, or the one-line error naming the serve extra (commands ask before any work)."""
    # not llguidance.torch: importing it sets up torch.compile (seconds)
    return require_extra("llguidance", "serve", "JSON-schema output")


def _ll_tokenizer(tokenizer, vocab_size: int):
    """llguidance's view of ``tokenizer`` (built once per tokenizer: it indexes every token, ~1 s for 50k)."""
    cached = getattr(tokenizer, "_ll_tokenizer", None)
    if cached is not None and cached[0] == vocab_size:
        return cached[1]
    llg = require_grammar_engine()
    backend = copy.copy(tokenizer.backend)
    backend.no_padding()
    backend.no_truncation()
    stops = list(tokenizer.stop_ids)
    if not stops:
        raise InputError("JSON-schema output needs a tokenizer with an eos token to end the reply")
    ll = llg.LLTokenizer(backend.to_str(), n_vocab=vocab_size, eos_token=stops)
    tokenizer._ll_tokenizer = (vocab_size, ll)
    return ll


def _leading_digits(tokenizer, vocab_size: int) -> tuple[list[str], torch.Tensor]:
    """Each token's text and how many digits it starts with (lead_V), built once per tokenizer."""
    cached = getattr(tokenizer, "_leading_digits", None)
    if cached is not None and len(cached[0]) == vocab_size:
        return cached
    texts = [tokenizer.decode([i]) if i < tokenizer.vocab_size else "" for i in range(vocab_size)]
    lead_V = torch.tensor([len(t) - len(t.lstrip(DIGITS)) for t in texts])
    tokenizer._leading_digits = (texts, lead_V)
    return texts, lead_V


def check_schema(schema) -> dict:
    """A JSON schema as a dict (from a dict or JSON text); InputError naming the problem otherwise."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as e:
            raise InputError(f"the JSON schema is not valid JSON: {e}") from None
    if not isinstance(schema, dict):
        raise InputError(f"a JSON schema must be a JSON object, got {type(schema).__name__}")
    return schema


def json_constraints(tokenizer, vocab_size: int, schema: dict | None):
    """A maker of fresh ``JsonConstraint``s for ``schema``, one per sequence, or None without a schema. The
    first is built here, so a schema that cannot be compiled fails before any decoding starts."""
    if schema is None:
        return None
    ready = [JsonConstraint(tokenizer, vocab_size, schema)]
    return lambda: ready.pop() if ready else JsonConstraint(tokenizer, vocab_size, schema)


class JsonConstraint:
    """One sequence's position in the grammar of ``schema``: ``mask`` the logits, ``advance`` by the
    sampled token, ``finished`` once the JSON value is complete."""

    def __init__(self, tokenizer, vocab_size: int, schema: dict | None = None):
        llg = require_grammar_engine()
        schema = check_schema(ANY_OBJECT if schema is None else schema)
        try:
            grammar = llg.LLMatcher.grammar_from_json_schema(schema, overrides=COMPACT)
        except ValueError as e:
            raise InputError(f"the JSON schema cannot be compiled: {e}") from None
        self.matcher = llg.LLMatcher(_ll_tokenizer(tokenizer, vocab_size), grammar, log_level=0)
        if self.matcher.is_error():
            raise InputError(f"the JSON schema cannot be used: {self.matcher.get_error()}")
        self.vocab_size = vocab_size
        self._bits_8 = torch.arange(8, dtype=torch.uint8)
        self._texts, self._lead_V = _leading_digits(tokenizer, vocab_size)
        self.digit_run = 0                          # digits at the end of the text so far

    def allowed(self) -> torch.Tensor:
        """allowed_V: True for the tokens the grammar accepts next (the bitmask's bit j of byte k is token
        8k + j: little-endian 32-bit words)."""
        bitmask_b = torch.frombuffer(bytearray(self.matcher.compute_bitmask()), dtype=torch.uint8)
        allowed_V = ((bitmask_b[:, None] >> self._bits_8) & 1).flatten()[:self.vocab_size].bool()
        capped_V = allowed_V & ((self._lead_V == 0) | (self.digit_run + self._lead_V <= MAX_DIGITS))
        return capped_V if capped_V.any() else allowed_V   # (the grammar may need a digit: it wins)

    def mask(self, logits_1V: torch.Tensor) -> torch.Tensor:
        allowed_V = self.allowed().to(logits_1V.device)
        return logits_1V.masked_fill(~allowed_V, float("-inf"))

    def advance(self, token_id: int) -> None:
        if not self.matcher.consume_token(token_id):
            raise InputError(f"token {token_id} breaks the JSON grammar: {self.matcher.get_error()}")
        text = self._texts[token_id] if token_id < len(self._texts) else ""
        trailing = len(text) - len(text.rstrip(DIGITS))
        self.digit_run = self.digit_run + trailing if trailing == len(text) else trailing

    @property
    def finished(self) -> bool:
        return self.matcher.is_stopped()
