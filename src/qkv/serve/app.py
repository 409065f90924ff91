"""``qkv serve``: an OpenAI-compatible HTTP server (FastAPI on uvicorn) over one model.

    GET  /                       a chat page (chat.html: streaming, system prompt, stop, next-token probabilities)
    GET  /health                 {"status": "ok"} while the decode loop runs
    GET  /metrics                Prometheus text: queue, batch, tokens/s, time to first token (``metrics``)
    GET  /v1/models              the one model, named --model-name
    POST /v1/chat/completions    decoders: the chat template, sampling, n, logprobs, stream (SSE)
    POST /v1/completions         decoders: plain continuation
    POST /v1/embeddings          encoders: the vectors of ``qkv embed`` (mean-pooled, L2-normalized)

Every error is OpenAI's envelope ``{"error": {"message", "type", "param", "code"}}`` with a 4xx status for
bad input (malformed JSON, wrong types, a prompt past the context, max_tokens past the cap, a body past
the limit, a bad API key, an unknown model) and 429 when the queue is full; a 500 means a qkv bug and
fails that request alone. Generation runs in ``engine.Engine`` (continuous batching); the HTTP side only
turns requests into sequences and events into responses, so a slow client never holds the model.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import html
import logging
import re
import threading
import time
from pathlib import Path

import torch
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from ..errors import InputError, QkvError
from ..grammar import ANY_OBJECT, json_constraints
from .config import ServeConfig
from .engine import Engine, Finish, Token
from .events import cancel_on_disconnect, run, sse
from .prometheus import ServerMetrics
from .middleware import AccessLog, BodyLimit
from .openai_api import (APIError, budget, chat_logprobs, chat_prompt_ids, completion_logprobs, completion_prompts,
                         DEFAULT_TEMPLATE_STOP, envelope, generation_config, new_id, sequences, usage)
from .schemas import ChatRequest, CompletionRequest, EmbeddingRequest

log = logging.getLogger("qkv.serve")
CHAT_PAGE = (Path(__file__).parent / "chat.html").read_text(encoding="utf-8")   # the page at /, self-contained
UNION_TAG = re.compile(r"^(str|int|float|bool|none|(list|dict)\[.*\]|[A-Z]\w*)$")   # pydantic's union-member locs


def create_app(model, config: ServeConfig = ServeConfig()):
    """The FastAPI app serving ``model`` (a decoder, or an encoder for embeddings)."""
    config = config.with_api_key()
    decoder = getattr(model, "family", None) == "decoder"
    tokenizer = model.tokenizer
    served = config.model_name or "qkv"
    sampling_defaults = getattr(model, "generation_defaults", None) or {}
    state = {}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if decoder:
            engine = Engine(model, config.max_batch, config.max_queue)
            engine.on_first_token, engine.on_tokens = metrics.ttft.observe, metrics.rate.add
            state["engine"] = engine.start()
        yield
        if decoder:
            state["engine"].stop()

    app = FastAPI(title="qkv", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.config, app.state.model, app.state.shared = config, model, state
    metrics = ServerMetrics(lambda: state.get("engine"))
    app.state.metrics = metrics
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    app.add_middleware(AccessLog, metrics=metrics)                # outermost: sees every answer, 413 included
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware
        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins, allow_methods=["*"],
                           allow_headers=["*"])

    # ---- errors: always OpenAI's envelope ------------------------------------------------------------
    def error(e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(APIError)
    async def on_api_error(request, e: APIError):
        return error(e)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body" and not UNION_TAG.match(str(x))]
        if first.get("type") == "json_invalid":
            return error(APIError(400, f"the body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}"))
        where = ".".join(loc) or "body"
        return error(APIError(400, f"{where}: {first.get('msg', 'invalid value')}", param=where or None))

    @app.exception_handler(HTTPException)
    async def on_http(request, e: HTTPException):
        return error(APIError(e.status_code, str(e.detail), "not_found_error" if e.status_code == 404 else
                              "invalid_request_error"))

    @app.exception_handler(QkvError)
    async def on_qkv_error(request, e: QkvError):
        return error(APIError(400, str(e)))

    @app.exception_handler(Exception)
    async def on_bug(request, e: Exception):
        log.exception("internal error")
        return error(APIError(500, f"internal error: {type(e).__name__}: {e}", "server_error"))

    def authorized(request: Request) -> None:
        if config.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").strip().partition(" ")
        # the scheme is case-insensitive (RFC 7235); the key is compared in constant time
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), config.api_key.encode()):
            raise APIError(401, "missing or wrong API key; send the header 'Authorization: Bearer KEY'",
                           "authentication_error", code="invalid_api_key")

    def check_model(asked: str | None) -> None:
        if asked is not None and asked != served:
            raise APIError(404, f"the model {asked!r} does not exist; this server serves {served!r}",
                           "not_found_error", param="model", code="model_not_found")

    def engine() -> Engine:
        if not decoder:
            raise APIError(400, f"{served} is an encoder; it answers /v1/embeddings only",
                           param="model")
        return state["engine"]

    # ---- routes --------------------------------------------------------------------------------------
    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health():
        alive = not decoder or ("engine" in state and state["engine"].thread.is_alive())
        return JSONResponse({"status": "ok" if alive else "error"}, status_code=200 if alive else 503)

    @app.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse)
    async def chat_page():
        return HTMLResponse(CHAT_PAGE.replace("__MODEL__", html.escape(served, quote=True)))

    @app.get("/metrics")
    async def prometheus_metrics():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", dependencies=[Depends(authorized)])
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}", dependencies=[Depends(authorized)])
    async def one_model(name: str):
        check_model(name)
        return model_card()

    def model_card() -> dict:
        return {"id": served, "object": "model", "created": 0, "owned_by": "qkv",
                "max_model_len": model.cfg.max_len}

    @app.post("/v1/chat/completions", dependencies=[Depends(authorized)])
    async def chat_completions(req: ChatRequest, request: Request):
        check_model(req.model)
        if req.tools or req.tool_choice not in (None, "none"):
            raise APIError(400, "tool calls are not supported by this server; send the request without "
                                "tools and tool_choice", param="tools" if req.tools else "tool_choice")
        eng = engine()
        ids = chat_prompt_ids(tokenizer, req)
        max_new = budget(len(ids), req.max_completion_tokens or req.max_tokens, model.cfg.max_len,
                         config.max_tokens_cap, "messages")
        cfg = generation_config(req, max_new, None if tokenizer.chat_template else DEFAULT_TEMPLATE_STOP,
                                sampling_defaults)
        seqs = sequences(req, ids, cfg, model.cfg.vocab_size, req.logprobs, req.top_logprobs or 0,
                         constraint_factory(req))
        return await respond("chat", eng, request, req, seqs, len(ids))

    @app.post("/v1/completions", dependencies=[Depends(authorized)])
    async def completions(req: CompletionRequest, request: Request):
        check_model(req.model)
        eng = engine()
        if req.echo:
            raise APIError(400, "echo is not supported; the prompt is not repeated in the reply", param="echo")
        prompts = completion_prompts(tokenizer, req)
        seqs = []
        for ids in prompts:
            max_new = budget(len(ids), req.max_tokens if req.max_tokens is not None else 16, model.cfg.max_len,
                             config.max_tokens_cap, "prompt")
            cfg = generation_config(req, max_new, defaults=sampling_defaults)
            seqs += sequences(req, ids, cfg, model.cfg.vocab_size, req.logprobs is not None, req.logprobs or 0,
                              constraint_factory(req))
        return await respond("completion", eng, request, req, seqs, sum(len(p) for p in prompts))

    def constraint_factory(req):
        """response_format json_object / json_schema: a JsonConstraint per sequence (a bad schema is a 400)."""
        fmt = req.response_format
        if fmt is None or fmt.type == "text":
            return None
        if fmt.type == "json_schema" and (fmt.json_schema is None or not fmt.json_schema.schema_):
            raise APIError(400, "response_format json_schema needs json_schema.schema", param="response_format")
        schema = fmt.json_schema.schema_ if fmt.type == "json_schema" else ANY_OBJECT
        try:
            return json_constraints(tokenizer, model.cfg.vocab_size, schema)
        except InputError as e:
            raise APIError(400, str(e), param="response_format") from None

    async def respond(kind, eng, request, req, seqs, prompt_tokens):
        events = run(eng, seqs, config.timeout)
        rid, created = new_id("chatcmpl" if kind == "chat" else "cmpl"), int(time.time())
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            first = await events.__anext__()          # 429 and other refusals before the 200 goes out
            body = stream_chunks(kind, rid, created, seqs, first, events, prompt_tokens, include_usage)
            return StreamingResponse(sse(body), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        watcher = asyncio.create_task(cancel_on_disconnect(request, seqs))
        try:
            texts, tokens, reasons = [""] * len(seqs), [[] for _ in seqs], [None] * len(seqs)
            async for i, ev in events:
                if isinstance(ev, Token):
                    texts[i] += ev.text
                    tokens[i].append(ev)
                elif isinstance(ev, Finish):
                    reasons[i] = ev.reason
        finally:
            watcher.cancel()
        choices = []
        for i, seq in enumerate(seqs):
            lp = (chat_logprobs(tokenizer, tokens[i]) if kind == "chat" else
                  completion_logprobs(tokenizer, tokens[i])) if seq.logprobs else None
            body = {"message": {"role": "assistant", "content": texts[i]}} if kind == "chat" else {"text": texts[i]}
            choices.append({"index": i, **body, "logprobs": lp, "finish_reason": reasons[i]})
        completion_tokens = sum(len(t) for t in tokens)
        return envelope(kind, rid, served, choices, usage(prompt_tokens, completion_tokens), created)

    async def stream_chunks(kind, rid, created, seqs, first, events, prompt_tokens, include_usage):
        def chunk(choices, usage_=None):
            out = envelope(kind, rid, served, choices, usage_, created, chunk=True)
            if include_usage and usage_ is None:
                out["usage"] = None
            return out

        if kind == "chat":
            yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                          "finish_reason": None} for i in range(len(seqs))])
        completion_tokens = 0

        async def all_events():
            yield first
            async for item in events:
                yield item

        async for i, ev in all_events():
            if isinstance(ev, Token):
                completion_tokens += 1
                lp = None
                if seqs[i].logprobs and not ev.ends_turn:
                    lp = chat_logprobs(tokenizer, [ev]) if kind == "chat" else completion_logprobs(tokenizer, [ev])
                if ev.text or lp:
                    body = {"delta": {"content": ev.text}} if kind == "chat" else {"text": ev.text}
                    yield chunk([{"index": i, **body, "logprobs": lp, "finish_reason": None}])
            elif isinstance(ev, Finish):
                body = {"delta": {}} if kind == "chat" else {"text": ""}
                yield chunk([{"index": i, **body, "logprobs": None, "finish_reason": ev.reason}])
        if include_usage:
            yield chunk([], usage(prompt_tokens, completion_tokens))

    @app.post("/v1/embeddings", dependencies=[Depends(authorized)])
    async def embeddings(req: EmbeddingRequest):
        check_model(req.model)
        if decoder or not hasattr(model, "embed_texts"):
            raise APIError(400, f"{served} is not an encoder; embeddings need an encoder checkpoint "
                                f"(qkv-bert*, Hugging Face BERT)", param="model")
        texts = [req.input] if isinstance(req.input, str) else req.input
        if not texts or not all(isinstance(t, str) for t in texts):
            raise APIError(400, "input must be a string or a non-empty list of strings (token ids are not "
                                "accepted)", param="input")
        if req.dimensions is not None and req.dimensions != model.cfg.d_model:
            raise APIError(400, f"dimensions={req.dimensions}: this model's vectors have {model.cfg.d_model}",
                           param="dimensions")
        emb_NC, n_tokens = await asyncio.to_thread(embed, texts)
        data = []
        for i, row in enumerate(emb_NC):
            vector = base64.b64encode(row.numpy().astype("<f4").tobytes()).decode() \
                if req.encoding_format == "base64" else row.tolist()
            data.append({"object": "embedding", "index": i, "embedding": vector})
        return {"object": "list", "data": data, "model": served,
                "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}

    embed_lock = threading.Lock()

    def embed(texts):
        with embed_lock, torch.inference_mode():
            encodings = tokenizer.encode_batch_for_model(texts, max_len=model.cfg.max_len)
            return model.embed_texts(texts), sum(len(e.ids) for e in encodings)

    return app
