"""Text out of a SentencePiece GGUF: streaming byte-fallback pieces, `qkv generate`, `qkv chat`, qkv.chat and
the server's completions, each against transformers' decoding of the same ids (files from gguf_fixtures)."""

import io

import pytest
import torch

import qkv
from qkv.cli import main
from qkv.text_stream import TextStream

from gguf_fixtures import SP_PLAIN as PLAIN, SP_SPECIAL as SPECIAL

pytest.importorskip("gguf")
pytest.importorskip("sentencepiece")


def _theirs(transformers, d):
    return transformers.AutoTokenizer.from_pretrained(d, gguf_file="m.gguf")


def _greedy(model, ids: list[int], n: int) -> list[int]:
    """n greedy ids after ``ids``, eos included (what --ignore-eos samples), without a cache."""
    new = []
    with torch.no_grad():
        for _ in range(n):
            new.append(int(model(torch.tensor([list(ids) + new])).logits[0, -1].argmax()))
    return new


def test_streaming_holds_back_byte_pieces(sp_files):
    """Byte-fallback pieces stream as whole characters: nothing shown is U+FFFD, a character's first bytes
    show nothing, and the pieces add up to the decoded text."""
    ours = qkv.load(sp_files["unigram"][0] / "m.gguf").tokenizer
    for text in PLAIN + SPECIAL:
        stream = TextStream(ours)
        pieces = [stream.push(i) for i in ours.encode(text)]
        assert "".join(pieces) + stream.finish() == ours.decode(ours.encode(text))
        assert not any("\ufffd" in p for p in pieces)
    ids = ours.encode("𝕏")                              # no piece: four byte pieces
    stream = TextStream(ours)
    assert [stream.push(i) for i in ids][:-1] == [""] * (len(ids) - 1) and len(ids) >= 4


@pytest.mark.parametrize("name", ["unigram", "bpe"])
def test_generate_prints_what_transformers_decodes(transformers, sp_files, name, capsys):
    """`qkv generate` on a SentencePiece file: the continuation keeps the space its first piece carries."""
    d, _ = sp_files[name]
    prompt = "First Citizen:"
    assert main(["generate", str(d / "m.gguf"), "--prompt", prompt, "--max-new-tokens", "16", "--temperature", "0",
                 "--ignore-eos", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    theirs = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file="m.gguf").eval()
    tok = _theirs(transformers, d)
    new = _greedy(theirs, tok(prompt).input_ids, 16)    # after bos (and eos where the file says so), as qkv
    want = tok.decode(tok(prompt, add_special_tokens=False).input_ids + new)
    assert printed == want.rstrip("\ufffd") + "\n"


def test_chat_decodes_the_reply(transformers, sp_files):
    """qkv.chat's reply is the reply tokens' text, as transformers decodes them (the first piece's space,
    the template's, is not part of it)."""
    d, _ = sp_files["bpe-no-prefix"]
    model = qkv.load(d / "m.gguf")
    messages = [{"role": "user", "content": "Größe über 🙂?"}]
    reply = qkv.chat(model, messages, max_new_tokens=12, temperature=0, ignore_eos=True)
    tok = _theirs(transformers, d)
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file="m.gguf").eval()
    assert reply == tok.decode(_greedy(theirs, ids, 12)).rstrip("\ufffd")


def test_chat_command_streams_the_reply(sp_files, monkeypatch, capsys):
    d, _ = sp_files["unigram"]
    monkeypatch.setattr("sys.stdin", io.StringIO("Größe 🙂 𝕏?\n/exit\n"))
    assert main(["chat", str(d / "m.gguf"), "--max-new-tokens", "12", "--temperature", "0", "--ignore-eos",
                 "--threads", "1"]) == 0
    want = qkv.chat(qkv.load(d / "m.gguf"), [{"role": "user", "content": "Größe 🙂 𝕏?"}], max_new_tokens=12,
                    temperature=0, ignore_eos=True)
    assert capsys.readouterr().out == want + "\n"
    assert main(["info", str(d / "m.gguf")]) == 0
    assert "sentencepiece" in capsys.readouterr().out


def test_server_completion_is_qkv_generates_text(sp_files):
    """/v1/completions continues the prompt as `qkv generate` does, the first piece's space kept."""
    pytest.importorskip("fastapi")
    from qkv.serve import ServeConfig, create_app
    from serving import request, running
    model = qkv.load(sp_files["unigram"][0] / "m.gguf")
    want = qkv.generate(model, model.tokenizer, "First Citizen:", max_new_tokens=12, temperature=0, ignore_eos=True)
    with running(create_app(model, ServeConfig(model_name="m"))) as url:
        status, reply = request(url, "POST", "/v1/completions", {"model": "m", "prompt": "First Citizen:",
                                                                 "max_tokens": 12, "temperature": 0,
                                                                 "ignore_eos": True})
    assert status == 200 and reply["choices"][0]["text"] == want
    assert want[:1] == " "                              # the case that needs the prompt's last token


def test_an_empty_prompt_starts_a_text(transformers, sp_files):
    """After bos alone (an empty prompt) the text starts afresh: no space in front, as transformers decodes."""
    d, _ = sp_files["unigram"]
    model = qkv.load(d / "m.gguf")
    text = qkv.generate(model, model.tokenizer, "", max_new_tokens=8, temperature=0, ignore_eos=True)
    new = _greedy(model, [model.tokenizer.bos_id], 8)
    assert text == _theirs(transformers, d).decode(new).rstrip("\ufffd") and text[:1] != " "
