"""The server's endpoints as FastAPI routers (vLLM's shape): each handler reads what it serves from
``request.app.state``, which ``app.create_app`` fills:

    model, tokenizer     the loaded model and its tokenizer; decoder: True for a decoder (chat, completions),
                         False for an encoder (embeddings)
    config               the ServeConfig (api_key resolved); served: the model id clients name
    engine               the decode loop (``engine.Engine``) while the app runs; None for an encoder
    sampling_defaults    the model's own sampling (``qkv.generation_defaults``), under each request's
    metrics, embed_lock  the Prometheus registry; one embedding batch at a time

``pages`` is open (/, /health, /metrics: browsers, probes, Prometheus); every route of ``v1`` needs the API key
when one is set (``authorized``).
"""

from __future__ import annotations

import asyncio
import hmac
import html
from pathlib import Path

import torch
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..errors import InputError
from ..grammar import ANY_OBJECT, json_constraints
from ..text_stream import continuation_context
from .engine import Engine
from .openai_api import (APIError, budget, chat_prompt_ids, completion_prompts, DEFAULT_TEMPLATE_STOP,
                         generation_config, sequences)
from .responses import Answer, embeddings as embedding_answer, respond
from .schemas import ChatRequest, CompletionRequest, EmbeddingRequest

CHAT_PAGE = (Path(__file__).parent / "chat.html").read_text(encoding="utf-8")   # the page at /, self-contained


def authorized(request: Request) -> None:
    """The v1 routes' dependency: with an API key set, the request must carry "Authorization: Bearer KEY"."""
    key = request.app.state.config.api_key
    if key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").strip().partition(" ")
    # the scheme is case-insensitive (RFC 7235); the key is compared in constant time
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise APIError(401, "missing or wrong API key; send the header 'Authorization: Bearer KEY'",
                       "authentication_error", code="invalid_api_key")


pages = APIRouter()
v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorized)])


# ---- open pages --------------------------------------------------------------------------------------------
@pages.api_route("/health", methods=["GET", "HEAD"])
async def health(request: Request):
    state = request.app.state
    alive = not state.decoder or (state.engine is not None and state.engine.thread.is_alive())
    return JSONResponse({"status": "ok" if alive else "error"}, status_code=200 if alive else 503)


@pages.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse)
async def chat_page(request: Request):
    return HTMLResponse(CHAT_PAGE.replace("__MODEL__", html.escape(request.app.state.served, quote=True)))


@pages.get("/metrics")
async def prometheus_metrics(request: Request):
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


# ---- /v1 ---------------------------------------------------------------------------------------------------
@v1.get("/models")
async def models(request: Request):
    return {"object": "list", "data": [model_card(request.app.state)]}


@v1.get("/models/{name:path}")
async def one_model(name: str, request: Request):
    check_model(request.app.state, name)
    return model_card(request.app.state)


@v1.post("/chat/completions")
async def chat_completions(req: ChatRequest, request: Request):
    state = request.app.state
    check_model(state, req.model)
    if req.tools or req.tool_choice not in (None, "none"):
        raise APIError(400, "tool calls are not supported by this server; send the request without "
                            "tools and tool_choice", param="tools" if req.tools else "tool_choice")
    eng, tokenizer, cfg = decoding_engine(state), state.tokenizer, state.model.cfg
    ids = chat_prompt_ids(tokenizer, req)
    max_new = budget(len(ids), req.max_completion_tokens or req.max_tokens, cfg.max_len,
                     state.config.max_tokens_cap, "messages")
    gen = generation_config(req, max_new, None if tokenizer.chat_template else DEFAULT_TEMPLATE_STOP,
                            state.sampling_defaults)
    seqs = sequences(req, ids, gen, cfg.vocab_size, req.logprobs, req.top_logprobs or 0,
                     constraint_factory(state, req))
    return await respond(Answer.new("chat", state.served, tokenizer), eng, request, req, seqs, len(ids),
                         state.config.timeout)


@v1.post("/completions")
async def completions(req: CompletionRequest, request: Request):
    state = request.app.state
    check_model(state, req.model)
    eng, cfg = decoding_engine(state), state.model.cfg
    if req.echo:
        raise APIError(400, "echo is not supported; the prompt is not repeated in the reply", param="echo")
    prompts = completion_prompts(state.tokenizer, req)
    seqs = []
    for ids in prompts:
        max_new = budget(len(ids), req.max_tokens if req.max_tokens is not None else 16, cfg.max_len,
                         state.config.max_tokens_cap, "prompt")
        gen = generation_config(req, max_new, defaults=state.sampling_defaults)
        seqs += sequences(req, ids, gen, cfg.vocab_size, req.logprobs is not None, req.logprobs or 0,
                          constraint_factory(state, req), continuation_context(state.tokenizer, ids))
    return await respond(Answer.new("completion", state.served, state.tokenizer), eng, request, req, seqs,
                         sum(len(p) for p in prompts), state.config.timeout)


@v1.post("/embeddings")
async def embeddings(req: EmbeddingRequest, request: Request):
    state = request.app.state
    model, served = state.model, state.served
    check_model(state, req.model)
    if state.decoder or not hasattr(model, "embed_texts"):
        raise APIError(400, f"{served} is not an encoder; embeddings need an encoder checkpoint "
                            f"(qkv-bert*, Hugging Face BERT)", param="model")
    texts = [req.input] if isinstance(req.input, str) else req.input
    if not texts or not all(isinstance(t, str) for t in texts):
        raise APIError(400, "input must be a string or a non-empty list of strings (token ids are not "
                            "accepted)", param="input")
    if req.dimensions is not None and req.dimensions != model.cfg.d_model:
        raise APIError(400, f"dimensions={req.dimensions}: this model's vectors have {model.cfg.d_model}",
                       param="dimensions")
    emb_NC, n_tokens = await asyncio.to_thread(embed, state, texts)
    return embedding_answer(emb_NC, n_tokens, served, req.encoding_format)


# ---- what the handlers share -------------------------------------------------------------------------------
def model_card(state) -> dict:
    return {"id": state.served, "object": "model", "created": 0, "owned_by": "qkv",
            "max_model_len": state.model.cfg.max_len}


def check_model(state, asked: str | None) -> None:
    """A request that names a model must name the served one (none named: the served one)."""
    if asked is not None and asked != state.served:
        raise APIError(404, f"the model {asked!r} does not exist; this server serves {state.served!r}",
                       "not_found_error", param="model", code="model_not_found")


def decoding_engine(state) -> Engine:
    if not state.decoder:
        raise APIError(400, f"{state.served} is an encoder; it answers /v1/embeddings only", param="model")
    return state.engine


def constraint_factory(state, req):
    """response_format json_object / json_schema: a JsonConstraint per sequence (a bad schema is a 400)."""
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_schema" and (fmt.json_schema is None or not fmt.json_schema.schema_):
        raise APIError(400, "response_format json_schema needs json_schema.schema", param="response_format")
    schema = fmt.json_schema.schema_ if fmt.type == "json_schema" else ANY_OBJECT
    try:
        return json_constraints(state.tokenizer, state.model.cfg.vocab_size, schema)
    except InputError as e:
        raise APIError(400, str(e), param="response_format") from None


def embed(state, texts: list[str]):
    """(vectors_NC, prompt tokens) of ``texts``, off the event loop; one batch at a time."""
    with state.embed_lock, torch.inference_mode():
        encodings = state.tokenizer.encode_batch_for_model(texts, max_len=state.model.cfg.max_len)
        return state.model.embed_texts(texts), sum(len(e.ids) for e in encodings)
