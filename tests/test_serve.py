"""`qkv serve` through the official `openai` client on a loopback port, and raw HTTP for what a client
library never sends: every reply is checked against ``qkv.generate`` / the model's own logits on the same
prompt (tiny random models; seconds in all)."""

import base64
import json
import time

import numpy as np

import pytest
import torch

import qkv
from qkv import ModelConfig, Tokenizer
from qkv.models import BERT
from qkv.generate import generate
from qkv.serve import ServeConfig, create_app
from qkv.serve.openai_api import DEFAULT_TEMPLATE, DEFAULT_TEMPLATE_STOP
from qkv.conversation import render_chat

from serving import TEXT, assert_openai_shape, request, running, tiny_gpt

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train_bpe([TEXT], vocab_size=300)


@pytest.fixture(scope="module")
def model(tok):
    return tiny_gpt(tok, pos="rope")


@pytest.fixture(scope="module")
def server(model):
    app = create_app(model, ServeConfig(model_name="tiny", max_tokens_cap=48, max_batch=4, max_queue=64))
    with running(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0, timeout=60)


def chat_text(tok, messages):
    return render_chat(DEFAULT_TEMPLATE, messages, True, tok.specials)


# ---- the openai client ----------------------------------------------------------------------------------
def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"
    assert request(server[0], "GET", "/health") == (200, {"status": "ok"})
    card = request(server[0], "GET", "/v1/models/tiny")[1]       # OpenAI's Model object, field by field
    required = {name for name, f in openai.types.Model.model_fields.items() if f.is_required()}
    assert required <= set(card) and isinstance(card["created"], int)
    assert (card["object"], card["owned_by"]) == ("model", "qkv")


def test_response_format_text_is_plain_and_json_object_is_an_object(model, tok, client):
    messages = [{"role": "user", "content": "the fox"}]
    want = generate(model, tok, chat_text(tok, messages), temperature=0, max_new_tokens=12,
                    stop=DEFAULT_TEMPLATE_STOP)
    r = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=12,
                                       response_format={"type": "text"})
    assert r.choices[0].message.content == want
    r = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=40,
                                       response_format={"type": "json_object"})
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    else:                                    # cut by max_tokens: an unfinished object, never anything else
        assert r.choices[0].message.content.lstrip().startswith("{")


def test_a_schema_the_grammar_refuses_is_a_400_with_its_message(model, tok, server):
    from qkv.errors import InputError
    from qkv.grammar import json_constraints
    bad = {"type": "no-such-type"}
    with pytest.raises(InputError) as refused:
        json_constraints(tok, model.cfg.vocab_size, bad)
    status, body = request(server[0], "POST", "/v1/chat/completions",
                           {"messages": [{"role": "user", "content": "hi"}],
                            "response_format": {"type": "json_schema", "json_schema": {"schema": bad}}})
    assert status == 400 and body["error"]["message"] == str(refused.value)
    assert body["error"]["param"] == "response_format"


@pytest.mark.parametrize("json_schema", [None, {"name": "p"}, {"name": "p", "schema": {}}])
def test_response_format_json_schema_needs_a_schema(server, json_schema):
    fmt = {"type": "json_schema"} if json_schema is None else {"type": "json_schema", "json_schema": json_schema}
    status, body = request(server[0], "POST", "/v1/chat/completions",
                           {"messages": [{"role": "user", "content": "hi"}], "response_format": fmt})
    assert status == 400 and body["error"]["param"] == "response_format"
    assert body["error"]["message"] == "response_format json_schema needs json_schema.schema"


def test_chat_is_the_greedy_reply_of_the_rendered_template(model, tok, client):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the fox"}]
    r = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=12)
    prompt = chat_text(tok, messages)
    want = generate(model, tok, prompt, temperature=0, max_new_tokens=12, stop=DEFAULT_TEMPLATE_STOP)
    assert r.choices[0].message.content == want and r.choices[0].message.role == "assistant"
    assert r.object == "chat.completion" and r.model == "tiny"
    assert r.usage.prompt_tokens == len(tok.encode(prompt))
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.choices[0].finish_reason == ("length" if r.usage.completion_tokens == 12 else "stop")


