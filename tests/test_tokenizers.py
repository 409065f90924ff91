import pytest

from qkv import Tokenizer
from qkv.data import BUNDLED_CORPUS
from qkv.errors import InputError

SAMPLES = ["hello world", "ROMEO:\nWhat, ho!  \t", "naïve café — 日本語 🙂", ""]


def test_char_round_trip_and_fast_path_matches_backend():
    text = BUNDLED_CORPUS.read_text(encoding="utf-8")
    tok = Tokenizer.train_char(text)
    assert tok.vocab_size == 65 and tok.kind == "char"
    head = text[:20_000]
    ids = tok.encode(head)
    assert ids == tok.backend.encode(head, add_special_tokens=False).ids   # dict fast path == library
    assert tok.decode(ids) == head


@pytest.mark.parametrize("sample", SAMPLES)
def test_char_round_trip_any_text(sample):
    tok = Tokenizer.train_char("".join(SAMPLES))
    assert tok.decode(tok.encode(sample)) == sample
    assert len(tok.encode(sample)) == len(sample)


@pytest.mark.parametrize("sample", SAMPLES)
def test_bpe_round_trip_including_unseen_unicode(sample):
    tok = Tokenizer.train_bpe([BUNDLED_CORPUS.read_text(encoding="utf-8")[:50_000]], vocab_size=400)
    assert tok.vocab_size == 400 and tok.eos_id is not None
    assert tok.decode(tok.encode(sample)) == sample                 # byte-level: nothing is unknown


def test_bpe_merges_make_tokens_shorter_than_bytes():
    text = BUNDLED_CORPUS.read_text(encoding="utf-8")[:50_000]
    tok = Tokenizer.train_bpe([text], vocab_size=500)
    assert len(tok.encode(text[:5000])) < 0.6 * len(text[:5000].encode())


def test_save_and_reload(tmp_path):
    tok = Tokenizer.train_char("abc\n", special_tokens=["<eos>"])
    tok.save(tmp_path / "tokenizer.json")
    again = Tokenizer.from_dir(tmp_path)
    assert again.encode("cab\n") == tok.encode("cab\n") and again.eos_id == tok.eos_id == 0
    assert again.decode(again.encode("a<eos>b")) == "a<eos>b"


def test_unseen_character_names_the_fix():
    tok = Tokenizer.train_char("abc")
    with pytest.raises(InputError, match=r"never saw: \['z'\]"):
        tok.encode("abz")
