"""Structured output: whatever the model and the sampling, the text parses as JSON and validates against the
schema (checked with `jsonschema`, which nobody here wrote) — from Python, `qkv generate --json-schema`,
and the server's response_format through the official `openai` client."""

import json

import pytest
import torch

from qkv import GPT, ModelConfig, Tokenizer, generate
from qkv.cli import main
from qkv.errors import InputError
from qkv.grammar import JsonConstraint
from qkv.serve import ServeConfig, create_app

from serving import request, running

jsonschema = pytest.importorskip("jsonschema")
openai = pytest.importorskip("openai")
TEXT = "the quick brown fox jumps over the lazy dog. a cat sat on the mat; the dog ran. " * 20
SCHEMA = {"type": "object",
          "properties": {"name": {"type": "string", "maxLength": 8},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120},
                         "ok": {"type": "boolean"}, "pet": {"enum": ["cat", "dog"]},
                         "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "maxItems": 2}},
          "required": ["name", "age", "ok", "pet"], "additionalProperties": False}


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train_bpe([TEXT], vocab_size=300)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, max_len=256, n_layers=2, d_model=32, n_heads=4)).eval()
    model.tokenizer = tok
    return model


@pytest.mark.parametrize("seed", range(4))
def test_python_output_validates_whatever_the_sampling(model, tok, seed):
    text = generate(model, tok, "the", json_schema=SCHEMA, temperature=1.5, seed=seed, max_new_tokens=200)
    jsonschema.validate(json.loads(text), SCHEMA)
    unconstrained = generate(model, tok, "the", temperature=1.5, seed=seed, max_new_tokens=40)
    with pytest.raises(ValueError):                     # the random model alone writes no JSON
        json.loads(unconstrained)


def test_batched_rows_each_follow_their_grammar(model, tok):
    texts = generate(model, tok, ["the", "a cat sat on", "dog"], json_schema=SCHEMA, temperature=1.0, seed=3,
                     max_new_tokens=200)
    for text in texts:
        jsonschema.validate(json.loads(text), SCHEMA)


def test_the_mask_allows_exactly_the_continuations(tok, model):
    c = JsonConstraint(tok, model.cfg.vocab_size, {"type": "object", "properties": {"a": {"type": "boolean"}},
                                                   "required": ["a"], "additionalProperties": False})
    allowed = c.allowed()
    assert allowed.shape == (model.cfg.vocab_size,)
    assert {tok.decode([i]) for i in allowed.nonzero().flatten().tolist()} <= {"{", '{"', '{"a', '{"a"'}
    assert allowed[tok.encode("{")[0]]


def test_bad_schemas_are_input_errors(tok, model):
    with pytest.raises(InputError, match="not valid JSON"):
        JsonConstraint(tok, model.cfg.vocab_size, "{nope")
    with pytest.raises(InputError, match="must be a JSON object"):
        JsonConstraint(tok, model.cfg.vocab_size, [1, 2])
    with pytest.raises(InputError, match="cannot"):
        JsonConstraint(tok, model.cfg.vocab_size, {"type": "no-such-type"})


def test_cli_json_schema_file(model, tok, tmp_path, capsys):
    import qkv
    qkv.save(model, tmp_path / "gpt", tok)
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    assert main(["generate", str(tmp_path / "gpt"), "--json-schema", str(tmp_path / "schema.json"),
                 "--temperature", "1", "--seed", "5", "--max-new-tokens", "200", "--threads", "1"]) == 0
    jsonschema.validate(json.loads(capsys.readouterr().out), SCHEMA)


def test_server_response_format(model):
    with running(create_app(model, ServeConfig(model_name="t", max_tokens_cap=200))) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        r = client.chat.completions.create(
            model="t", messages=[{"role": "user", "content": "a person"}], n=3, seed=1, temperature=1.2,
            max_tokens=200, response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}})
        for choice in r.choices:
            jsonschema.validate(json.loads(choice.message.content), SCHEMA)
            assert choice.finish_reason == "stop"
        chunks = client.completions.create(model="t", prompt="the", max_tokens=200, temperature=1.0, seed=2,
                                           stream=True, extra_body={"response_format": {
                                               "type": "json_schema", "json_schema": {"schema": SCHEMA}}})
        jsonschema.validate(json.loads("".join(c.choices[0].text for c in chunks if c.choices)), SCHEMA)
        status, reply = request(url, "POST", "/v1/chat/completions", {
            "messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "no-such-type"}}}})
        assert status == 400 and reply["error"]["param"] == "response_format"


def test_a_run_of_digits_stops_at_the_cap(tok, model):
    """JSON numbers are unbounded; the mask ends a run of digits at MAX_DIGITS (then only the number's end,
    a fraction or an exponent may follow), and the run counts across tokens."""
    from qkv.grammar import MAX_DIGITS
    c = JsonConstraint(tok, model.cfg.vocab_size, {"type": "object", "properties": {"n": {"type": "number"}},
                                                   "required": ["n"], "additionalProperties": False})
    for t in tok.encode('{"n": 1'):
        c.advance(t)
    digit_ids = [tok.encode(d)[0] for d in "0123456789"]
    for _ in range(MAX_DIGITS - 2):
        assert c.allowed()[digit_ids].all()
        c.advance(tok.encode("7")[0])
    assert c.digit_run == MAX_DIGITS - 1 and c.allowed()[digit_ids].all()     # one more digit fits
    c.advance(tok.encode("7")[0])
    allowed = c.allowed()
    assert not allowed[digit_ids].any()
    texts = {tok.decode([i]) for i in allowed.nonzero().flatten().tolist()}
    assert {"}", "."} <= {t[:1] for t in texts}
    c.advance(tok.encode(".")[0])                                       # a fraction starts a new run
    assert c.digit_run == 0 and c.allowed()[digit_ids].all()


def test_greedy_digits_end_in_valid_json(tok, model):
    """A model that always prefers '7' writes a number of MAX_DIGITS digits and closes the object."""
    from qkv.grammar import MAX_DIGITS
    bias_V = torch.zeros(model.cfg.vocab_size)
    bias_V[tok.encode("7")[0]] = 100.0
    hook = model.head.register_forward_hook(lambda module, inputs, out: out + bias_V)
    try:
        text = generate(model, tok, "x", json_schema={"type": "object", "properties": {"n": {"type": "integer"}},
                                                      "required": ["n"], "additionalProperties": False},
                        temperature=0, max_new_tokens=60)
    finally:
        hook.remove()
    assert json.loads(text) == {"n": int("7" * MAX_DIGITS)}


def test_cli_json_schema_prints_only_json_and_says_when_it_was_cut(model, tok, tmp_path, capsys):
    import qkv
    qkv.save(model, tmp_path / "gpt", tok)
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    argv = ["generate", str(tmp_path / "gpt"), "--prompt", "the cat", "--json-schema", str(tmp_path / "schema.json"),
            "--temperature", "1", "--seed", "5", "--threads", "1"]
    assert main(argv + ["--max-new-tokens", "200"]) == 0
    jsonschema.validate(json.loads(capsys.readouterr().out), SCHEMA)          # the prompt is not printed
    assert main(argv + ["--max-new-tokens", "5"]) == 2
    out = capsys.readouterr()
    assert out.out.startswith("{") and "cut at --max-new-tokens 5" in out.err and len(out.err.splitlines()) == 1