def test_completions_with_n_and_a_seed_are_each_reproducible(model, tok, client):
    r = client.completions.create(model="tiny", prompt="the lazy", max_tokens=10, temperature=1.0, top_p=0.9,
                                  seed=7, n=3)
    texts = [c.text for c in sorted(r.choices, key=lambda c: c.index)]
    assert texts == [generate(model, tok, "the lazy", max_new_tokens=10, temperature=1.0, top_p=0.9, seed=7 + i)
                     for i in range(3)]
    assert len(set(texts)) > 1                                   # the choices differ
    again = client.completions.create(model="tiny", prompt="the lazy", max_tokens=10, temperature=1.0, top_p=0.9,
                                      seed=7, n=3)
    assert [c.text for c in sorted(again.choices, key=lambda c: c.index)] == texts


def test_penalties_and_extras_mean_what_qkv_generate_means(model, tok, client):
    params = dict(temperature=0.8, seed=3, presence_penalty=1.5, frequency_penalty=0.5)
    extras = dict(top_k=20, min_p=0.05, repetition_penalty=1.3)
    r = client.completions.create(model="tiny", prompt="a cat", max_tokens=12, extra_body=extras, **params)
    assert r.choices[0].text == generate(model, tok, "a cat", max_new_tokens=12, **params, **extras)


def test_stop_strings_cut_the_text_and_say_stop(model, tok, client):
    full = generate(model, tok, "the dog", temperature=0, max_new_tokens=20)
    stop = full[5:8]
    assert len(stop) == 3
    r = client.completions.create(model="tiny", prompt="the dog", temperature=0, max_tokens=20, stop=[stop, "zzzz"])
    assert r.choices[0].text == full[:full.index(stop)] and r.choices[0].finish_reason == "stop"


# ---- each field in each of its OpenAI forms -----------------------------------------------------------
@pytest.mark.parametrize("route", ["chat", "completions"])
def test_stop_as_a_string_and_as_a_list(model, tok, client, route):
    if route == "chat":
        messages = [{"role": "user", "content": "the dog"}]
        prompt = chat_text(tok, messages)
        create = lambda **kw: client.chat.completions.create(model="tiny", messages=messages, **kw)   # noqa: E731
        text = lambda r: r.choices[0].message.content                                                 # noqa: E731
    else:
        prompt = "the dog"
        create = lambda **kw: client.completions.create(model="tiny", prompt=prompt, **kw)          # noqa: E731
        text = lambda r: r.choices[0].text                                                            # noqa: E731
    full = generate(model, tok, prompt, temperature=0, max_new_tokens=20)
    stop = full[2:6]
    assert len(stop) == 4
    if route == "completions":               # the text before the stop holds some of its characters: a string
        assert set(stop) & set(full[:full.index(stop)])       # is not a list of one-character stops
    for form in (stop, [stop], ["zzzz", stop]):
        r = create(temperature=0, max_tokens=20, stop=form)
        assert text(r) == full[:full.index(stop)] and r.choices[0].finish_reason == "stop", form


def test_prompt_as_a_list_gives_n_choices_per_prompt_in_order(model, tok, client):
    prompts = ["the lazy", "a cat sat"]
    r = client.completions.create(model="tiny", prompt=prompts, max_tokens=6, temperature=1.0, seed=5, n=2)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert [c.text for c in r.choices] == [generate(model, tok, p, max_new_tokens=6, temperature=1.0, seed=5 + j)
                                           for p in prompts for j in range(2)]
    assert r.usage.prompt_tokens == sum(len(tok.encode(p)) for p in prompts)
    one = client.completions.create(model="tiny", prompt=prompts[1], max_tokens=6, temperature=1.0, seed=5, n=2)
    assert [c.text for c in one.choices] == [c.text for c in r.choices[2:]]


