"""SentencePiece vocabularies in GGUFs of Gemma 2/3 and Phi-3 (issue 23): transformers' GGUF reader picks a
tokenizer rule by ``general.architecture`` (no prefix space and "▁"-respelled space runs for Gemma, the prefix
as a normalizer for Phi-3); qkv's ids, decoding, special ids and add_bos/add_eos equal it for each, and a
Gemma 2 file loads end to end with transformers' logits."""

import pytest
import torch

import qkv

from gguf_arch_fixtures import random_model, write_gguf
from gguf_fixtures import SP_PLAIN, SP_SPECIAL, sentencepiece_metadata, train_sentencepiece

gguf = pytest.importorskip("gguf")
spm = pytest.importorskip("sentencepiece")
transformers = pytest.importorskip("transformers")
SPACE = "\u2581"
# kind (model_type), SentencePiece model type, vocabulary size, add_dummy_prefix, add_bos, add_eos
ARCHS = {"gemma2": ("gemma2", "bpe", 700, False, True, None),
         "gemma3": ("gemma3_text", "unigram", 610, False, None, True), "phi3": ("phi3", "bpe", 680, True, False, None)}
TEXTS = SP_PLAIN + SP_SPECIAL + ["   three\n\n\n  two\t\t", "<s>  x</s>  y", "9 99 999 \U0001d54f"]


def _write(arch, d):
    """(arch, folder of m.gguf, the random transformers model written there) with a vocabulary trained here."""
    kind, model_type, size, prefix, add_bos, add_eos = ARCHS[arch]
    vocab = sentencepiece_metadata(train_sentencepiece(model_type, size, prefix, user_defined_symbols=["<think>"]))
    if arch.startswith("gemma"):      # Gemma has space-run pieces, which llama.cpp's converter stores as spaces
        for run in ("  ", "   ", "    "):
            vocab["tokens"].append(run)
            vocab["scores"].append(-900.0)
            vocab["token_type"].append(1)
    vocab["add_bos"] = add_bos
    if add_eos is not None:
        vocab["add_eos"] = add_eos
    tie = {"tie_word_embeddings": True} if kind.startswith("gemma") else {}     # transformers ties Gemma's head
    model = random_model(transformers, kind, seed=3, vocab_size=len(vocab["tokens"]), **tie)
    write_gguf(d / "m.gguf", model, vocab=vocab)
    return arch, d, model


@pytest.fixture(scope="module", params=sorted(ARCHS))
def file(request, tmp_path_factory):
    return _write(request.param, tmp_path_factory.mktemp(request.param))


def test_ids_text_and_specials_match_transformers(file):
    arch, d, _ = file
    theirs, ours = transformers.AutoTokenizer.from_pretrained(d, gguf_file="m.gguf"), qkv.load(d / "m.gguf").tokenizer
    assert (ours.bos_id, ours.eos_id, ours.pad_id, ours.unk_id) == \
        (theirs.bos_token_id, theirs.eos_token_id, theirs.pad_token_id, theirs.unk_token_id)
    for text in TEXTS:
        ids = theirs(text, add_special_tokens=False).input_ids
        assert ours.encode(text) == ids, (arch, text, theirs.convert_ids_to_tokens(ids))
        assert ours.prompt_ids(text) == theirs(text).input_ids, (arch, text)
        assert ours.decode(ids) == theirs.decode(ids), (arch, text)


def test_the_rules_differ_where_transformers_says(file):
    arch, d, _ = file
    theirs = transformers.AutoTokenizer.from_pretrained(d, gguf_file="m.gguf")
    first = theirs.convert_ids_to_tokens(qkv.load(d / "m.gguf").tokenizer.encode("  hi"))
    assert "".join(first).startswith(SPACE * (3 if arch == "phi3" else 2))   # Phi-3 prefixes even a leading space
    if arch.startswith("gemma"):                        # the respelled space runs are pieces that get used
        pieces = theirs.convert_ids_to_tokens(theirs("x    \n", add_special_tokens=False).input_ids)
        assert any(len(p) > 1 and set(p) == {SPACE} for p in pieces), pieces


def test_gemma2_logits_match_transformers(tmp_path):
    _, d, _ = _write("gemma2", tmp_path)                # the other architectures' weights: tests/test_archs.py
    ours = qkv.load(d / "m.gguf")
    ids = ours.tokenizer.prompt_ids("  Before we proceed,\nhear me 12 🙂")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file="m.gguf").eval()
    with torch.no_grad():
        expected = theirs(torch.tensor([ids])).logits
        got = ours(torch.tensor([ids])).logits
    torch.testing.assert_close(got, expected, atol=2e-4, rtol=1e-4)
