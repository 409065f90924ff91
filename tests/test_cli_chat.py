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
    (["--threads", "0"], "--threads 0 must be >= 1"),
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