def test_message_content_as_text_parts_developer_and_null(model, tok, client):
    plain = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the fox ran"},
             {"role": "assistant", "content": ""}, {"role": "user", "content": "and the dog"}]
    forms = [[{"role": "developer", "content": "be brief"},
              {"role": "user", "content": [{"type": "text", "text": "the fox"}, {"type": "text", "text": " ran"}]},
              {"role": "assistant", "content": None},
              {"role": "user", "content": [{"type": "text", "text": "and the dog"}]}]]
    want = generate(model, tok, chat_text(tok, plain), temperature=0, max_new_tokens=10, stop=DEFAULT_TEMPLATE_STOP)
    for messages in [plain] + forms:
        r = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=10)
        assert r.choices[0].message.content == want
        assert r.usage.prompt_tokens == len(tok.encode(chat_text(tok, plain)))


def test_max_tokens_and_max_completion_tokens(client):
    messages = [{"role": "user", "content": "the cat"}]
    for limit in (dict(max_tokens=5), dict(max_completion_tokens=5), dict(max_tokens=40, max_completion_tokens=5)):
        r = client.chat.completions.create(model="tiny", messages=messages, temperature=0, stop=[],
                                           extra_body={"ignore_eos": True}, **limit)
        assert r.usage.completion_tokens == 5 and r.choices[0].finish_reason == "length", limit


@pytest.mark.parametrize("params", [dict(frequency_penalty=2.0), dict(presence_penalty=2.0),
                                    dict(extra_body={"repetition_penalty": 2.0}),
                                    dict(temperature=1.0, seed=4, extra_body={"min_p": 0.9}),
                                    dict(temperature=1.0, seed=4, extra_body={"top_k": 3}),
                                    dict(temperature=1.0, seed=4, top_p=0.3)])
def test_each_sampling_field_reaches_the_sampler(model, tok, client, params):
    """One field at a time (each changes the text here): the reply is qkv.generate's with that field."""
    params = {"temperature": 0, **params}
    as_generate = {k: v for k, v in params.items() if k != "extra_body"} | params.get("extra_body", {})
    r = client.completions.create(model="tiny", prompt="the cat", max_tokens=12, **params)
    want = generate(model, tok, "the cat", max_new_tokens=12, **as_generate)
    assert r.choices[0].text == want
    without = {k: v for k, v in as_generate.items() if k in ("temperature", "seed")}
    assert want != generate(model, tok, "the cat", max_new_tokens=12, **without)


def test_ignore_eos_and_an_eos_forced_by_logit_bias(tok, client):
    force = {"logit_bias": {str(tok.eos_id): 100}, "max_tokens": 6}
    r = client.completions.create(model="tiny", prompt="the", **force)
    assert (r.choices[0].text, r.choices[0].finish_reason, r.usage.completion_tokens) == ("", "stop", 1)
    r = client.completions.create(model="tiny", prompt="the", extra_body={"ignore_eos": True}, **force)
    assert (r.choices[0].finish_reason, r.usage.completion_tokens) == ("length", 6)


def test_the_budget_at_the_context_boundaries(server, tok):
    """96 positions: a prompt of 96 is refused, 95 + max_tokens 1 fits, and without max_tokens the reply
    gets what is left (under the cap of 48)."""
    x = next(k for k in range(60, 200) if len(tok.encode("x" * k)) == 96)
    prompt = "x" * x
    status, reply = request(server[0], "POST", "/v1/completions", {"prompt": prompt, "max_tokens": 1})
    assert status == 400 and reply["error"]["code"] == "context_length_exceeded"
    assert reply["error"]["message"] == ("the prompt has 96 tokens but this model's context is 96 tokens; shorten it")
    messages = [{"role": "user", "content": "x" * 40}]
    n = len(tok.encode(chat_text(tok, messages)))
    body = {"messages": messages, "temperature": 0, "ignore_eos": True, "stop": []}
    status, reply = request(server[0], "POST", "/v1/chat/completions", {**body, "max_tokens": 96 - n})
    assert status == 200 and reply["usage"]["completion_tokens"] == 96 - n
    status, reply = request(server[0], "POST", "/v1/chat/completions", {**body, "max_tokens": 97 - n})
    assert status == 400 and reply["error"]["code"] == "context_length_exceeded"
    assert reply["error"]["message"] == (f"this model's context is 96 tokens, but the prompt has {n} and max_tokens "
                                         f"asks for {97 - n} ({97} in all); lower max_tokens to at most {96 - n} "
                                         f"or shorten the prompt")
    status, reply = request(server[0], "POST", "/v1/chat/completions", body)
    assert status == 200 and reply["usage"]["completion_tokens"] == min(48, 96 - n)
    assert 96 - n < 48
    status, reply = request(server[0], "POST", "/v1/completions", {"prompt": []})
    assert reply["error"]["message"] == "prompt is an empty list; give a string or a list of strings"


