"""GGUF files with a SentencePiece vocabulary (``tokenizer.ggml.model = llama``): SentencePiece models trained
here (unigram and BPE, byte fallback, a user-defined piece, odd vocabulary sizes and special ids), written as
llama.cpp's converter writes them beside random llama weights; ids, decoding, streaming and logits against
transformers' GGUF reader, and against SentencePiece itself where transformers ignores the file's flags."""

import io

import pytest
import torch

import qkv
from qkv import CheckpointError
from qkv.cli import main
from qkv.text_stream import TextStream

from gguf_fixtures import random_llama, sentencepiece_metadata, train_sentencepiece, write_llama_gguf

gguf = pytest.importorskip("gguf")
spm = pytest.importorskip("sentencepiece")
PLAIN = ["First Citizen:\nBefore we proceed any further, hear me speak.", "Hello world", "  leading and trailing  ",
         " one leading space", "a\n\nb\tc\t\tend\n", "12345 678.9", "x  y   z    ", "▁already marked", "\n", "", " ",
         "日本語のテキスト 東京 🙂 ⚡⚡ 𝕏",
         "naïve café, déjà vu; Größe über",
         "Ω≈ç√∫ ﬁ ＡＢ",
         "emoji 🙂🙂 and ⚡⚡ twice"]
SPECIAL = ["<s>hi</s> <think>x</s>", "<unk> and <pad> inside<think>", "</s>\n<s> again"]
# name: (model_type, vocab size, add_dummy_prefix, more trainer options, add_bos, add_eos)
FILES = {"unigram": ("unigram", 777, True, {}, None, None),
         "bpe": ("bpe", 1000, True, {"unk_id": 3, "bos_id": 0, "eos_id": 1, "pad_id": 2}, False, True),
         "bpe-no-prefix": ("bpe", 650, False, {"pad_id": -1}, True, None)}


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def files(transformers, tmp_path_factory):
    """{name: (directory holding m.gguf, SentencePieceProcessor of the model it was made from)}."""
    out = {}
    for name, (kind, size, prefix, options, add_bos, add_eos) in FILES.items():
        model = train_sentencepiece(kind, size, prefix, **options)
        vocab = sentencepiece_metadata(model)
        if add_eos is not None:
            vocab["add_eos"] = add_eos
        d = tmp_path_factory.mktemp(name)
        write_llama_gguf(d / "m.gguf", random_llama(transformers, vocab=size, seed=len(out)), add_bos=add_bos,
                         vocab=vocab, template=LLAMA2_CHAT)
        out[name] = d, spm.SentencePieceProcessor(model_proto=model)
    return out


LLAMA2_CHAT = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + "
               "' [/INST]' }}{% else %}{{ ' ' + m['content'] + eos_token }}{% endif %}{% endfor %}")


def _theirs(transformers, d):
    return transformers.AutoTokenizer.from_pretrained(d, gguf_file="m.gguf")


@pytest.mark.parametrize("name", ["unigram", "bpe"])
def test_ids_and_text_match_transformers(transformers, files, name):
    d, _ = files[name]
    theirs, ours = _theirs(transformers, d), qkv.load(d / "m.gguf").tokenizer
    assert ours.kind == "sentencepiece" and ours.vocab_size == len(theirs)
    assert (ours.bos_id, ours.eos_id, ours.pad_id, ours.unk_id) == \
        (theirs.bos_token_id, theirs.eos_token_id, theirs.pad_token_id, theirs.unk_token_id)
    for text in PLAIN + SPECIAL:
        ids = theirs(text, add_special_tokens=False).input_ids
        assert ours.encode(text) == ids, (text, theirs.convert_ids_to_tokens(ids))
        assert ours.prompt_ids(text) == theirs(text).input_ids, text          # add_bos / add_eos as the file says
        assert ours.decode(ids) == theirs.decode(ids)
        if theirs.decode(ids) == text:                 # transformers' own round trip drops a leading space
            assert ours.decode(ours.encode(text)) == text
    byte_pieces = [t for t in theirs.convert_ids_to_tokens(ours.encode(PLAIN[11])) if t.startswith("<0x")]
    assert len(byte_pieces) >= 4                        # the fixture does exercise byte fallback


