"""Readers for the encoder fine-tuning tasks: small inline files for every format rule and every error,
then the real files in ../shared/data (when present) against the counts their README states."""

import gzip
import json
import re
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

from qkv.data.classification import Example, label_vocab, read_classification
from qkv.data.conll import align_labels, read_bio, read_conllu, tag_vocab
from qkv.data.squad import SquadExample, postprocess_qa, read_squad, split_by_article, squad_features
from qkv.errors import ConfigError, DataError, InputError
from qkv.tasks.batches import Item, TaskBatches

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is absent")


def write(tmp_path, name, text, gz=False):
    path = tmp_path / name
    if gz:
        path.write_bytes(gzip.compress(text.encode("utf-8")))
    else:
        path.write_bytes(text.encode("utf-8"))
    return path


def wordpiece(words):
    """A BERT-style WordPiece backend: the given whole words, plus every letter as a word start and as a
    ``##`` continuation, so any other lowercase word splits into real sub-words."""
    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", *".,?!'-", *letters, *("##" + c for c in letters), *words]
    vocab = {p: i for i, p in enumerate(dict.fromkeys(pieces))}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return backend


# ---- classification ----------------------------------------------------------------------------------
def test_sst2_header_and_trailing_space(tmp_path):
    path = write(tmp_path, "train.tsv", 'sentence\tlabel\nkids , spirit \t1\na " dull " movie \t0\n')
    assert read_classification(path) == [Example("kids , spirit", "1"), Example('a " dull " movie', "0")]


def test_header_columns_in_any_order(tmp_path):
    path = write(tmp_path, "x.tsv", "label\tsentence\nneg\tbad film\n")
    assert read_classification(path) == [Example("bad film", "neg")]


def test_cola_four_columns_without_header(tmp_path):
    path = write(tmp_path, "cola.tsv", "gj04\t1\t\tOur friends won't buy this.\ngj04\t0\t*\tThey drank the pub.\n")
    assert read_classification(path) == [Example("Our friends won't buy this.", "1"),
                                         Example("They drank the pub.", "0")]


@pytest.mark.parametrize("text,line,expected", [
    ("sentence\tlabel\ngood \t1\nbad\t0\textra\n", 3, "expected 2 TAB-separated columns"),
    ("gj04\t1\t\tFine.\ngj04\t0\tNo author mark column.\n", 2, "expected 4 TAB-separated columns"),
    ("just one column\n", 1, "header naming `sentence` and `label`"),
    ("sentence\tlabel\ngood \t1\n \t0\n", 3, "empty sentence"),
    ("sentence\tlabel\ngood \t\n", 2, "empty label"),
])
def test_classification_malformed_lines_name_file_and_line(tmp_path, text, line, expected):
    path = write(tmp_path, "bad.tsv", text)
    with pytest.raises(DataError, match=re.escape(f"{path}:{line}:") + ".*" + re.escape(expected)):
        read_classification(path)


def test_label_vocab_sorts_numbers_by_value_and_eval_labels_are_checked(tmp_path):
    train = [Example("a", "10"), Example("b", "2"), Example("c", "0"), Example("d", "2")]
    assert label_vocab(train) == {"0": 0, "2": 1, "10": 2}
    dev = write(tmp_path, "dev.tsv", "sentence\tlabel\nfine\t2\nodd\t7\n")
    with pytest.raises(DataError, match=re.escape(f"{dev}:3:") + ".*label '7'"):
        read_classification(dev, label_vocab(train))


def test_file_level_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_classification(tmp_path / "missing.tsv")
    with pytest.raises(DataError, match="empty"):
        read_classification(write(tmp_path, "empty.tsv", ""))
    latin1 = tmp_path / "latin1.tsv"
    latin1.write_bytes("sentence\tlabel\ncaf\xe9\t1\n".encode("latin-1"))
    with pytest.raises(DataError, match=re.escape(f"{latin1}:2:") + " not UTF-8"):
        read_classification(latin1)


