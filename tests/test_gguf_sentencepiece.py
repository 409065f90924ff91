"""GGUF files with a SentencePiece vocabulary (``tokenizer.ggml.model = llama``): SentencePiece models trained
here (unigram and BPE, byte fallback, a user-defined piece, odd vocabulary sizes and special ids), written as
llama.cpp's converter writes them beside random llama weights (gguf_fixtures); ids, decoding and logits
against transformers' GGUF reader, and against SentencePiece itself where transformers ignores the file's
flags; damaged vocabularies. Generating, chatting and streaming text: test_gguf_sentencepiece_text.py."""


import pytest
import torch

import qkv
from qkv import CheckpointError
from qkv.cli import main

from gguf_fixtures import (SENTENCEPIECE_FILES as FILES, SP_PLAIN as PLAIN, SP_SPECIAL as SPECIAL, random_llama,
                           sentencepiece_metadata, train_sentencepiece, write_llama_gguf)

gguf = pytest.importorskip("gguf")
spm = pytest.importorskip("sentencepiece")
def _theirs(transformers, d):
    return transformers.AutoTokenizer.from_pretrained(d, gguf_file="m.gguf")


@pytest.mark.parametrize("name", ["unigram", "bpe"])
def test_ids_and_text_match_transformers(transformers, sp_files, name):
    d, _ = sp_files[name]
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
def test_sentencepiece_bpe_ids_are_sentencepieces(sp_files, name):
    """A SentencePiece BPE's scores are its merge order: the ids are the model's own. Without the prefix
    space (add_space_prefix false, which transformers' reader ignores) on every text; with it, on texts
    that do not start with a space (there qkv follows transformers, see gguf_sentencepiece)."""
    d, sp = sp_files[name]
    ours = qkv.load(d / "m.gguf").tokenizer
    prefix = FILES[name][2]
    for text in PLAIN:
        if not (prefix and text[:1] in (" ", "▁")):
            assert ours.encode(text) == sp.encode(text), text
            assert ours.decode(ours.encode(text)) == sp.decode(sp.encode(text))


def test_unigram_segmentation_is_the_greedy_one(transformers, sp_files):
    """A unigram file is tokenized by best-scoring merges, not SentencePiece's most probable segmentation:
    the same pieces, other ids on some words (as llama.cpp and transformers do)."""
    d, sp = sp_files["unigram"]
    ours = qkv.load(d / "m.gguf").tokenizer
    differ = [t for t in PLAIN if t[:1] not in ("", " ", "▁") and ours.encode(t) != sp.encode(t)]
    assert differ and all(ours.decode(ours.encode(t)) == sp.decode(sp.encode(t)) for t in differ)


@pytest.mark.parametrize("name", list(FILES))
def test_logits_match_transformers(transformers, sp_files, name):
    d, _ = sp_files[name]
    theirs = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file="m.gguf").eval()
    ours = qkv.load(d / "m.gguf")
    ids = torch.tensor([ours.tokenizer.prompt_ids(PLAIN[0] + " " + PLAIN[11])])
    with torch.no_grad():
        want = theirs(ids).logits
    assert (ours(ids).logits - want).abs().max() < 2e-5


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


def test_saved_and_read_back_it_is_the_same_tokenizer(sp_files, tmp_path):
    """A run fine-tuned from a GGUF keeps its tokenizer as tokenizer.json + tokenizer_config.json."""
    ours = qkv.load(sp_files["bpe"][0] / "m.gguf").tokenizer
    ours.save(tmp_path / "tokenizer.json")
    back = qkv.Tokenizer.from_dir(tmp_path)
    assert (back.kind, back.add_bos, back.add_eos, back.bos_id, back.eos_id) == ("sentencepiece", False, True, 0, 1)
    for text in PLAIN + SPECIAL:
        assert back.prompt_ids(text) == ours.prompt_ids(text) and back.decode(ours.encode(text)) == \
            ours.decode(ours.encode(text))


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
def test_damaged_vocabularies_are_one_clear_error(sp_files, tmp_path, change, phrase):
    bad = _damaged(sp_files["unigram"][0] / "m.gguf", tmp_path / "bad.gguf", **change)
    with pytest.raises(CheckpointError, match=phrase):
        qkv.load(bad)


def test_misspelt_byte_piece_and_bad_type(sp_files, tmp_path):
    src = sp_files["unigram"][0] / "m.gguf"
    tokens = list(gguf.GGUFReader(str(src)).fields["tokenizer.ggml.tokens"].contents())
    types = list(gguf.GGUFReader(str(src)).fields["tokenizer.ggml.token_type"].contents())
    at = tokens.index("<0x41>")
    with pytest.raises(CheckpointError, match="byte token '<0x4g>' is not spelled <0xNN>"):
        qkv.load(_damaged(src, tmp_path / "a.gguf", tokens=tokens[:at] + ["<0x4g>"] + tokens[at + 1:]))
    with pytest.raises(CheckpointError, match="token 7 has type 9"):
        qkv.load(_damaged(src, tmp_path / "b.gguf", token_type=types[:7] + [9] + types[8:]))


def test_command_line_refuses_a_damaged_vocabulary_in_one_line(sp_files, tmp_path, capsys):
    bad = _damaged(sp_files["unigram"][0] / "m.gguf", tmp_path / "bad.gguf", scores=[0.0] * 3)
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