@pytest.mark.parametrize("name", ["bpe", "bpe-no-prefix"])
def test_sentencepiece_bpe_ids_are_sentencepieces(files, name):
    """A SentencePiece BPE's scores are its merge order: the ids are the model's own. Without the prefix
    space (add_space_prefix false, which transformers' reader ignores) on every text; with it, on texts
    that do not start with a space (there qkv follows transformers, see gguf_sentencepiece)."""
    d, sp = files[name]
    ours = qkv.load(d / "m.gguf").tokenizer
    prefix = FILES[name][2]
    for text in PLAIN:
        if not (prefix and text[:1] in (" ", "▁")):
            assert ours.encode(text) == sp.encode(text), text
            assert ours.decode(ours.encode(text)) == sp.decode(sp.encode(text))


def test_unigram_segmentation_is_the_greedy_one(transformers, files):
    """A unigram file is tokenized by best-scoring merges, not SentencePiece's most probable segmentation:
    the same pieces, other ids on some words (as llama.cpp and transformers do)."""
    d, sp = files["unigram"]
    ours = qkv.load(d / "m.gguf").tokenizer
    differ = [t for t in PLAIN if t[:1] not in ("", " ", "▁") and ours.encode(t) != sp.encode(t)]
    assert differ and all(ours.decode(ours.encode(t)) == sp.decode(sp.encode(t)) for t in differ)


@pytest.mark.parametrize("name", list(FILES))
def test_logits_match_transformers(transformers, files, name):
    d, _ = files[name]
    theirs = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file="m.gguf").eval()
    ours = qkv.load(d / "m.gguf")
    ids = torch.tensor([ours.tokenizer.prompt_ids(PLAIN[0] + " " + PLAIN[11])])
    with torch.no_grad():
        want = theirs(ids).logits
    assert (ours(ids).logits - want).abs().max() < 2e-5


def test_streaming_holds_back_byte_pieces(files):
    """Byte-fallback pieces stream as whole characters: nothing shown is U+FFFD, a character's first bytes
    show nothing, and the pieces add up to the decoded text."""
    ours = qkv.load(files["unigram"][0] / "m.gguf").tokenizer
    for text in PLAIN + SPECIAL:
        stream = TextStream(ours)
        pieces = [stream.push(i) for i in ours.encode(text)]
        assert "".join(pieces) + stream.finish() == ours.decode(ours.encode(text))
        assert not any("\ufffd" in p for p in pieces)
    ids = ours.encode("𝕏")                              # no piece: four byte pieces
    stream = TextStream(ours)
    assert [stream.push(i) for i in ids][:-1] == [""] * (len(ids) - 1) and len(ids) >= 4


@pytest.mark.parametrize("name", ["unigram", "bpe"])
def test_generate_prints_what_transformers_decodes(transformers, files, name, capsys):
    """`qkv generate` on a SentencePiece file: the continuation keeps the space its first piece carries."""
    d, _ = files[name]
    prompt = "First Citizen:"
    assert main(["generate", str(d / "m.gguf"), "--prompt", prompt, "--max-new-tokens", "16", "--temperature", "0",
                 "--ignore-eos", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    theirs = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file="m.gguf").eval()
    tok = _theirs(transformers, d)
    ids = tok(prompt).input_ids                         # bos (and eos where the file says so), as qkv feeds
    new = []
    with torch.no_grad():                               # greedy, eos included (--ignore-eos)
        for _ in range(16):
            new.append(int(theirs(torch.tensor([ids + new])).logits[0, -1].argmax()))
    want = tok.decode(tok(prompt, add_special_tokens=False).input_ids + new)
    assert printed == want.rstrip("\ufffd") + "\n"


def test_chat_decodes_the_reply(transformers, files):
    """qkv.chat's reply is the reply tokens' text, as transformers decodes them (the first piece's space,
    the template's, is not part of it)."""
    d, _ = files["bpe-no-prefix"]
    model = qkv.load(d / "m.gguf")
    messages = [{"role": "user", "content": "Größe über 🙂?"}]
    reply = qkv.chat(model, messages, max_new_tokens=12, temperature=0, ignore_eos=True)
    tok = _theirs(transformers, d)
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file="m.gguf").eval()
    new = []
    with torch.no_grad():
        for _ in range(12):
            new.append(int(theirs(torch.tensor([list(ids) + new])).logits[0, -1].argmax()))
    assert reply == tok.decode(new).rstrip("\ufffd")