# ---- CoNLL-U and BIO ---------------------------------------------------------------------------------
CONLLU = """# sent_id = 1
# text = I don't know.
1\tI\tI\tPRON\tPRP\t_\t4\tnsubj\t_\t_
2-3\tdon't\t_\t_\t_\t_\t_\t_\t_\t_
2\tdo\tdo\tAUX\tVBP\t_\t4\taux\t_\t_
3\tn't\tnot\tPART\tRB\t_\t4\tadvmod\t_\t_
4\tknow\tknow\tVERB\tVB\t_\t0\troot\t_\t_
4.1\tknows\tknow\tVERB\tVB\t_\t_\t_\t0:root\t_
5\t.\t.\tPUNCT\t.\t_\t4\tpunct\t_\t_

# sent_id = 2
1\tHi\thi\tINTJ\tUH\t_\t0\troot\t_\t_
"""


@pytest.mark.parametrize("gz", [False, True])
def test_conllu_skips_comments_multiword_tokens_and_empty_nodes(tmp_path, gz):
    path = write(tmp_path, "x.conllu.gz" if gz else "x.conllu", CONLLU, gz=gz)
    assert read_conllu(path) == [(["I", "do", "n't", "know", "."], ["PRON", "AUX", "PART", "VERB", "PUNCT"]),
                                 (["Hi"], ["INTJ"])]
    assert read_conllu(path, column="xpos")[0][1] == ["PRP", "VBP", "RB", "VB", "."]


@pytest.mark.parametrize("bad_line,expected", [
    ("1\tI\tI\tPRON\tPRP\t_\t4\tnsubj\t_", "expected 10 TAB-separated CoNLL-U columns"),
    ("1 I I PRON PRP _ 4 nsubj _ _", "expected 10 TAB-separated CoNLL-U columns"),
    ("x\tI\tI\tPRON\tPRP\t_\t4\tnsubj\t_\t_", "ID 'x' is not a word number"),
])
def test_conllu_malformed_lines_name_file_and_line(tmp_path, bad_line, expected):
    lines = CONLLU.split("\n")
    lines[3] = bad_line  # line 4 of the file
    path = write(tmp_path, "bad.conllu", "\n".join(lines))
    with pytest.raises(DataError, match=re.escape(f"{path}:4: {expected}")):
        read_conllu(path)


def test_conllu_unknown_column():
    with pytest.raises(ConfigError, match="upos"):
        read_conllu("unused.conllu", column="pos")


def test_bio_tab_only_and_blank_lines_break_sentences(tmp_path):
    text = "Empire\tB-location\nState\tI-location\n.\tO\n\t\nHi\tO\r\n\n\nBob\tB-person"
    path = write(tmp_path, "wnut.conll", text)
    assert read_bio(path) == [(["Empire", "State", "."], ["B-location", "I-location", "O"]),
                              (["Hi"], ["O"]), (["Bob"], ["B-person"])]
    assert tag_vocab(read_bio(path)) == {"B-location": 0, "B-person": 1, "I-location": 2, "O": 3}


@pytest.mark.parametrize("bad_line", ["Empire B-location", "Empire\tB-location\textra", "Empire\tX-location",
                                      "\tO", "Empire\tB-"])
def test_bio_malformed_lines_name_file_and_line(tmp_path, bad_line):
    path = write(tmp_path, "bad.conll", f"Hi\tO\n\t\n{bad_line}\n")
    with pytest.raises(DataError, match=re.escape(f"{path}:3: expected `token<TAB>tag`")):
        read_bio(path)


def test_align_labels_puts_the_label_on_the_first_subword_only():
    backend = wordpiece(["dog", "ran", "park"])
    encoding = backend.encode(["Dogs", "ran", "in", "parks"], is_pretokenized=True)
    assert encoding.tokens == ["[CLS]", "dog", "##s", "ran", "i", "##n", "park", "##s", "[SEP]"]
    label_to_id = {"O": 0, "B-animal": 1, "B-place": 2}
    labels = align_labels(encoding.word_ids, ["B-animal", "O", "O", "B-place"], label_to_id)
    assert labels == [-100, 1, -100, 0, 0, -100, 2, -100, -100]
    with pytest.raises(DataError, match="'B-thing' is not in the label set"):
        align_labels(encoding.word_ids, ["B-thing", "O", "O", "O"], label_to_id)
    with pytest.raises(InputError, match="word id 3 but the sentence has 3 tags"):
        align_labels(encoding.word_ids, ["O", "O", "O"], label_to_id)


# ---- SQuAD -------------------------------------------------------------------------------------------
def squad_json(articles):
    return {"version": "1.1", "data": [
        {"title": title, "paragraphs": [{"context": context, "qas": [
            {"id": qid, "question": q, "answers": [{"text": a, "answer_start": context.index(a)} for a in answers]}
            for qid, q, answers in qas]}]}
        for title, context, qas in articles]}


