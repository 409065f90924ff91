"""``qkv serve``: an OpenAI-compatible HTTP server (FastAPI on uvicorn) over one model.

    GET  /                       a chat page (chat.html: streaming, system prompt, stop, next-token probabilities)
    GET  /health                 {"status": "ok"} while the decode loop runs
    GET  /metrics                Prometheus text: queue, batch, tokens/s, time to first token (``prometheus``)
    GET  /v1/models              the one model, named --model-name
    POST /v1/chat/completions    decoders: the chat template, sampling, n, logprobs, stream (SSE)
    POST /v1/completions         decoders: plain continuation
    POST /v1/embeddings          encoders: the vectors of ``qkv embed`` (mean-pooled, L2-normalized)

Every error is OpenAI's envelope ``{"error": {"message", "type", "param", "code"}}`` with a 4xx status for
bad input (malformed JSON, wrong types, a prompt past the context, max_tokens past the cap, a body past
the limit, a bad API key, an unknown model) and 429 when the queue is full; a 500 means a qkv bug and
fails that request alone. Generation runs in ``engine.Engine`` (continuous batching); the HTTP side only
turns requests into sequences and events into responses, so a slow client never holds the model.

This module assembles the app: its state (what ``routes``' handlers read), the decode loop's lifespan, the
error handlers and the middleware. The endpoints are ``routes``; the reply and stream bodies, ``responses``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..errors import QkvError
from ..family import Family
from .config import ServeConfig
from .engine import Engine
from .prometheus import ServerMetrics
from .middleware import AccessLog, BodyLimit
from .openai_api import APIError
from .routes import pages, v1

log = logging.getLogger("qkv.serve")
UNION_TAG = re.compile(r"^(str|int|float|bool|none|(list|dict)\[.*\]|[A-Z]\w*)$")   # pydantic's union-member locs


def create_app(model, config: ServeConfig = ServeConfig()) -> FastAPI:
    """The FastAPI app serving ``model`` (a decoder, or an encoder for embeddings)."""
    app = FastAPI(title="qkv", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None,
                  exception_handlers=EXCEPTION_HANDLERS)
    state = app.state
    state.config = config = config.with_api_key()
    state.model, state.tokenizer, state.served = model, model.tokenizer, config.model_name or "qkv"
    state.decoder = getattr(model, "family", None) == Family.DECODER
    state.sampling_defaults = getattr(model, "generation_defaults", None) or {}
    state.engine, state.embed_lock = None, threading.Lock()
    state.metrics = ServerMetrics(lambda: state.engine)
    app.include_router(pages)
    app.include_router(v1)
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    app.add_middleware(AccessLog, metrics=state.metrics)     # outermost: sees every answer, 413 included
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware
        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins, allow_methods=["*"],
                           allow_headers=["*"])
    return app


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    """A decoder's decode loop runs while the app does (an encoder's embeddings need none)."""
    state = app.state
    if state.decoder:
        engine = Engine(state.model, state.config.max_batch, state.config.max_queue)
        engine.on_first_token, engine.on_tokens = state.metrics.ttft.observe, state.metrics.rate.add
        state.engine = engine.start()
    yield
    if state.decoder:
        state.engine.stop()


# ---- errors: always OpenAI's envelope ----------------------------------------------------------------------
def error_response(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


async def on_api_error(request, e: APIError):
    return error_response(e)


async def on_invalid(request, e: RequestValidationError):
    """pydantic's first complaint, as "field.sub: message" naming the field (malformed JSON: its own line)."""
    first = e.errors()[0] if e.errors() else {}
    if first.get("type") == "json_invalid":
        return error_response(APIError(400, f"the body is not valid JSON: "
                                            f"{first.get('ctx', {}).get('error', first.get('msg'))}"))
    loc = [str(x) for x in first.get("loc", ()) if x != "body" and not UNION_TAG.match(str(x))]
    where = ".".join(loc) or "body"
    return error_response(APIError(400, f"{where}: {first.get('msg', 'invalid value')}", param=where or None))


async def on_http(request, e: HTTPException):
    """Starlette's own answers (an unknown path, a wrong method) in the envelope."""
    kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
    return error_response(APIError(e.status_code, str(e.detail), kind))


async def on_qkv_error(request, e: QkvError):
    return error_response(APIError(400, str(e)))


async def on_bug(request, e: Exception):
    """A 500 means a qkv bug: it fails this request alone, logged with its traceback."""
    log.exception("internal error")
    return error_response(APIError(500, f"internal error: {type(e).__name__}: {e}", "server_error"))


EXCEPTION_HANDLERS = {APIError: on_api_error, RequestValidationError: on_invalid, HTTPException: on_http,
                      QkvError: on_qkv_error, Exception: on_bug}
