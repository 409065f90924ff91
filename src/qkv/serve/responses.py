"""Engine events into OpenAI's replies: ``respond`` runs a request's sequences and answers with one JSON body
(``reply``) or a stream of server-sent-event chunks (``stream_chunks``), each in ``openai_api.envelope``.

    chat        {"object": "chat.completion", "choices": [{"message": {"role", "content"}, "logprobs", ...}]}
      stream    a role chunk per choice, then {"delta": {"content"}} chunks, then {"delta": {}} + finish_reason
    completion  {"object": "text_completion", "choices": [{"text", "logprobs", "finish_reason"}]}
      stream    {"text"} chunks, then {"text": ""} + finish_reason

With ``stream_options.include_usage`` every chunk carries ``"usage": null`` and one last chunk with no
choices carries the usage, as OpenAI sends it. ``embeddings`` is /v1/embeddings' answer.
"""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass
from typing import AsyncIterator, Literal

from fastapi.responses import StreamingResponse

from .engine import Engine, Finish, Token
from .events import cancel_on_disconnect, run, sse
from .openai_api import chat_logprobs, completion_logprobs, envelope, new_id, usage

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}   # no proxy buffering of the events


@dataclass(frozen=True)
class Answer:
    """What every body of one request's answer shares: its kind, id, creation time and model name; and the
    tokenizer its logprobs are written with."""
    kind: Literal["chat", "completion"]
    model: str
    tokenizer: object
    id: str
    created: int

    @classmethod
    def new(cls, kind: str, model: str, tokenizer) -> "Answer":
        return cls(kind, model, tokenizer, new_id("chatcmpl" if kind == "chat" else "cmpl"), int(time.time()))

    def envelope(self, choices: list, usage: dict | None = None, chunk: bool = False) -> dict:
        return envelope(self.kind, self.id, self.model, choices, usage, self.created, chunk=chunk)

    def logprobs(self, tokens: list[Token]) -> dict:
        return (chat_logprobs if self.kind == "chat" else completion_logprobs)(self.tokenizer, tokens)


async def respond(answer: Answer, eng: Engine, request, req, seqs, prompt_tokens: int, timeout_s: float):
    """Run ``seqs`` (the choices of one request) on ``eng`` and answer as ``req.stream`` asks."""
    events = run(eng, seqs, timeout_s)
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        first = await events.__anext__()          # 429 and other refusals before the 200 goes out
        body = stream_chunks(answer, seqs, _chain(first, events), prompt_tokens, include_usage)
        return StreamingResponse(sse(body), media_type="text/event-stream", headers=STREAM_HEADERS)
    watcher = asyncio.create_task(cancel_on_disconnect(request, seqs))
    try:
        tokens, reasons = [[] for _ in seqs], [None] * len(seqs)
        async for i, ev in events:
            if isinstance(ev, Token):
                tokens[i].append(ev)
            elif isinstance(ev, Finish):
                reasons[i] = ev.reason
    finally:
        watcher.cancel()
    return reply(answer, seqs, tokens, reasons, prompt_tokens)


def reply(answer: Answer, seqs, tokens: list[list[Token]], reasons: list[str | None], prompt_tokens: int) -> dict:
    """The whole answer: choice i is sequence i's text (its tokens' text), logprobs if asked, finish reason."""
    choices = []
    for i, seq in enumerate(seqs):
        text = "".join(t.text for t in tokens[i])
        body = {"message": {"role": "assistant", "content": text}} if answer.kind == "chat" else {"text": text}
        lp = answer.logprobs(tokens[i]) if seq.logprobs else None
        choices.append({"index": i, **body, "logprobs": lp, "finish_reason": reasons[i]})
    return answer.envelope(choices, usage(prompt_tokens, sum(len(t) for t in tokens)))


async def stream_chunks(answer: Answer, seqs, events: AsyncIterator, prompt_tokens: int, include_usage: bool):
    """The chunks of a streamed answer, from ``events``: (choice index, Token | Finish) pairs."""
    def chunk(choices, usage_=None):
        out = answer.envelope(choices, usage_, chunk=True)
        if include_usage and usage_ is None:
            out["usage"] = None
        return out

    chat = answer.kind == "chat"
    if chat:
        yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                      "finish_reason": None} for i in range(len(seqs))])
    completion_tokens = 0
    async for i, ev in events:
        if isinstance(ev, Token):
            completion_tokens += 1
            lp = answer.logprobs([ev]) if seqs[i].logprobs and not ev.ends_turn else None
            if ev.text or lp:
                body = {"delta": {"content": ev.text}} if chat else {"text": ev.text}
                yield chunk([{"index": i, **body, "logprobs": lp, "finish_reason": None}])
        elif isinstance(ev, Finish):
            yield chunk([{"index": i, **({"delta": {}} if chat else {"text": ""}), "logprobs": None,
                          "finish_reason": ev.reason}])
    if include_usage:
        yield chunk([], usage(prompt_tokens, completion_tokens))


def embeddings(emb_NC, n_tokens: int, model: str, encoding_format: str) -> dict:
    """/v1/embeddings' answer: one vector per text, as floats or as base64 of little-endian float32."""
    data = []
    for i, row in enumerate(emb_NC):
        vector = base64.b64encode(row.numpy().astype("<f4").tobytes()).decode() \
            if encoding_format == "base64" else row.tolist()
        data.append({"object": "embedding", "index": i, "embedding": vector})
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}


async def _chain(first, rest: AsyncIterator):
    """``first`` (awaited already, so that a refusal came before the stream began), then ``rest``."""
    yield first
    async for item in rest:
        yield item
