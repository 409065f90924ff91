"""`qkv chat`, `qkv generate --chat` and `qkv quantize` on a small random GGUF with a chat template: the
same text as the library, the commands of the chat loop, and one-line errors for bad input."""

import io
import json

import pytest
import torch

import qkv
from qkv.cli import main

from gguf_fixtures import random_llama, write_llama_gguf

pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("chat")
    return write_llama_gguf(d / "m.gguf", random_llama(transformers, seed=3))


def _chat(monkeypatch, capsys, argv, lines):
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(line + "\n" for line in lines)))
    status = main(["chat", *argv])
    out = capsys.readouterr()
    return status, out.out, out.err


def test_generate_chat_prints_the_library_reply(model_file, capsys):
    args = ["--max-new-tokens", "12", "--temperature", "0", "--threads", "1"]
    assert main(["generate", str(model_file), "--chat", "Hi there", "--system", "Be brief.", *args]) == 0
    model = qkv.load(model_file)
    want = qkv.chat(model, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}],
                    max_new_tokens=12, temperature=0)
    assert capsys.readouterr().out == want + "\n"


def test_chat_loop_turns_reset_and_exit(model_file, monkeypatch, capsys):
    argv = [str(model_file), "--max-new-tokens", "8", "--temperature", "0", "--threads", "1"]
    status, out, err = _chat(monkeypatch, capsys, argv, ["hello", "again", "/reset", "hello", "/exit", "never read"])
    assert status == 0 and err == "(conversation reset)\n"
    model = qkv.load(model_file)
    first = qkv.chat(model, [{"role": "user", "content": "hello"}], max_new_tokens=8, temperature=0)
    second = qkv.chat(model, [{"role": "user", "content": "hello"}, {"role": "assistant", "content": first},
                              {"role": "user", "content": "again"}], max_new_tokens=8, temperature=0)
    assert out == f"{first}\n{second}\n{first}\n"               # /reset forgot the first two turns


def test_chat_context_overflow_is_one_line_and_the_chat_goes_on(model_file, monkeypatch, capsys):
    argv = [str(model_file), "--max-new-tokens", "4", "--temperature", "0", "--context", "100", "--threads", "1"]
    status, out, err = _chat(monkeypatch, capsys, argv, ["word " * 60] + ["hi"] * 6)
    assert status == 0
    lines = err.strip().split("\n")
    assert "the conversation needs" in lines[0] and "--context" in lines[0]
    assert any("dropped the" in line for line in lines[1:])      # later turns pushed the oldest out


@pytest.mark.parametrize("argv, phrase", [
    (["--temperature", "-1"], "temperature=-1.0 must be >= 0"),
    (["--context", "1"], "context=1 must be between 2"),
    (["--threads", "0"], "--threads 0 must be a positive integer"),
    (["--context", "0"], "--context 0 must be a positive integer"),
])
def test_chat_bad_flags_are_one_line(model_file, monkeypatch, capsys, argv, phrase):
    status, _, err = _chat(monkeypatch, capsys, [str(model_file), *argv], ["hi"])
    assert status == 2 and phrase in err and len(err.strip().split("\n")) == 1


def test_chat_needs_a_template(tmp_path, monkeypatch, capsys):
    tok = qkv.Tokenizer.train_char("abc ")
    qkv.save(qkv.GPT(qkv.ModelConfig(vocab_size=tok.vocab_size, max_len=16, n_layers=1, d_model=16, n_heads=2)),
             tmp_path / "plain", tok)
    status, _, err = _chat(monkeypatch, capsys, [str(tmp_path / "plain")], ["hi"])
    assert status == 2 and "has no chat template" in err