@pytest.mark.parametrize("bias, ok", [({"0": 1}, True), ({"299": -100}, True), ({"5": 100}, True),
                                      ({"300": 1}, False), ({"-1": 1}, False), ({" 5": 1}, False),
                                      ({"5-": 1}, False), ({"X5": 1}, False), ({"5": 100.5}, False),
                                      ({"5": -100.5}, False)])
def test_logit_bias_bounds(server, tok, bias, ok):
    assert tok.vocab_size == 300
    status, reply = request(server[0], "POST", "/v1/completions", {"prompt": "a", "max_tokens": 1, "logit_bias": bias})
    assert (status == 200) == ok, reply
    if not ok:
        (key, value), = bias.items()
        want = (f"logit_bias value {value} for token {key} must be between -100 and 100" if abs(value) > 100 else
                f"logit_bias key {key!r} is not a token id in [0, 300)")
        assert reply["error"]["message"] == want and reply["error"]["param"] == "logit_bias"


def test_response_shapes_are_openais(model, tok, server):
    """object, id, created, usage and the log-probability fields as OpenAI spells them (raw JSON, which the
    client would hide)."""
    url = server[0]
    status, chat = request(url, "POST", "/v1/chat/completions",
                           {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0,
                            "logprobs": True, "top_logprobs": 2})
    status2, done = request(url, "POST", "/v1/completions", {"prompt": "the cat", "max_tokens": 5, "temperature": 0,
                                                               "logprobs": 2})
    assert status == status2 == 200
    assert chat["object"] == "chat.completion" and done["object"] == "text_completion"
    assert chat["id"].startswith("chatcmpl-") and done["id"].startswith("cmpl-") and chat["id"] != done["id"]
    assert abs(chat["created"] - time.time()) < 60
    ids = tok.encode(chat_text(tok, [{"role": "user", "content": "hi"}]))
    for entry in chat["choices"][0]["logprobs"]["content"]:
        with torch.no_grad():
            want_V = model(torch.tensor([ids])).logits[0, -1].log_softmax(-1)
        chosen = int(want_V.argmax())
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
        assert entry["token"] == tok.token_text(chosen) and entry["bytes"] == list(entry["token"].encode())
        assert abs(entry["logprob"] - float(want_V[chosen])) < 1e-4
        top = want_V.topk(2)
        assert [(e["token"], round(e["logprob"], 4)) for e in entry["top_logprobs"]] == \
            [(tok.token_text(int(i)), round(float(v), 4)) for v, i in zip(top.values, top.indices)]
        ids.append(chosen)
    lp = done["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == done["usage"]["completion_tokens"] == 5
    assert "".join(lp["tokens"]) == done["choices"][0]["text"]
    assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:i]) for i in range(5)]
    assert_openai_shape(chat, openai.types.chat.ChatCompletion)
    assert_openai_shape(done, openai.types.Completion)
    status, raw = request(url, "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                                                 "max_tokens": 3, "stream": True, "logprobs": True})
    chunks = [json.loads(line[6:]) for line in raw.split("\n") if line.startswith("data: {")]
    assert chunks and all(c["object"] == "chat.completion.chunk" and "usage" not in c for c in chunks)
    for c in chunks:
        assert_openai_shape(c, openai.types.chat.ChatCompletionChunk)
    status, raw = request(url, "POST", "/v1/completions", {"prompt": "the", "max_tokens": 3, "stream": True})
    chunks = [json.loads(line[6:]) for line in raw.split("\n") if line.startswith("data: {")]
    assert chunks and all(c["object"] == "text_completion" and "usage" not in c for c in chunks)
    for c in chunks:        # the stream's null finish_reason (as OpenAI streams it) is outside Completion's literals
        final = [{**choice, "finish_reason": choice["finish_reason"] or "stop"} for choice in c["choices"]]
        assert_openai_shape({**c, "choices": final}, openai.types.Completion)


def test_a_model_with_its_own_template_is_served_as_qkv_chat(tok):
    """The model's template (with bos_token), no default stop string: the reply is qkv.chat's."""
    template = ("{{ bos_token }}{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{{ eos_token }}{% endfor %}"
                "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    own = Tokenizer(Tokenizer.train_bpe([TEXT], vocab_size=300, special_tokens=["<s>", "</s>"]).backend,
                    {"bos_token": "<s>", "eos_token": "</s>"}, template)
    model = tiny_gpt(own, pos="rope", seed=2)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the fox"}]
    with running(create_app(model, ServeConfig(model_name="own", max_tokens_cap=48))) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        r = client.chat.completions.create(model="own", messages=messages, temperature=0, max_tokens=16)
    assert r.choices[0].message.content == qkv.chat(model, messages, temperature=0, max_new_tokens=16)
    assert r.usage.prompt_tokens == len(own.encode(render_chat(template, messages, True, own.specials)))
    assert render_chat(template, messages, True, own.specials).startswith("<s><|system|>")


def test_logprobs_are_the_models_own(model, tok, client):
    r = client.completions.create(model="tiny", prompt="the cat", temperature=0, max_tokens=6, logprobs=3)
    ids = tok.encode("the cat")
    lp = r.choices[0].logprobs
    for j, (token, value, top) in enumerate(zip(lp.tokens, lp.token_logprobs, lp.top_logprobs)):
        with torch.no_grad():
            want_V = model(torch.tensor([ids])).logits[0, -1].log_softmax(-1)
        chosen = int(want_V.argmax())
        assert token == tok.token_text(chosen) and abs(value - float(want_V[chosen])) < 1e-4
        assert len(top) == 3 and max(top.values()) == pytest.approx(value, abs=1e-6)
        ids.append(chosen)
    c = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], temperature=0,
                                       max_tokens=4, logprobs=True, top_logprobs=2)
    content = c.choices[0].logprobs.content
    assert len(content) == c.usage.completion_tokens and all(len(e.top_logprobs) == 2 for e in content)
    assert "".join(e.token for e in content) == c.choices[0].message.content


