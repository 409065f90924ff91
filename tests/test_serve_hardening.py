"""What clients and operators send that the server must answer as OpenAI does, or refuse in its envelope:
tool calls (refused, never ignored), counts that are not JSON integers, a user message without content,
a chunked body past the limit (413), HEAD requests, the API key from a file or the environment with the
Bearer scheme in any case, and --chat-template."""

import http.client
import json
from urllib.parse import urlsplit

import pytest

from qkv import Tokenizer
from qkv.cli import main
from qkv.conversation import render_chat
from qkv.errors import ConfigError
from qkv.serve import ServeConfig, create_app

from serving import TEXT, request, running, tiny_gpt

pytest.importorskip("fastapi")
CHAT = {"messages": [{"role": "user", "content": "the cat"}], "max_tokens": 3, "temperature": 0}


@pytest.fixture(scope="module")
def model():
    return tiny_gpt(Tokenizer.train_bpe([TEXT], vocab_size=300))


@pytest.fixture(scope="module")
def server(model):
    with running(create_app(model, ServeConfig(model_name="tiny", max_body_bytes=4096))) as url:
        yield url


@pytest.mark.parametrize("extra, param", [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
])
def test_tool_calls_are_refused_not_ignored(server, extra, param):
    status, body = request(server, "POST", "/v1/chat/completions", {**CHAT, **extra})
    assert status == 400 and body["error"]["param"] == param
    assert "tool calls are not supported" in body["error"]["message"]


def test_tool_choice_none_is_an_ordinary_request(server):
    status, body = request(server, "POST", "/v1/chat/completions", {**CHAT, "tool_choice": "none"})
    assert status == 200 and body["choices"][0]["message"]["content"] is not None


@pytest.mark.parametrize("field, value", [("max_tokens", True), ("max_tokens", "3"), ("n", True), ("seed", 1.5),
                                          ("max_completion_tokens", False), ("top_logprobs", "2")])
def test_counts_must_be_json_integers(server, field, value):
    status, body = request(server, "POST", "/v1/chat/completions", {**CHAT, field: value, "logprobs": True})
    assert status == 400 and body["error"]["param"] == field


@pytest.mark.parametrize("role", ["user", "system"])
def test_a_message_without_content_is_refused(server, role):
    messages = [{"role": role, "content": None}, {"role": "user", "content": "hi"}]
    status, body = request(server, "POST", "/v1/chat/completions", {**CHAT, "messages": messages})
    assert status == 400 and "needs content" in body["error"]["message"]


def test_a_chunked_body_past_the_limit_is_413(server):
    u = urlsplit(server)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    big = json.dumps({**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}).encode()
    conn.request("POST", "/v1/chat/completions", body=iter([big[:1000], big[1000:]]),
                 headers={"Content-Type": "application/json"}, encode_chunked=True)
    resp = conn.getresponse()
    assert resp.status == 413 and json.loads(resp.read())["error"]["code"] == "body_too_large"
    conn.close()
    assert request(server, "POST", "/v1/chat/completions", CHAT)[0] == 200    # a small one still passes


@pytest.mark.parametrize("path", ["/", "/health"])
def test_head_answers_as_get_does(server, path):
    u = urlsplit(server)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.request("HEAD", path)
    resp = conn.getresponse()
    assert resp.status == 200 and resp.read() == b""
    conn.close()


@pytest.mark.parametrize("source", ["file", "environment"])
def test_the_api_key_from_a_file_or_the_environment_and_any_case_of_bearer(model, tmp_path, monkeypatch, source):
    if source == "file":
        (tmp_path / "key").write_text("s3cret-from-file\n")
        config, key = ServeConfig(api_key_file=str(tmp_path / "key")), "s3cret-from-file"
    else:
        monkeypatch.setenv("QKV_API_KEY", "s3cret-from-env")
        config, key = ServeConfig(), "s3cret-from-env"
    with running(create_app(model, config)) as url:
        for scheme in ("Bearer", "bearer", "BEARER"):
            assert request(url, "GET", "/v1/models", headers={"Authorization": f"{scheme} {key}"})[0] == 200
        assert request(url, "GET", "/v1/models", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert request(url, "GET", "/v1/models", headers={"Authorization": f"Basic {key}"})[0] == 401
        assert request(url, "GET", "/v1/models")[0] == 401
        assert request(url, "GET", "/health")[0] == 200                      # probes stay open


def test_bad_key_sources_are_one_line(tmp_path):
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "zero-bytes").write_bytes(b"")
    for name in ("empty", "zero-bytes"):
        with pytest.raises(ConfigError, match="is empty; write the key on its first line"):
            ServeConfig(api_key_file=str(tmp_path / name)).with_api_key()
    with pytest.raises(ConfigError) as raised:
        ServeConfig(api_key="a", api_key_file=str(tmp_path / "empty")).with_api_key()
    assert str(raised.value) == "give the API key once: --api-key or --api-key-file, not both"
    with pytest.raises(ConfigError, match="cannot read it"):
        ServeConfig(api_key_file=str(tmp_path / "missing")).with_api_key()