def test_quantize_writes_a_checkpoint_that_loads_quantized(model_file, tmp_path, capsys):
    f32 = tmp_path / "f32"
    assert main(["quantize", str(model_file), str(tmp_path / "q4"), "--bits", "4", "--group-size", "64"]) == 0
    config = json.loads((tmp_path / "q4" / "config.json").read_text())
    assert config["quantization"]["blocks.0.mlp.up"] == "int4/64" and config["quantization"]["head"] == "int8"
    loaded = qkv.load(tmp_path / "q4")
    assert loaded.tokenizer.chat_template == qkv.load(model_file).tokenizer.chat_template
    reference = qkv.load(model_file)
    qkv.quant.quantize_model(reference, 4, 64)
    ids = torch.randint(0, 300, (1, 12))
    assert torch.equal(loaded(ids).logits, reference(ids).logits)
    assert main(["quantize", str(tmp_path / "q4"), str(f32), "--bits", "8"]) == 2
    assert "already quantized" in capsys.readouterr().err and not f32.exists()


@pytest.mark.parametrize("argv, phrase", [
    (["--bits", "3"], "--bits 3 is not supported; choose 8"),
    (["--bits", "4", "--group-size", "100"], "--group-size 100 is not supported"),
])
def test_quantize_bad_flags(model_file, tmp_path, capsys, argv, phrase):
    assert main(["quantize", str(model_file), str(tmp_path / "out"), *argv]) == 2
    assert phrase in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_quantize_refuses_a_quantized_gguf_and_a_foreign_folder(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    q = write_llama_gguf(tmp_path / "q.gguf", random_llama(transformers), {"blk.0": "Q4_1", "token_embd": "Q8_0"})
    assert main(["quantize", str(q), str(tmp_path / "out"), "--bits", "8"]) == 2
    assert "already quantized (Q4_1, Q8_0)" in capsys.readouterr().err and not (tmp_path / "out").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert main(["quantize", str(q), str(tmp_path / "mine"), "--bits", "8"]) == 2
    assert "not a qkv run" in capsys.readouterr().err and (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_info_describes_a_gguf_file_and_a_quantized_checkpoint(model_file, tmp_path, capsys):
    assert main(["info", str(model_file), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model_type"] == "gguf" and info["gguf"]["tensor_types"] == {"F32": 20}
    assert info["tokenizer"]["chat_template"] and info["tokenizer"]["special"]["eos"] == "<|im_end|>"
    params = info["parameters"]
    assert main(["quantize", str(model_file), str(tmp_path / "q"), "--bits", "8"]) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "q"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["quantization"] == {"int8": 13} and info["parameters"] == params     # 2 x 6 + the head


def test_chat_commands_never_reach_the_model(model_file, monkeypatch, capsys):
    """/help, /set (checked by GenerationConfig), an unknown /cmd (an error line), //text (a message that
    begins with a slash), a \"\"\" block of several lines: each does what it says, and the replies are the
    library's for the messages that were really sent."""
    argv = [str(model_file), "--max-new-tokens", "6", "--temperature", "0.9", "--seed", "1", "--threads", "1"]
    lines = ["/help", "/set temperature 0", "/set max_new_tokens 5", "/set top_p 7", "/set colour 3", "/set",
             "/frobnicate", "//slash first", '"""two', "lines", '"""', "/exit"]
    status, out, err = _chat(monkeypatch, capsys, argv, lines)
    assert status == 0
    assert "/reset" in err and "/set NAME VALUE" in err                                # /help
    assert "(temperature 0.0)" in err and "(max_new_tokens 5)" in err
    assert "top_p=7.0 must be in (0, 1]" in err and "usage: /set NAME VALUE" in err
    assert "temperature 0.0; top_k None" in err                                        # /set lists them
    assert "unknown command /frobnicate; /help" in err
    model = qkv.load(model_file)
    first = qkv.chat(model, [{"role": "user", "content": "/slash first"}], max_new_tokens=5, temperature=0)
    second = qkv.chat(model, [{"role": "user", "content": "/slash first"}, {"role": "assistant", "content": first},
                              {"role": "user", "content": "two\nlines"}], max_new_tokens=5, temperature=0)
    assert out == f"{first}\n{second}\n"


def test_ctrl_c_stops_the_reply_and_keeps_the_conversation(model_file, monkeypatch, capsys):
    """Ctrl-C while a reply is written stops it; the next turn answers the conversation with the part
    already written in it, exactly as a fresh chat over those messages."""
    import sys
    argv = [str(model_file), "--max-new-tokens", "8", "--temperature", "0", "--threads", "1"]
    real_write, writes = sys.stdout.write, []

    def write(text):
        writes.append(text)
        if len(writes) == 2:                                  # during the first reply's second piece
            raise KeyboardInterrupt
        return real_write(text)
    monkeypatch.setattr(sys.stdout, "write", write)
    status, out, err = _chat(monkeypatch, capsys, argv, ["hello", "again", "/exit"])
    assert status == 0 and "(reply stopped)" in err
    partial = writes[0]
    model = qkv.load(model_file)
    second = qkv.chat(model, [{"role": "user", "content": "hello"}, {"role": "assistant", "content": partial},
                              {"role": "user", "content": "again"}], max_new_tokens=8, temperature=0)
    assert out.endswith(f"{second}\n")


def test_a_reply_stopped_inside_a_forward_leaves_a_consistent_cache(model_file):
    """Ctrl-C can land between two layers of a decode step: the session trims every layer's cache to the
    positions all of them hold, and the next turn equals a fresh chat."""
    from qkv.conversation import ChatSession
    from qkv.generate import GenerationConfig
    model = qkv.load(model_file)
    session = ChatSession(model, config=GenerationConfig(max_new_tokens=8, temperature=0))
    last = model.blocks[-1]
    calls = {"n": 0}
    real_forward = last.forward

    def forward(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:                                   # prefill, 2 decode steps, then inside the 3rd
            raise KeyboardInterrupt
        return real_forward(*a, **k)
    last.forward = forward
    pieces = session.say("hello")
    with pytest.raises(KeyboardInterrupt):
        for _ in pieces:
            pass
    del last.forward
    assert len({c.length for c in session.caches}) == 1
    reply = "".join(session.say("again"))
    fresh = qkv.chat(model, session.messages[:-1], max_new_tokens=8, temperature=0)
    assert reply == fresh


def test_kv_cache_dtype_float16_reaches_the_caches_of_generate_chat_and_serve(model_file, monkeypatch, capsys):
    """--kv-cache-dtype: each command's caches store float16 and it prints what the library prints with a
    float16 cache; the default stays float32."""
    import uvicorn

    from qkv.nn.kv_cache import KVCache
    made = []
    real_init = KVCache.__init__

    def recording(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        made.append(self.k_BGMD.dtype)
    monkeypatch.setattr(KVCache, "__init__", recording)
    args = ["--max-new-tokens", "10", "--temperature", "0", "--threads", "1", "--quantized"]
    assert main(["generate", str(model_file), "--prompt", "hello", *args, "--kv-cache-dtype", "float16"]) == 0
    assert made and set(made) == {torch.float16}
    model = qkv.for_inference(qkv.load(model_file, quantized=True))
    model.cache_dtype = torch.float16
    want = qkv.generate(model, model.tokenizer, "hello", max_new_tokens=10, temperature=0)
    assert capsys.readouterr().out == "hello" + want + "\n"
    made.clear()
    status, out, _ = _chat(monkeypatch, capsys, [str(model_file), *args, "--kv-cache-dtype", "float16"], ["hi"])
    assert status == 0 and made and set(made) == {torch.float16}
    made.clear()
    assert main(["generate", str(model_file), "--prompt", "hello", *args]) == 0
    assert set(made) == {torch.float32}
    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: served.append(app))
    assert main(["serve", str(model_file), "--port", "0", "--kv-cache-dtype", "float16"]) == 0
    assert served and served[0].state.model.cache_dtype == torch.float16
