"""OpenAI's API shapes: a request becomes prompt ids and ``Sequence``s; engine events become responses and
server-sent-event chunks shaped as OpenAI's (and vLLM's, llama.cpp's) are.

Prompts. Chat requests go through the model's own chat template (``qkv.conversation.render_chat``); a
model without one (our own GPT runs) uses ``DEFAULT_TEMPLATE``, documented here:

    system: You are terse.\\n\\nuser: Hi\\n\\nassistant:

with "\\n\\nuser:" added as a stop string. Completions encode the prompt as ``qkv generate`` does (bos first
where the model expects it; an empty prompt starts from eos).

Log-probabilities are the model's own (log-softmax of its logits, before logit_bias, penalties, temperature and
the filters), as vLLM reports them (``qkv.logprobs``, shared with ``qkv.generate``). ``n`` > 1 with a ``seed``:
choice i uses seed + i, so each choice is reproducible and the choices differ.
"""

from __future__ import annotations

import dataclasses
import time
import uuid

from ..conversation import render_chat
from ..errors import InputError
from ..generate import GenerationConfig, encode_prompt
from .engine import Sequence, Token
from .schemas import SAMPLING_FIELDS, ChatRequest, CompletionRequest, Sampling

DEFAULT_TEMPLATE = ("{% for m in messages %}{{ m.role }}: {{ m.content }}\n\n{% endfor %}"
                    "{% if add_generation_prompt %}assistant:{% endif %}")
DEFAULT_TEMPLATE_STOP = "\n\nuser:"


class APIError(Exception):
    """An answer in OpenAI's error envelope: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# ---- requests -------------------------------------------------------------------------------------------
def chat_prompt_ids(tokenizer, req: ChatRequest) -> list[int]:
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
    template = tokenizer.chat_template or DEFAULT_TEMPLATE
    return tokenizer.encode(render_chat(template, messages, True, tokenizer.specials))


def completion_prompts(tokenizer, req: CompletionRequest) -> list[list[int]]:
    prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
    if not prompts:
        raise APIError(400, "prompt is an empty list; give a string or a list of strings", param="prompt")
    return [encode_prompt(tokenizer, p) for p in prompts]


def budget(prompt_len: int, requested: int | None, context: int, cap: int, param: str) -> int:
    """New tokens to allow: the request's max_tokens (checked against the cap and the context), or as many
    as fit under both."""
    if prompt_len >= context:
        raise APIError(400, f"the prompt has {prompt_len} tokens but this model's context is {context} tokens; "
                            f"shorten it", param=param, code="context_length_exceeded")
    if requested is None:
        return min(cap, context - prompt_len)
    if requested > cap:
        raise APIError(400, f"max_tokens={requested} is above this server's cap of {cap} (qkv serve "
                            f"--max-tokens-cap); ask for at most {cap}", param="max_tokens")
    if prompt_len + requested > context:
        raise APIError(400, f"this model's context is {context} tokens, but the prompt has {prompt_len} and "
                            f"max_tokens asks for {requested} ({prompt_len + requested} in all); lower max_tokens "
                            f"to at most {context - prompt_len} or shorten the prompt", param="max_tokens",
                       code="context_length_exceeded")
    return requested


def generation_config(req: Sampling, max_new_tokens: int, extra_stop: str | None = None,
                      defaults: dict | None = None) -> GenerationConfig:
    """The request's sampling; ``defaults`` (the model's own, ``qkv.generation_defaults``) fill the fields it
    leaves unset."""
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if extra_stop is not None:
        stops.append(extra_stop)
    given = {name: getattr(req, name) for name in SAMPLING_FIELDS if getattr(req, name) is not None}
    given = {**(defaults or {}), **given}
    try:
        return GenerationConfig(max_new_tokens=max_new_tokens, stop=tuple(stops), ignore_eos=req.ignore_eos, **given)
    except InputError as e:
        raise APIError(400, str(e), param=str(e).split("=")[0]) from None


def logit_bias(req: Sampling, vocab_size: int) -> dict[int, float] | None:
    if not req.logit_bias:
        return None
    out = {}
    for key, value in req.logit_bias.items():
        if not key.lstrip("-").isdigit() or not 0 <= int(key) < vocab_size:
            raise APIError(400, f"logit_bias key {key!r} is not a token id in [0, {vocab_size})", param="logit_bias")
        if not -100 <= value <= 100:
            raise APIError(400, f"logit_bias value {value} for token {key} must be between -100 and 100",
                           param="logit_bias")
        out[int(key)] = value
    return out


def sequences(req: Sampling, prompt_ids: list[int], cfg: GenerationConfig, vocab_size: int, logprobs: bool,
              top_logprobs: int, constraint_factory=None, context: list[int] = ()) -> list[Sequence]:
    """``req.n`` sequences of one prompt; choice i samples with seed + i. ``context``: where the text goes on
    from (a completion's, ``continuation_context``; a chat reply has none)."""
    bias = logit_bias(req, vocab_size)
    out = []
    for i in range(req.n):
        seeded = dataclasses.replace(cfg, seed=cfg.seed + i) if cfg.seed is not None and i else cfg
        seeded = dataclasses.replace(seeded, logit_bias=bias) if bias else seeded
        out.append(Sequence(list(prompt_ids), seeded, logprobs=logprobs, top_logprobs=top_logprobs,
                            constraint=constraint_factory() if constraint_factory else None,
                            context=list(context)))
    return out


# ---- responses ------------------------------------------------------------------------------------------
def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def envelope(kind: str, rid: str, model: str, choices: list, usage: dict | None = None, created: int | None = None,
             chunk: bool = False) -> dict:
    obj = {"chat": "chat.completion", "completion": "text_completion"}[kind]
    obj += ".chunk" if chunk and kind == "chat" else ""
    out = {"id": rid, "object": obj, "created": created or int(time.time()), "model": model, "choices": choices}
    if usage is not None or not chunk:
        out["usage"] = usage
    return out


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_logprobs(tokenizer, tokens: list[Token]) -> dict:
    def entry(i: int, lp: float) -> dict:
        text = tokenizer.token_text(i)
        return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8"))}
    return {"content": [{**entry(t.id, t.logprob), "top_logprobs": [entry(i, lp) for i, lp in (t.top or [])]}
                        for t in tokens if not t.ends_turn]}


def completion_logprobs(tokenizer, tokens: list[Token], offset: int = 0) -> dict:
    kept = [t for t in tokens if not t.ends_turn]
    offsets, at = [], offset
    for t in kept:
        offsets.append(at)
        at += len(tokenizer.token_text(t.id))
    return {"tokens": [tokenizer.token_text(t.id) for t in kept], "token_logprobs": [t.logprob for t in kept],
            "top_logprobs": [{tokenizer.token_text(i): lp for i, lp in (t.top or [])} for t in kept],
            "text_offset": offsets}