def test_logprobs_and_logit_bias_equal_qkv_generates(model, tok, client):
    """One implementation (qkv.logprobs, GenerationConfig.logit_bias): the server's row and qkv.generate agree."""
    bias = {tok.encode("o")[0]: 7.5, tok.encode("e")[0]: -100}
    r = client.completions.create(model="tiny", prompt="the cat", temperature=0.9, seed=3, max_tokens=8,
                                  logprobs=2, logit_bias={str(k): v for k, v in bias.items()})
    want = generate(model, tok, "the cat", max_new_tokens=8, temperature=0.9, seed=3, logit_bias=bias,
                    logprobs=True, top_logprobs=2)
    lp = r.choices[0].logprobs
    assert r.choices[0].text == want.text and lp.tokens == [tok.token_text(t.id) for t in want.logprobs]
    assert lp.token_logprobs == pytest.approx([t.logprob for t in want.logprobs], abs=1e-5)
    assert [sorted(top.values()) for top in lp.top_logprobs] == \
        [pytest.approx(sorted(v for _, v in t.top), abs=1e-5) for t in want.logprobs]


def test_a_token_limit_inside_a_character_leaves_no_half_of_it_anywhere(model, tok, server, client):
    """日 is three byte tokens here; a reply forced to its first byte and cut after one token is empty on every
    surface (the server plain and streamed, both routes; qkv.chat; a ChatSession), never U+FFFD (issue 20)."""
    first, *rest = tok.encode("日")
    assert len(rest) == 2 and "\ufffd" in tok.decode([first])          # a plain decode shows half a character
    force = dict(max_tokens=1, temperature=0, logit_bias={str(first): 100})
    r = client.completions.create(model="tiny", prompt="the", **force)
    assert (r.choices[0].text, r.choices[0].finish_reason, r.usage.completion_tokens) == ("", "length", 1)
    chunks = list(client.completions.create(model="tiny", prompt="the", stream=True, **force))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == ""
    messages = [{"role": "user", "content": "the cat"}]
    c = client.chat.completions.create(model="tiny", messages=messages, **force)
    assert (c.choices[0].message.content, c.choices[0].finish_reason) == ("", "length")
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, stream=True, **force))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == ""
    local = dict(max_new_tokens=1, temperature=0, logit_bias={first: 100})
    templated = Tokenizer(tok.backend, {"eos_token": tok.token_text(tok.eos_id)}, DEFAULT_TEMPLATE)
    assert qkv.chat(model, messages, tokenizer=templated, **local) == ""
    session = qkv.ChatSession(model, tokenizer=templated)
    assert "".join(session.say("the cat", **local)) == "" and session.messages[-1]["content"] == ""
    plain = dict(local, max_new_tokens=3, logit_bias={first: 100, rest[0]: 0})
    assert qkv.generate(model, tok, "the", **plain) == ""              # E6 E6 E6: three broken starts, no text