ARTICLES = [
    ("Dogs", "the dog ran to the park. then the dog sat under a big green tree near the river bank and slept "
             "until the evening came and the owner called it home for dinner.",
     [("q1", "where did the dog sit?", ["under a big green tree", "a big green tree"]),
      ("q2", "who called the dog?", ["the owner"]),
      ("q3", "when did the dog sleep?", ["until the evening"])]),
    ("Cats", "a cat named tom lives in the old house on the hill. tom catches mice at night and sleeps all "
             "day on the warm roof of the barn.",
     [("q4", "what is the cat called?", ["tom"]), ("q5", "where does tom sleep?", ["on the warm roof"])]),
    ("Birds", "birds fly south in winter because food is scarce in the north.",
     [("q6", "why do birds fly south?", ["because food is scarce"])]),
]


@pytest.mark.parametrize("gz", [False, True])
def test_read_squad_and_split_by_article(tmp_path, gz):
    path = write(tmp_path, "s.json.gz" if gz else "s.json", json.dumps(squad_json(ARTICLES)), gz=gz)
    examples = read_squad(path)
    assert [e.id for e in examples] == ["q1", "q2", "q3", "q4", "q5", "q6"]
    q1 = examples[0]
    assert (q1.title, q1.question, q1.answers) == ("Dogs", "where did the dog sit?",
                                                   ("under a big green tree", "a big green tree"))
    assert q1.context[q1.answer_starts[1]:].startswith("a big green tree")
    train, evaluation = split_by_article(examples, n_eval_articles=2)
    assert [e.id for e in train] == ["q1", "q2", "q3"] and [e.id for e in evaluation] == ["q4", "q5", "q6"]
    with pytest.raises(ConfigError, match="1 to 2"):
        split_by_article(examples, n_eval_articles=3)


def test_read_squad_errors_name_the_file(tmp_path):
    truncated = write(tmp_path, "cut.json", json.dumps(squad_json(ARTICLES))[:200])
    with pytest.raises(DataError, match=re.escape(f"{truncated}:1:") + ".*not valid JSON"):
        read_squad(truncated)
    broken = squad_json(ARTICLES)
    del broken["data"][1]["paragraphs"][0]["qas"][1]["question"]
    path = write(tmp_path, "schema.json", json.dumps(broken))
    with pytest.raises(DataError, match=re.escape(f"{path}: article 1 paragraph 0 question 1") + ".*'question'"):
        read_squad(path)


# Question and answer words are whole pieces, so questions stay short and answers span at most 5 tokens
# (any stride >= 4 covers them); the other context words split into letters, making contexts long.
QA_WORDS = sorted({w for _, _, qas in ARTICLES for _, q, answers in qas for w in " ".join([q, *answers]).split()})


def squad_examples():
    return [SquadExample(qid, title, context, q, tuple(answers), tuple(context.index(a) for a in answers))
            for title, context, qas in ARTICLES for qid, q, answers in qas]


@pytest.mark.parametrize("max_len,stride", [(20, 4), (24, 6), (32, 8), (200, 0)])
def test_squad_windows_cover_every_answer(max_len, stride):
    backend = wordpiece(QA_WORDS)
    backend.enable_truncation(77, stride=5)
    examples = squad_examples()
    features = squad_features(examples, backend, max_len=max_len, stride=stride, train=True)
    assert backend.truncation["max_length"] == 77 and backend.truncation["stride"] == 5  # restored
    assert sorted({f.example_index for f in features}) == list(range(len(examples)))
    for index, example in enumerate(examples):
        windows = [f for f in features if f.example_index == index]
        n_question = len(backend.encode(example.question, add_special_tokens=False).ids)
        start_char = example.answer_starts[0]
        found = []
        for f in windows:
            assert len(f.input_ids) <= max_len
            assert len(f.input_ids) == len(f.token_type_ids) == len(f.attention_mask) == len(f.offsets)
            assert f.input_ids[0] == backend.token_to_id("[CLS]")
            assert all(o is None for o in f.offsets[: n_question + 2]) and f.offsets[-1] is None
            assert f.token_type_ids[n_question + 2] == 1
            if f.start_position:
                assert example.context[f.offsets[f.start_position][0]:f.offsets[f.end_position][1]] \
                    == example.answers[0]
                found.append(f)
            else:
                context_chars = [o for o in f.offsets if o is not None]
                assert f.end_position == 0
                assert context_chars[0][0] > start_char or context_chars[-1][1] < start_char + len(example.answers[0])
        assert found, f"no window holds the answer of {example.id}"
        for left, right in zip(windows, windows[1:]):  # neighbours share exactly `stride` context tokens
            left_ctx = [o for o in left.offsets if o is not None]
            right_ctx = [o for o in right.offsets if o is not None]
            assert left_ctx[len(left_ctx) - stride:] == right_ctx[:stride]
    if max_len == 200:
        assert len(features) == len(examples)


