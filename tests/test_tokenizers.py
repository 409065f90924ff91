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


# ---- WordPiece -------------------------------------------------------------------------------------------
WP_CORPUS = ["The cat sat on the mat.", "Cats are playing; the dog is sleeping!", "Naïve café owners play chess."]


@pytest.fixture(scope="module")
def wordpiece():
    return Tokenizer.train_wordpiece(WP_CORPUS * 20, vocab_size=120)


def test_wordpiece_specials_and_kind(wordpiece):
    assert wordpiece.kind == "wordpiece"
    ids = (wordpiece.pad_id, wordpiece.unk_id, wordpiece.cls_id, wordpiece.sep_id, wordpiece.mask_id)
    assert ids == (0, 1, 2, 3, 4)
    assert Tokenizer.train_bpe(["abc"] * 5, vocab_size=260).cls_id is None     # absent -> None


def test_wordpiece_encode_has_no_specials_and_round_trips_lowercased(wordpiece):
    ids = wordpiece.encode("The CAT sat")
    assert wordpiece.cls_id not in ids and wordpiece.sep_id not in ids
    assert wordpiece.decode(ids) == "the cat sat"
    assert wordpiece.encode("naive") == wordpiece.encode("Naïve")                 # lowercase strips accents
    assert wordpiece.unk_id in wordpiece.encode("日")                               # never seen -> [UNK]


def test_wordpiece_pair_template_type_ids_word_ids_offsets(wordpiece):
    text, pair = "The cats sat", "on the mat"
    e = wordpiece.encode_for_model(text, pair)
    n_a, n_b = len(wordpiece.encode(text)), len(wordpiece.encode(pair))
    assert e.ids == [2] + wordpiece.encode(text) + [3] + wordpiece.encode(pair) + [3]
    assert e.type_ids == [0] * (n_a + 2) + [1] * (n_b + 1)
    assert e.attention_mask == [1] * len(e.ids)
    assert e.sequence_ids[0] is None and e.sequence_ids[1] == 0 and e.sequence_ids[-2] == 1
    assert e.word_ids[0] is None and e.word_ids[1] == 0
    for token_index in range(1, n_a + 1):                      # offsets point into the text they came from
        start, end = e.offsets[token_index]
        assert text[start:end].lower().startswith(e.tokens[token_index].removeprefix("##")[:1])
    single = wordpiece.encode_for_model(text)
    assert single.ids == [2] + wordpiece.encode(text) + [3] and set(single.type_ids) == {0}


def test_wordpiece_truncation_is_per_call(wordpiece):
    e = wordpiece.encode_for_model("the cat sat on the mat", max_len=4)
    assert len(e.ids) == 4 and e.ids[0] == 2 and e.ids[-1] == 3                # specials survive truncation
    assert len(wordpiece.encode_for_model("the cat sat on the mat").ids) > 4   # the setting did not stick
    words = wordpiece.encode_for_model(["The", "cats", "sat"])                 # pre-split words (tagging)
    assert [w for w in words.word_ids if w is not None][-1] == 2


def test_wordpiece_save_reload_and_vocab_txt(wordpiece, tmp_path):
    wordpiece.save(tmp_path / "tokenizer.json")
    again = Tokenizer.from_dir(tmp_path)
    assert again.kind == "wordpiece" and again.encode_for_model("a cat", "sat").ids == \
        wordpiece.encode_for_model("a cat", "sat").ids
    bert_dir = tmp_path / "bert"
    bert_dir.mkdir()
    vocab = sorted(wordpiece.backend.get_vocab().items(), key=lambda kv: kv[1])
    (bert_dir / "vocab.txt").write_text("".join(token + "\n" for token, _ in vocab), encoding="utf-8")
    from_txt = Tokenizer.from_dir(bert_dir)
    assert from_txt.kind == "wordpiece" and from_txt.mask_id == 4
    for text in WP_CORPUS:
        assert from_txt.encode_for_model(text, "the cat").ids == wordpiece.encode_for_model(text, "the cat").ids
    (bert_dir / "tokenizer_config.json").write_text('{"do_lower_case": false}', encoding="utf-8")
    cased = Tokenizer.from_dir(bert_dir)
    assert cased.encode("The") == [cased.unk_id] and cased.encode("the") == wordpiece.encode("the")


def test_a_file_saved_with_padding_encodes_unpadded_as_transformers_does(wordpiece, tmp_path):
    """sentence-transformers' MiniLM ships tokenizer.json with padding Fixed 128: every text became 128 ids
    whose [PAD]s fine-tuning read as real tokens (5x the work and other logits). transformers drops it."""
    from transformers import PreTrainedTokenizerFast
    backend = type(wordpiece.backend).from_str(wordpiece.backend.to_str())
    backend.enable_padding(length=24, pad_id=0, pad_token="[PAD]")
    backend.save(str(tmp_path / "tokenizer.json"))
    loaded = Tokenizer.from_file(tmp_path / "tokenizer.json")
    reference = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    for text in WP_CORPUS + ["the cat"]:
        assert loaded.encode_for_model(text).ids == reference(text)["input_ids"]
        assert len(loaded.encode_for_model(text).ids) < 24 and loaded.encode(text) == wordpiece.encode(text)