def test_logit_bias_forces_a_token(tok, client):
    target = tok.encode(" dog")[0]
    r = client.completions.create(model="tiny", prompt="a", max_tokens=5, temperature=1.0, seed=0,
                                  logit_bias={str(target): 100})
    assert r.choices[0].text == tok.decode([target] * 5)


def test_streaming_gives_the_same_text_then_usage_then_done(model, tok, server, client):
    messages = [{"role": "user", "content": "the mat"}]
    whole = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=15)
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=15,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    status, raw = request(server[0], "POST", "/v1/completions",
                          {"prompt": "the", "max_tokens": 3, "stream": True, "temperature": 0})
    events = [line for line in raw.split("\n") if line]
    assert status == 200 and events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)
    assert "".join(json.loads(e[6:])["choices"][0]["text"] for e in events[:-1]) == \
        generate(model, tok, "the", temperature=0, max_new_tokens=3)


# ---- raw HTTP: the errors ----------------------------------------------------------------------------
CHAT = {"messages": [{"role": "user", "content": "the fox"}], "max_tokens": 4}
BAD = [  # (body, status, phrase in the message, param)
    (b"{not json", 400, "not valid JSON", None),
    ({"messages": "hello"}, 400, "messages", "messages"),
    ({**CHAT, "temperature": "hot"}, 400, "temperature", "temperature"),
    ({**CHAT, "temperature": -1}, 400, "temperature=-1.0 must be >= 0", "temperature"),
    ({**CHAT, "top_p": 0}, 400, "top_p=0.0 must be in (0, 1]", "top_p"),
    ({**CHAT, "presence_penalty": 3}, 400, "between -2 and 2", "presence_penalty"),
    ({**CHAT, "n": 0}, 400, "n:", "n"),
    ({**CHAT, "max_tokens": 49}, 400, "above this server's cap of 48", "max_tokens"),
    ({**CHAT, "max_tokens": 40, "messages": [{"role": "user", "content": "x" * 60}]}, 400,
     "this model's context is 96 tokens", "max_tokens"),
    ({**CHAT, "messages": [{"role": "user", "content": "x" * 120}]}, 400,
     "but this model's context is 96 tokens", "messages"),
    ({**CHAT, "model": "gpt-4o"}, 404, "does not exist", "model"),
    ({**CHAT, "logit_bias": {"abc": 1}}, 400, "not a token id", "logit_bias"),
    ({**CHAT, "logit_bias": {"5": 101}}, 400, "between -100 and 100", "logit_bias"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages.0.role", "messages.0.role"),
    ({"prompt": 5}, 400, "prompt", "prompt"),
    ({"prompt": "a", "echo": True}, 400, "echo is not supported", "echo"),
    ({"prompt": []}, 400, "empty list", "prompt"),
]


@pytest.mark.parametrize("body, status, phrase, param", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_requests_get_openai_error_envelopes(server, body, status, phrase, param):
    path = "/v1/completions" if isinstance(body, dict) and "prompt" in body else "/v1/chat/completions"
    got, reply = request(server[0], "POST", path, body)
    assert got == status, reply
    assert set(reply["error"]) == {"message", "type", "param", "code"}
    assert phrase in reply["error"]["message"] and reply["error"]["param"] == param
    assert reply["error"]["type"] == ("not_found_error" if status == 404 else "invalid_request_error")


def test_a_prompt_past_the_context_says_the_numbers(server, tok):
    messages = [{"role": "user", "content": "x" * 120}]
    _, reply = request(server[0], "POST", "/v1/chat/completions", {"messages": messages})
    n = len(tok.encode(chat_text(tok, messages)))
    assert f"the prompt has {n} tokens but this model's context is 96 tokens" in reply["error"]["message"]


def test_oversized_bodies_unknown_fields_and_unknown_routes(server):
    status, reply = request(server[0], "POST", "/v1/chat/completions", b"{" + b" " * (2 * 1024 * 1024 + 10) + b"}")
    assert status == 413 and "larger than this server's limit" in reply["error"]["message"]
    status, reply = request(server[0], "POST", "/v1/chat/completions",
                            {**CHAT, "user": "u1", "parallel_tool_calls": False, "store": False, "metadata": {},
                             "stream_options": None, "some_future_field": [1, 2]})
    assert status == 200 and reply["choices"][0]["message"]["role"] == "assistant"
    status, reply = request(server[0], "GET", "/v1/nothing")
    assert status == 404 and "error" in reply


def test_api_key_and_cors(model):
    app = create_app(model, ServeConfig(model_name="tiny", api_key="s3cret", cors_origin="http://a.example"))
    with running(app) as url:
        status, reply = request(url, "POST", "/v1/chat/completions", CHAT)
        assert status == 401 and reply["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        assert good.chat.completions.create(model="tiny", messages=CHAT["messages"], max_tokens=2).choices
        assert request(url, "GET", "/health")[0] == 200                 # health needs no key
        cors = _headers(url, "OPTIONS", "/v1/models", {"Origin": "http://a.example",
                                                         "Access-Control-Request-Method": "GET"})
        assert cors.get("access-control-allow-origin") == "http://a.example"
    with running(create_app(model, ServeConfig(model_name="tiny"))) as url:      # off by default
        assert "access-control-allow-origin" not in _headers(url, "GET", "/v1/models", {"Origin": "http://a.example"})


def _headers(url, method, path, headers):
    import http.client
    from urllib.parse import urlsplit
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    conn.request(method, path, headers=headers)
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return {k.lower(): v for k, v in resp.getheaders()}


# ---- embeddings ----------------------------------------------------------------------------------------
def test_embeddings_are_the_vectors_of_qkv_embed(tmp_path):
    wordpiece = Tokenizer.train_wordpiece([TEXT], vocab_size=120)
    torch.manual_seed(0)
    bert = BERT(ModelConfig(vocab_size=wordpiece.vocab_size, max_len=32, n_layers=1, d_model=16, n_heads=2,
                            mask="bidirectional", type_vocab_size=2))
    qkv.save(bert, tmp_path / "bert", wordpiece)
    encoder = qkv.load(tmp_path / "bert")
    texts = ["a cat sat on the mat", "the dog ran"]
    want = encoder.embed_texts(texts)
    with running(create_app(encoder, ServeConfig(model_name="bert"))) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        got = client.embeddings.create(model="bert", input=texts)                 # base64, the client's default
        assert torch.allclose(torch.tensor([d.embedding for d in got.data]), want, atol=1e-6)
        floats = client.embeddings.create(model="bert", input=texts[0], encoding_format="float")
        assert torch.allclose(torch.tensor(floats.data[0].embedding), want[0], atol=1e-6)
        assert got.usage.prompt_tokens == sum(len(e.ids) for e in wordpiece.encode_batch_for_model(texts))
        for fmt in ("float", "base64"):
            status, raw = request(url, "POST", "/v1/embeddings", {"input": texts, "encoding_format": fmt})
            assert status == 200 and raw["model"] == "bert"
            if fmt == "base64":                  # little-endian float32 bytes, which the client decodes itself
                raw["data"] = [{**d, "embedding": np.frombuffer(base64.b64decode(d["embedding"]), "<f4").tolist()}
                               for d in raw["data"]]
            assert_openai_shape(raw, openai.types.CreateEmbeddingResponse)
            assert torch.allclose(torch.tensor([d["embedding"] for d in raw["data"]]), want, atol=1e-6)
        long = " ".join(texts * 10)                                      # past the context: counted as read
        n = client.embeddings.create(model="bert", input=long).usage.prompt_tokens
        assert n == min(len(wordpiece.encode_batch_for_model([long])[0].ids), 32) == 32
        status, reply = request(url, "POST", "/v1/chat/completions", CHAT)
        assert status == 400 and "answers /v1/embeddings only" in reply["error"]["message"]
        assert reply["error"]["param"] == "model"
        status, reply = request(url, "POST", "/v1/embeddings", {"input": [[1, 2, 3]]})
        assert status == 400 and "token ids are not accepted" in reply["error"]["message"]


# ---- metrics and access log ------------------------------------------------------------------------------
def test_metrics_count_what_was_served(model, caplog):
    from prometheus_client.parser import text_string_to_metric_families
    app = create_app(model, ServeConfig(model_name="tiny", max_tokens_cap=48))
    with caplog.at_level("INFO", logger="qkv.access"), running(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        replies = [client.completions.create(model="tiny", prompt="the", max_tokens=5, n=2, temperature=0),
                   client.chat.completions.create(model="tiny", messages=CHAT["messages"], max_tokens=7)]
        request(url, "POST", "/v1/chat/completions", {"messages": "bad"})
        want = sum(r.usage.completion_tokens for r in replies)
        for _ in range(50):        # the engine counts a token just after handing it out: a scrape may lag one step
            status, text = request(url, "GET", "/metrics")
            families = {f.name: f for f in text_string_to_metric_families(text)}
            value = {f.name: f.samples[0].value for f in families.values() if len(f.samples) == 1}
            if value["qkv_generated_tokens"] >= want:
                break
            time.sleep(0.1)
    assert status == 200
    assert value["qkv_generated_tokens"] == want
    assert value["qkv_queue_length"] == 0 and value["qkv_batch_size"] == 0
    assert value["qkv_tokens_per_second"] > 0
    ttft = {s.name: s.value for s in families["qkv_time_to_first_token_seconds"].samples}
    assert ttft["qkv_time_to_first_token_seconds_count"] == 3                   # one per sequence
    requests = {(s.labels["path"], s.labels["status"]): s.value for s in families["qkv_requests"].samples
                if s.name == "qkv_requests_total"}
    assert requests[("/v1/completions", "200")] == 1 and requests[("/v1/chat/completions", "200")] == 1
    assert requests[("/v1/chat/completions", "400")] == 1
    lines = [r.getMessage() for r in caplog.records if r.name == "qkv.access"]
    assert any('"POST /v1/chat/completions" 400' in line for line in lines)
    assert sum('"POST /v1/completions" 200' in line for line in lines) == 1


def test_streaming_several_choices_keeps_them_apart(model, tok, client):
    kwargs = dict(model="tiny", prompt="a cat", max_tokens=8, temperature=1.0, seed=11, n=3)
    whole = client.completions.create(**kwargs)
    texts = [""] * 3
    for chunk in client.completions.create(stream=True, **kwargs):
        for c in chunk.choices:
            texts[c.index] += c.text
    assert texts == [c.text for c in sorted(whole.choices, key=lambda c: c.index)]
    assert texts == [generate(model, tok, "a cat", max_new_tokens=8, temperature=1.0, seed=11 + i) for i in range(3)]