def test_without_byte_pieces_a_missing_character_is_unk(transformers, tmp_path):
    """A vocabulary trained without byte fallback: a character no piece covers is <unk>, as SentencePiece has
    it. (transformers' reader drops it without a word, "𝕏y" -> "▁y": qkv differs on purpose.)"""
    model = train_sentencepiece("bpe", 500, byte_fallback=False)
    write_llama_gguf(tmp_path / "m.gguf", random_llama(transformers, vocab=500), vocab=sentencepiece_metadata(model))
    sp, ours = spm.SentencePieceProcessor(model_proto=model), qkv.load(tmp_path / "m.gguf").tokenizer
    for text in PLAIN:
        if text[:1] not in (" ", "▁"):
            assert ours.encode(text) == sp.encode(text), text
    assert ours.encode("𝕏y") == [sp.piece_to_id("▁"), ours.unk_id, sp.piece_to_id("y")]
    assert _theirs(transformers, tmp_path)("𝕏y", add_special_tokens=False).input_ids == [sp.piece_to_id("▁y")]


def test_saved_and_read_back_it_is_the_same_tokenizer(files, tmp_path):
    """A run fine-tuned from a GGUF keeps its tokenizer as tokenizer.json + tokenizer_config.json."""
    ours = qkv.load(files["bpe"][0] / "m.gguf").tokenizer
    ours.save(tmp_path / "tokenizer.json")
    back = qkv.Tokenizer.from_dir(tmp_path)
    assert (back.kind, back.add_bos, back.add_eos, back.bos_id, back.eos_id) == ("sentencepiece", False, True, 0, 1)
    for text in PLAIN + SPECIAL:
        assert back.prompt_ids(text) == ours.prompt_ids(text) and back.decode(ours.encode(text)) == \
            ours.decode(ours.encode(text))


def test_chat_command_streams_the_reply(files, monkeypatch, capsys):
    d, _ = files["unigram"]
    monkeypatch.setattr("sys.stdin", io.StringIO("Größe 🙂 𝕏?\n/exit\n"))
    assert main(["chat", str(d / "m.gguf"), "--max-new-tokens", "12", "--temperature", "0", "--ignore-eos",
                 "--threads", "1"]) == 0
    want = qkv.chat(qkv.load(d / "m.gguf"), [{"role": "user", "content": "Größe 🙂 𝕏?"}], max_new_tokens=12,
                    temperature=0, ignore_eos=True)
    assert capsys.readouterr().out == want + "\n"
    assert main(["info", str(d / "m.gguf")]) == 0
    assert "sentencepiece" in capsys.readouterr().out


