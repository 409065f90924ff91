"""The ``/v1`` router alone: mounted on a bare FastAPI app whose state holds a scripted engine (no model, no
decode loop), so what a handler submits and answers is a function of ``app.state`` and the engine's events
only. The whole server, model included, is tested in test_serve.py."""

import json
import threading
from types import SimpleNamespace

import pytest

pytest.importorskip("fastapi")
from fastapi import FastAPI  # noqa: E402

from qkv import Tokenizer  # noqa: E402
from qkv.serve import ServeConfig  # noqa: E402
from qkv.serve.app import EXCEPTION_HANDLERS  # noqa: E402
from qkv.serve.engine import Finish, QueueFull, Token  # noqa: E402
from qkv.serve.routes import v1  # noqa: E402

from serving import TEXT, assert_openai_shape, request, running  # noqa: E402

openai = pytest.importorskip("openai")

PIECES = ["the", " cat", " sat"]


class ScriptedEngine:
    """Answers every sequence with one Token per piece of ``PIECES``, an end-of-turn token, then Finish;
    with ``full`` it refuses every submit, as a full queue does."""

    def __init__(self, eos_id: int, full: bool = False):
        self.eos_id, self.full, self.submitted = eos_id, full, []
        self.thread = threading.current_thread()

    def submit(self, seqs):
        if self.full:
            raise QueueFull("3 sequences are waiting (qkv serve --max-queue 3); retry later")
        self.submitted += seqs
        for seq in seqs:
            for k, text in enumerate(PIECES):
                seq.emit(Token(id=10 + k, text=text, logprob=-0.25 * (k + 1), top=[(10 + k, -0.25 * (k + 1))]))
            seq.emit(Token(id=self.eos_id, text="", logprob=-0.5, ends_turn=True))
            seq.emit(Finish("stop", len(PIECES) + 1))


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train_bpe([TEXT], vocab_size=300)


def bare_app(tok, engine, **config):
    app = FastAPI(exception_handlers=EXCEPTION_HANDLERS)
    app.include_router(v1)
    state = app.state
    state.config = ServeConfig(model_name="scripted", max_tokens_cap=20, **config).with_api_key()
    state.model = SimpleNamespace(cfg=SimpleNamespace(max_len=64, vocab_size=tok.vocab_size))
    state.tokenizer, state.served, state.decoder, state.engine = tok, "scripted", True, engine
    state.sampling_defaults = {"temperature": 0.6, "top_k": 7}          # the model's own, under the request's
    return app


def test_a_reply_is_what_the_engine_emitted_and_the_sequence_what_the_request_asked(tok):
    engine = ScriptedEngine(tok.eos_id)
    with running(bare_app(tok, engine)) as url:
        status, body = request(url, "POST", "/v1/chat/completions",
                               {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "top_p": 0.5,
                                "n": 2, "seed": 3, "logprobs": True, "top_logprobs": 1})
    assert status == 200 and body["model"] == "scripted" and body["object"] == "chat.completion"
    assert [c["message"]["content"] for c in body["choices"]] == ["".join(PIECES)] * 2
    assert [c["finish_reason"] for c in body["choices"]] == ["stop", "stop"]
    assert body["usage"]["completion_tokens"] == 2 * (len(PIECES) + 1)      # the end-of-turn token counts
    content = body["choices"][0]["logprobs"]["content"]                      # ... but is not text
    assert [e["token"] for e in content] == [tok.token_text(10 + k) for k in range(len(PIECES))]
    assert [e["logprob"] for e in content] == [-0.25, -0.5, -0.75]
    first, second = engine.submitted
    assert first.cfg.max_new_tokens == 5 and first.cfg.top_p == 0.5
    assert (first.cfg.temperature, first.cfg.top_k) == (0.6, 7)                  # the defaults filled the rest
    assert (first.cfg.seed, second.cfg.seed) == (3, 4) and first.logprobs and first.top_logprobs == 1