def test_squad_features_eval_mode_and_long_question():
    backend = wordpiece(QA_WORDS)
    examples = squad_examples()
    features = squad_features(examples, backend, max_len=24, stride=4, train=False)
    assert all(f.start_position is None and f.end_position is None for f in features)
    assert backend.truncation is None  # no setting before, none after
    with pytest.raises(InputError, match="question 'q1'.*raise max_len or lower stride"):
        squad_features(examples, backend, max_len=12, stride=4, train=True)
    assert backend.truncation is None


def test_postprocess_recovers_gold_answers_from_peaked_logits():
    backend = wordpiece(QA_WORDS)
    examples = squad_examples()
    features = squad_features(examples, backend, max_len=24, stride=6, train=True)
    W, L = len(features), max(len(f.input_ids) for f in features)
    g = torch.Generator().manual_seed(0)
    start_WL, end_WL = torch.rand(W, L, generator=g), torch.rand(W, L, generator=g)
    for w, f in enumerate(features):
        if f.start_position:
            start_WL[w, f.start_position] += 10
            end_WL[w, f.end_position] += 10
        start_WL[w, 0] += 50  # [CLS] and the question tokens are never an answer
        end_WL[w, 1] += 50
    predictions = postprocess_qa(examples, features, start_WL, end_WL)
    assert predictions == {e.id: e.answers[0] for e in examples}


def test_postprocess_respects_order_and_max_answer_len():
    backend = wordpiece(["the", "dog", "ran", "far", "away"])
    example = SquadExample("q", "t", "the dog ran far away", "who ran?", ("the dog",), (0,))
    [feature] = squad_features([example], backend, max_len=64, stride=0, train=True)
    the = feature.offsets.index((0, 3))
    ran, away = the + 2, the + 4
    assert feature.offsets[away] == (16, 20)

    def predict(starts, ends, **kwargs):
        start_L, end_L = torch.full((len(feature.offsets),), -100.0), torch.full((len(feature.offsets),), -100.0)
        for i, v in starts.items():
            start_L[i] = v
        for i, v in ends.items():
            end_L[i] = v
        return postprocess_qa([example], [feature], [start_L], [end_L], **kwargs)["q"]

    # (away, the) scores 17 but ends before it starts; the best valid spans: (the, the) 14 > (away, away) 13
    assert predict({the: 5, away: 8}, {the: 9, away: 5}) == "the"
    # the whole context scores 18 with 5 tokens; next best (ran, away) 11 with 3 tokens
    assert predict({the: 9, ran: 2}, {away: 9, ran: 1}) == "the dog ran far away"
    assert predict({the: 9, ran: 2}, {away: 9, ran: 1}, max_answer_len=4) == "ran far away"
    with pytest.raises(InputError, match="logits"):
        postprocess_qa([example], [feature], [torch.zeros(3)], [torch.zeros(len(feature.offsets))])


# ---- the real files ----------------------------------------------------------------------------------
@needs_data
@pytest.mark.parametrize("name,rows,ones", [("sst2/train.tsv", 60614, 33828), ("sst2/dev.tsv", 6735, 3741),
                                            ("sst2/test.tsv", 872, 444),
                                            ("cola/in_domain_train.tsv", 8551, 6023),
                                            ("cola/in_domain_dev.tsv", 527, None),
                                            ("cola/out_of_domain_dev.tsv", 516, None)])
def test_real_classification_files(name, rows, ones):
    examples = read_classification(DATA / name, {"0": 0, "1": 1})
    assert len(examples) == rows
    if ones is not None:
        assert sum(e.label == "1" for e in examples) == ones
    assert all(e.text == e.text.strip() for e in examples)