def _damaged(src, dst, **changes):
    """A copy of the GGUF ``src`` with some tokenizer.ggml.* values replaced (None removes one)."""
    reader = gguf.GGUFReader(str(src))
    w = gguf.GGUFWriter(str(dst), "llama")
    for field in reader.fields.values():
        key = field.name
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        short = key.removeprefix("tokenizer.ggml.")
        value, kind = field.contents(), field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        if short in changes:
            if changes[short] is None:
                continue
            value = changes[short]
        w.add_key_value(key, value, kind, sub)
    for t in reader.tensors:
        w.add_tensor(t.name, t.data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


@pytest.mark.parametrize("change,phrase", [
    ({"model": "bert"}, "'bert' tokenizer .*qkv rebuilds byte-level BPE \\('gpt2'\\) and SentencePiece \\('llama'\\)"),
    ({"model": "t5"}, "'t5' tokenizer"), ({"model": "rwkv"}, "'rwkv' tokenizer"),
    ({"scores": [0.0] * 10}, "tokenizer.ggml.scores has 10 entries for 777 tokens; the file is damaged"),
    ({"scores": None}, "without tokenizer.ggml.scores"),
    ({"token_type": [1] * 776}, "tokenizer.ggml.token_type has 776 entries"),
    ({"tokens": None}, "has no tokenizer.ggml.tokens"),
])
def test_damaged_vocabularies_are_one_clear_error(files, tmp_path, change, phrase):
    bad = _damaged(files["unigram"][0] / "m.gguf", tmp_path / "bad.gguf", **change)
    with pytest.raises(CheckpointError, match=phrase):
        qkv.load(bad)


def test_misspelt_byte_piece_and_bad_type(files, tmp_path):
    src = files["unigram"][0] / "m.gguf"
    tokens = list(gguf.GGUFReader(str(src)).fields["tokenizer.ggml.tokens"].contents())
    types = list(gguf.GGUFReader(str(src)).fields["tokenizer.ggml.token_type"].contents())
    at = tokens.index("<0x41>")
    with pytest.raises(CheckpointError, match="byte token '<0x4g>' is not spelled <0xNN>"):
        qkv.load(_damaged(src, tmp_path / "a.gguf", tokens=tokens[:at] + ["<0x4g>"] + tokens[at + 1:]))
    with pytest.raises(CheckpointError, match="token 7 has type 9"):
        qkv.load(_damaged(src, tmp_path / "b.gguf", token_type=types[:7] + [9] + types[8:]))


def test_command_line_refuses_a_damaged_vocabulary_in_one_line(files, tmp_path, capsys):
    bad = _damaged(files["unigram"][0] / "m.gguf", tmp_path / "bad.gguf", scores=[0.0] * 3)
    assert main(["generate", str(bad), "--prompt", "a"]) == 2
    err = capsys.readouterr().err
    assert "tokenizer.ggml.scores has 3 entries" in err and "Traceback" not in err and err.count("\n") == 1


def _hand_written(transformers, tmp_path, order=("xy", "yz"), merges=None):
    """A vocabulary written by hand (trained ones rarely tie): its GGUF, then (ours, transformers')."""
    tokens = ["<unk>", "<s>", "</s>", "▁", "a", "b", "c", "x", "y", "z", "▁a", "▁ab", "bc", "ab", *order]
    scores = [0, 0, 0, -9, -9, -9, -9, -9, -9, -9, -1, -2, -2, -3, -4, -4]
    vocab = {"model": "llama", "pre": "default", "tokens": tokens, "scores": [float(s) for s in scores],
             "token_type": [2, 3, 3] + [1] * (len(tokens) - 3), "ids": {"unk": 0, "bos": 1, "eos": 2}}
    if merges is not None:
        vocab["merges"] = merges
    write_llama_gguf(tmp_path / "m.gguf", random_llama(transformers, vocab=len(tokens)), vocab=vocab)
    return qkv.load(tmp_path / "m.gguf").tokenizer, _theirs(transformers, tmp_path)


@pytest.mark.parametrize("order", [("xy", "yz"), ("yz", "xy")])
def test_merge_ties_follow_transformers(transformers, tmp_path, order):
    """Equal scores: "▁a" + "b" (a longer left half) goes before "b" + "c"; "xy" and "yz", of equal halves,
    in the order the file lists them."""
    ours, theirs = _hand_written(transformers, tmp_path, order)
    for text in ["abc", "xyz", "abc xyz abcxyz"]:
        assert ours.encode(text) == theirs(text, add_special_tokens=False).input_ids, text
    xyz = ["xy", "z"] if order[0] == "xy" else ["x", "yz"]
    assert theirs.convert_ids_to_tokens(ours.encode("abc xyz")) == ["▁ab", "c", "▁", *xyz]


def test_a_files_own_merges_win_over_its_scores(transformers, tmp_path):
    ours, theirs = _hand_written(transformers, tmp_path, merges=["b c", "▁ a", "y z", "x y", "a b", "▁a b"])
    for text in ["abc", "xyz", "abc xyz abcxyz"]:
        assert ours.encode(text) == theirs(text, add_special_tokens=False).input_ids, text
    assert theirs.convert_ids_to_tokens(ours.encode("abc xyz")) == ["▁a", "bc", "▁", "x", "yz"]


def test_server_completion_is_qkv_generates_text(files):
    """/v1/completions continues the prompt as `qkv generate` does, the first piece's space kept."""
    pytest.importorskip("fastapi")
    from qkv.serve import ServeConfig, create_app
    from serving import request, running
    model = qkv.load(files["unigram"][0] / "m.gguf")
    want = qkv.generate(model, model.tokenizer, "First Citizen:", max_new_tokens=12, temperature=0, ignore_eos=True)
    with running(create_app(model, ServeConfig(model_name="m"))) as url:
        status, reply = request(url, "POST", "/v1/completions", {"model": "m", "prompt": "First Citizen:",
                                                                 "max_tokens": 12, "temperature": 0,
                                                                 "ignore_eos": True})
    assert status == 200 and reply["choices"][0]["text"] == want
    assert want[:1] == " "                              # the case that needs the prompt's last token


def test_an_empty_prompt_starts_a_text(files):
    """After bos alone (an empty prompt) the text starts afresh: no space in front, as transformers decodes."""
    model = qkv.load(files["unigram"][0] / "m.gguf")
    tok = model.tokenizer
    text = qkv.generate(model, tok, "", max_new_tokens=8, temperature=0, ignore_eos=True)
    ids = torch.tensor([[tok.bos_id]])
    for _ in range(8):
        ids = torch.cat([ids, model(ids).logits[:, -1:].argmax(-1)], dim=1)
    assert text == tok.decode(ids[0, 1:].tolist()).rstrip("\ufffd")