def test_a_stream_is_role_pieces_finish_usage_then_done(tok):
    with running(bare_app(tok, ScriptedEngine(tok.eos_id))) as url:
        status, raw = request(url, "POST", "/v1/chat/completions",
                              {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "stream": True,
                               "stream_options": {"include_usage": True}})
    assert status == 200
    events = [line[6:] for line in raw.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert [c["choices"][0]["delta"] for c in chunks[:-1]] == \
        [{"role": "assistant", "content": ""}] + [{"content": p} for p in PIECES] + [{}]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * (len(PIECES) + 1) + ["stop"]
    assert all(c["usage"] is None and c["object"] == "chat.completion.chunk" for c in chunks[:-1])
    assert all(c["choices"][0]["logprobs"] is None for c in chunks[:-1])              # none asked for
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == len(PIECES) + 1


def test_a_streams_logprobs_are_the_replys_and_the_end_of_turn_has_none(tok):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "logprobs": True, "top_logprobs": 1}
    with running(bare_app(tok, ScriptedEngine(tok.eos_id))) as url:
        _, whole = request(url, "POST", "/v1/chat/completions", body)
        _, raw = request(url, "POST", "/v1/chat/completions", {**body, "stream": True})
    chunks = [json.loads(line[6:]) for line in raw.split("\n") if line.startswith("data: {")]
    streamed = [e for c in chunks for choice in c["choices"] if choice["logprobs"]
                for e in choice["logprobs"]["content"]]
    assert streamed == whole["choices"][0]["logprobs"]["content"] and len(streamed) == len(PIECES)
    for c in chunks:
        assert_openai_shape(c, openai.types.chat.ChatCompletionChunk)


@pytest.mark.parametrize("stream", [False, True])
def test_a_full_queue_is_429_before_any_stream_begins(tok, stream):
    with running(bare_app(tok, ScriptedEngine(tok.eos_id, full=True))) as url:
        status, body = request(url, "POST", "/v1/completions", {"prompt": "the", "stream": stream})
    assert status == 429 and body["error"]["type"] == "rate_limit_error" and body["error"]["code"] == "queue_full"


def test_the_router_asks_for_the_key_in_the_state(tok):
    with running(bare_app(tok, ScriptedEngine(tok.eos_id), api_key="k3y")) as url:
        refused, error = request(url, "GET", "/v1/models")
        status, body = request(url, "GET", "/v1/models", headers={"Authorization": "Bearer k3y"})
        spaced = request(url, "GET", "/v1/models", headers={"Authorization": "Bearer  k3y "})[0]
    assert refused == 401 and error["error"]["type"] == "authentication_error"
    assert error["error"]["code"] == "invalid_api_key"
    assert error["error"]["message"].startswith("missing or wrong API key")
    assert status == 200 and body["data"][0]["id"] == "scripted" and body["data"][0]["max_model_len"] == 64
    assert spaced == 200                                         # spaces around the key are not part of it


@pytest.mark.parametrize("path, body", [("/v1/models/other", None),
                                        ("/v1/completions", {"model": "other", "prompt": "the"})])
def test_another_models_name_is_openais_404(tok, path, body):
    with running(bare_app(tok, ScriptedEngine(tok.eos_id))) as url:
        status, reply = request(url, "POST" if body else "GET", path, body)
    assert status == 404 and reply["error"]["type"] == "not_found_error"
    assert (reply["error"]["param"], reply["error"]["code"]) == ("model", "model_not_found")


def test_every_sampling_number_of_generation_config_is_a_request_field_that_reaches_the_sequence(tok):
    """The request's sampling fields are read from GenerationConfig: OpenAI's are among them, and each one
    given in a body is the sequence's (the value is valid for every field, and no field's default)."""
    from qkv.serve.schemas import SAMPLING_FIELDS
    assert {"temperature", "top_p", "presence_penalty", "frequency_penalty", "seed"} <= set(SAMPLING_FIELDS)
    given = {name: 3 if kind is int else 0.5 for name, kind in SAMPLING_FIELDS.items()}
    engine = ScriptedEngine(tok.eos_id)
    with running(bare_app(tok, engine)) as url:
        status, _ = request(url, "POST", "/v1/completions", {"prompt": "the", "max_tokens": 2, **given})
        bad, body = request(url, "POST", "/v1/completions", {"prompt": "the", "top_k": "3"})
    assert status == 200 and {name: getattr(engine.submitted[0].cfg, name) for name in given} == given
    assert bad == 400 and body["error"]["param"] == "top_k"                    # a count takes JSON integers only