def test_a_key_read_from_its_file_replaces_the_file_so_readying_twice_is_the_same(tmp_path):
    """create_app readies the config the command readied already: the file must not count a second time."""
    (tmp_path / "key").write_text("  k3y-line-one  \nsecond line\n")
    once = ServeConfig(api_key_file=str(tmp_path / "key")).with_api_key()
    assert (once.api_key, once.api_key_file) == ("k3y-line-one", None)
    assert once.with_api_key() == once


@pytest.mark.parametrize("field, value, says", [
    ("port", 70000, "port=70000 must be in [0, 65535]"), ("port", -1, "port=-1 must be in [0, 65535]"),
    ("max_batch", 0, "max_batch=0 must be in [1, 1024]"), ("max_batch", 1025, "max_batch=1025 must be in [1, 1024]"),
    ("max_queue", 0, "max_queue=0 must be >= 1"), ("max_tokens_cap", 0, "max_tokens_cap=0 must be >= 1"),
    ("max_body_bytes", 1023, "max_body_bytes=1023 must be >= 1024"), ("timeout", 0, "timeout=0 must be > 0"),
    ("shutdown_timeout", -1, "shutdown_timeout=-1 must be >= 0")])
def test_server_settings_out_of_range_are_one_error_naming_the_range(field, value, says):
    with pytest.raises(ConfigError) as raised:
        ServeConfig(**{field: value})
    assert says in str(raised.value)
    ServeConfig(**{field: {"port": 65535, "max_batch": 1024, "max_body_bytes": 1024}.get(field, 1)})  # the edge is in


TEMPLATE = ("{%- for m in messages -%}\n"
            "{{- '<<' + m['role'] + '>>' + m['content'] + '\\n' -}}\n"
            "{%- endfor -%}\n"
            "{%- if add_generation_prompt -%}{{- '<<assistant>>' -}}{%- endif -%}\n")


def test_chat_template_flag_replaces_the_models(tmp_path, model, capsys):
    """qkv generate --chat with --chat-template renders the conversation with the file's template (the
    same text as render_chat), and a file that is not a template is one line before the model loads."""
    import qkv
    run = tmp_path / "run"
    qkv.save(model, run, model.tokenizer)
    (tmp_path / "t.jinja").write_text(TEMPLATE)
    args = ["--max-new-tokens", "4", "--temperature", "0", "--threads", "1"]
    assert main(["generate", str(run), "--chat", "the cat", "--chat-template", str(tmp_path / "t.jinja"), *args]) == 0
    prompt = render_chat(TEMPLATE, [{"role": "user", "content": "the cat"}])
    assert prompt == "<<user>>the cat\n<<assistant>>"
    want = qkv.generate(model, model.tokenizer, prompt, max_new_tokens=4, temperature=0)
    assert capsys.readouterr().out == want + "\n"
    (tmp_path / "bad.jinja").write_text("{% for m in messages %}")
    (tmp_path / "plain.jinja").write_text("hello")
    for bad, says in (("bad.jinja", "does not parse"), ("plain.jinja", "does not render the messages"),
                      ("missing.jinja", "does not exist")):
        assert main(["chat", str(run), "--chat-template", str(tmp_path / bad)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and says in err


def test_the_models_generation_config_fills_what_a_request_leaves_unset(tmp_path, model):
    """generation_config.json's sampling (a bad value left out with a warning) is the server's default for
    unset fields; a request's own value wins."""
    import qkv
    from qkv.generate import generate
    run = tmp_path / "run"
    qkv.save(model, run, model.tokenizer)
    (run / "generation_config.json").write_text(json.dumps({"temperature": 0.0, "top_k": 7, "top_p": 9.0,
                                                            "do_sample": True, "eos_token_id": 0}))
    with pytest.warns(UserWarning, match="top_p left out"):
        loaded = qkv.load(run)
    assert loaded.generation_defaults == {"temperature": 0.0, "top_k": 7}
    greedy = generate(loaded, loaded.tokenizer, "the cat", max_new_tokens=6, temperature=0)
    sampled = generate(loaded, loaded.tokenizer, "the cat", max_new_tokens=6, temperature=1.5, seed=5, top_k=7)
    assert greedy != sampled                                   # the two settings are told apart
    body = {"prompt": "the cat", "max_tokens": 6}
    with running(create_app(loaded, ServeConfig(model_name="m"))) as url:
        assert request(url, "POST", "/v1/completions", body)[1]["choices"][0]["text"] == greedy
        got = request(url, "POST", "/v1/completions", {**body, "temperature": 1.5, "seed": 5})[1]
        assert got["choices"][0]["text"] == sampled              # top_k 7 from the file, temperature from the request


def test_gguf_sampling_keys_are_the_defaults(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    import qkv
    from gguf_fixtures import random_llama, write_llama_gguf
    path = write_llama_gguf(tmp_path / "m.gguf", random_llama(transformers, seed=2),
                            metadata={"general.sampling.temp": 0.25, "general.sampling.top_k": 11,
                                      "general.sampling.min_p": 0.125})
    assert qkv.load(path).generation_defaults == {"temperature": 0.25, "top_k": 11, "min_p": 0.125}