@needs_data
def test_real_tagging_files():
    ewt = read_conllu(DATA / "ud_english_ewt" / "en_ewt-ud-dev.conllu")
    assert (len(ewt), sum(len(tokens) for tokens, _ in ewt)) == (2001, 25147)
    assert len(tag_vocab(ewt)) == 17
    for name, sentences, tokens in [("wnut17train.conll", 3394, 62730), ("emerging.dev.conll", 1009, 15733)]:
        wnut = read_bio(DATA / "wnut17" / name)
        assert (len(wnut), sum(len(t) for t, _ in wnut)) == (sentences, tokens)
        assert len(tag_vocab(wnut)) == 13


@needs_data
def test_real_squad_dev():
    examples = read_squad(DATA / "squad_v1.1_dev" / "dev-v1.1.json.gz")
    assert len(examples) == 10570 and len({e.title for e in examples}) == 48
    assert sum(len(e.answers) for e in examples) == 34726
    train, evaluation = split_by_article(examples)
    assert len({e.title for e in train}) == 38 and len({e.title for e in evaluation}) == 10
    assert len(train) + len(evaluation) == len(examples)
    assert not {e.title for e in train} & {e.title for e in evaluation}


@needs_data
def test_real_squad_windows_and_postprocess_recover_answers():
    """A WordPiece vocabulary trained on the first articles' text; windows of 128 with stride 48."""
    examples = read_squad(DATA / "squad_v1.1_dev" / "dev-v1.1.json.gz")[:120]
    backend = wordpiece([])
    trainer = trainers.WordPieceTrainer(vocab_size=1000, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"],
                                        show_progress=False)
    backend.train_from_iterator(sorted({e.context for e in examples} | {e.question for e in examples}), trainer)
    features = squad_features(examples, backend, max_len=128, stride=48, train=True)
    assert len(features) > len(examples)  # some contexts need several windows
    W, L = len(features), max(len(f.input_ids) for f in features)
    start_WL, end_WL = torch.zeros(W, L), torch.zeros(W, L)
    for w, f in enumerate(features):
        if f.start_position:
            start_WL[w, f.start_position], end_WL[w, f.end_position] = 1.0, 1.0
    predictions = postprocess_qa(examples, features, start_WL, end_WL)
    for e in examples:
        start, end = e.answer_starts[0], e.answer_starts[0] + len(e.answers[0])
        assert e.context[start:end] == e.answers[0]
        # The README's caveat: answer_start is the text's first occurrence, which may sit inside a longer
        # word ("8" in "18"); then the span widens to whole tokens. At word boundaries it is exact.
        at_word_boundaries = (start == 0 or not e.context[start - 1].isalnum()) and \
            (end == len(e.context) or not e.context[end].isalnum())
        if at_word_boundaries:
            assert predictions[e.id] == e.answers[0]
        else:
            assert e.answers[0] in predictions[e.id]


def test_length_grouped_batches_pad_little_and_draw_every_item_alike():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, 60, (2000,), generator=g).tolist()
    items = [Item(ids=list(range(n)), types=[0] * n, labels=[i]) for i, n in enumerate(lengths)]

    def draw(group: bool, n_batches: int = 400):
        data = TaskBatches(items, items[:10], "B", 0, seed=1, group_by_length=group)
        return [data.batch("train", 16) for _ in range(n_batches)]

    def padding(batches):                       # padded slots per real token
        return sum((~b["key_mask_BL"]).sum().item() for b in batches) / sum(b["key_mask_BL"].sum().item()
                                                                            for b in batches)
    grouped, uniform = draw(True), draw(False)
    assert padding(grouped) < 0.1 < 0.5 < padding(uniform)
    def spread(group: bool):                     # how unevenly items are drawn: std / mean of the counts
        counts = torch.bincount(torch.cat([b["labels"] for b in draw(group, 2500)]), minlength=2000).float()
        return counts.min().item(), (counts.std() / counts.mean()).item()
    (fewest, cv_grouped), (_, cv_uniform) = spread(True), spread(False)
    assert fewest > 0 and cv_grouped < 1.25 * cv_uniform            # as even as uniform draws (20 per item)
    assert all(torch.equal(a["ids_BL"], b["ids_BL"]) for a, b in zip(grouped, draw(True)))   # seeded
