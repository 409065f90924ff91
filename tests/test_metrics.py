"""Task metrics: hand-checked values, invariants, and equality with the libraries the field trusts."""

import math
import random
import sys

import pytest

from qkv.data.squad import SquadExample
from qkv.errors import InputError, MissingExtraError
from qkv.metrics import (accuracy, bleu, entity_f1, matthews_corrcoef, normalize_answer, rouge,
                         squad_em_f1)


def test_accuracy():
    assert accuracy(["a", "b", "c", "d"], ["a", "b", "x", "d"]) == 0.75
    with pytest.raises(InputError, match="3 predictions but 2"):
        accuracy([1, 2, 3], [1, 2])
    with pytest.raises(InputError, match="no predictions"):
        accuracy([], [])


# ---- Matthews correlation ----------------------------------------------------------------------------
def test_mcc_hand_computed_values():
    assert matthews_corrcoef([1, 0, 1, 0], [1, 0, 1, 0]) == 1.0
    assert matthews_corrcoef([0, 1, 0, 1], [1, 0, 1, 0]) == -1.0
    assert matthews_corrcoef([1, 1, 1, 1], [1, 0, 1, 0]) == 0.0          # constant prediction
    # TP=3 TN=2 FP=1 FN=1: (3*2 - 1*1) / sqrt(4*4*3*3) = 5/12
    preds = [1, 1, 1, 1, 0, 0, 0]
    golds = [1, 1, 1, 0, 1, 0, 0]
    assert matthews_corrcoef(preds, golds) == pytest.approx(5 / 12)
    # 3 classes: c=4, s=6, t=(2,2,2), p=(2,3,1): (24-12) / sqrt((36-14)(36-12))
    assert matthews_corrcoef([0, 1, 1, 1, 2, 0], [0, 0, 1, 1, 2, 2]) == pytest.approx(12 / math.sqrt(22 * 24))


def test_mcc_properties_against_the_binary_formula():
    rng = random.Random(0)
    for _ in range(20):
        golds = [rng.randint(0, 1) for _ in range(50)]
        preds = [g if rng.random() < 0.7 else 1 - g for g in golds]
        tp = sum(p == g == 1 for p, g in zip(preds, golds))
        tn = sum(p == g == 0 for p, g in zip(preds, golds))
        fp = sum(p == 1 and g == 0 for p, g in zip(preds, golds))
        fn = sum(p == 0 and g == 1 for p, g in zip(preds, golds))
        expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        mcc = matthews_corrcoef(preds, golds)
        assert mcc == pytest.approx(expected)
        assert matthews_corrcoef(golds, preds) == pytest.approx(mcc)                   # symmetric
        renamed = {0: "bad", 1: "good"}
        assert matthews_corrcoef([renamed[p] for p in preds], [renamed[g] for g in golds]) == pytest.approx(mcc)
        assert matthews_corrcoef([1 - p for p in preds], golds) == pytest.approx(-mcc)  # flipped predictions


def test_mcc_equals_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = random.Random(1)
    for n_classes in (2, 3, 5):
        golds = [rng.randrange(n_classes) for _ in range(200)]
        preds = [g if rng.random() < 0.6 else rng.randrange(n_classes) for g in golds]
        assert matthews_corrcoef(preds, golds) == pytest.approx(sklearn_metrics.matthews_corrcoef(golds, preds))


# ---- entity F1 ---------------------------------------------------------------------------------------
GOLD_TAGS = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"], ["B-PER", "I-PER"]]
PRED_TAGS = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "B-LOC"], ["I-PER", "I-PER"]]


def test_entity_f1_hand_checked_and_equal_to_seqeval_report():
    seqeval_metrics = pytest.importorskip("seqeval.metrics")
    scores = entity_f1(PRED_TAGS, GOLD_TAGS)
    # gold entities PER, LOC, ORG, PER; predicted PER, ORG, LOC (wrong place), PER (default mode lets an
    # entity open with I-, as conlleval does): 3 correct of 4 predicted and 4 gold
    assert scores == pytest.approx({"precision": 0.75, "recall": 0.75, "f1": 0.75})
    report = seqeval_metrics.classification_report(GOLD_TAGS, PRED_TAGS, output_dict=True)["micro avg"]
    assert scores == pytest.approx({k: report[k if k != "f1" else "f1-score"] for k in scores})


def test_entity_f1_precision_and_recall_differ_and_do_not_swap():
    """An asymmetric case (3 predicted, 4 gold, 2 right): P = 2/3, R = 1/2, F = 4/7 by hand, as seqeval's
    report says; swapping predictions and gold swaps P and R, so a call with the arguments swapped fails."""
    seqeval_metrics = pytest.importorskip("seqeval.metrics")
    gold = [["B-PER", "I-PER", "O", "B-LOC", "O"], ["B-ORG", "O", "B-MISC", "O"]]
    pred = [["B-PER", "I-PER", "O", "O", "B-LOC"], ["B-ORG", "O", "O", "O"]]
    scores = entity_f1(pred, gold)
    assert scores == pytest.approx({"precision": 2 / 3, "recall": 1 / 2, "f1": 4 / 7})
    report = seqeval_metrics.classification_report(gold, pred, output_dict=True)["micro avg"]
    assert (report["precision"], report["recall"], report["f1-score"]) == pytest.approx((2 / 3, 1 / 2, 4 / 7))
    assert entity_f1(gold, pred) == pytest.approx({"precision": 1 / 2, "recall": 2 / 3, "f1": 4 / 7})


def test_entity_f1_rejects_ragged_sentences():
    with pytest.raises(InputError, match="sentence 1: 1 predicted tags for 2 gold tags"):
        entity_f1([["O"], ["O"]], [["O"], ["O", "O"]])


# ---- SQuAD -------------------------------------------------------------------------------------------
def squad(id_, *answers):
    return SquadExample(id_, "t", "context", "question?", answers, tuple(0 for _ in answers))


@pytest.mark.parametrize("text,normalized", [
    ("  The  quick, brown   fox. ", "quick brown fox"),
    ("Theater and an anthem", "theater and anthem"),   # articles only as whole words
    ("A-B (c)", "ab c"),                               # punctuation removed, not replaced by space
    ("Denver Broncos!", "denver broncos"),
])
def test_normalize_answer(text, normalized):
    assert normalize_answer(text) == normalized


def test_squad_em_f1_hand_checked():
    examples = [squad("1", "Denver Broncos"),                    # EM 1, F1 1
                squad("2", "Carolina Panthers", "the Panthers"),  # EM 0, F1 2/3 (p=1, r=1/2 vs the first)
                squad("3", "a banana", "apple pie"),              # EM 1 against the second truth
                squad("4", "cat cat dog"),                        # F1: 2 shared of 3 and 3: 2/3
                squad("5", "unanswered")]                         # no prediction: 0 and still counted
    predictions = {"1": "The Denver Broncos!", "2": "Carolina", "3": "an apple pie",
                   "4": "the cat cat cat", "ignored": "no such question"}
    scores = squad_em_f1(predictions, examples)
    assert scores["exact_match"] == pytest.approx(100 * 2 / 5)
    assert scores["f1"] == pytest.approx(100 * (1 + 2 / 3 + 1 + 2 / 3 + 0) / 5)


def test_squad_empty_prediction_scores_zero_f1_as_in_v1_1():
    assert squad_em_f1({"1": "the"}, [squad("1", "a")]) == {"exact_match": 100.0, "f1": 0.0}


# ---- BLEU and ROUGE ----------------------------------------------------------------------------------
HYPS = ["the cat sat on the mat", "a quick brown fox jumps", "hello world"]
REFS = ["the cat sat on a mat", "the quick brown fox jumped over", "hello there world"]


def test_bleu_equals_sacrebleu():
    sacrebleu = pytest.importorskip("sacrebleu")
    result = bleu(HYPS, REFS)
    assert result.score == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score)
    assert "BLEU" in result.signature and "nrefs:1" in result.signature
    assert bleu(REFS, [[r] for r in REFS]).score == pytest.approx(100.0)
    second = ["the cat sat on the mat", None, "hello world"]     # a varying number of references
    varied = bleu(HYPS, [[REFS[0], second[0]], [REFS[1]], [REFS[2], second[2]]])
    assert varied.score == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS, second]).score)
    assert "nrefs:var" in varied.signature


def test_bleu_of_imperfect_output_by_hand_and_by_the_sacrebleu_command(tmp_path):
    """Corpus BLEU (Papineni et al., 2002) worked by hand on two imperfect sentences, and by sacrebleu's own
    command line. Clipped n-gram matches over the corpus: 1-grams 5+6 of 6+6 ("the" twice against one "the"
    in the first reference), 2-grams 3+5 of 5+5, 3-grams 2+4 of 4+4, 4-grams 1+3 of 3+3; the hypotheses
    have 12 tokens against 13 in the references, so the brevity penalty is exp(1 - 13/12)."""
    import subprocess
    import sys
    hyps = ["the cat sat on the mat", "the cat sat on the mat"]
    refs = ["the cat sat on a mat", "the cat sat on the mat today"]
    by_hand = 100 * math.exp(1 - 13 / 12) * (11 / 12 * 8 / 10 * 6 / 8 * 4 / 6) ** 0.25        # 71.59
    result = bleu(hyps, refs)
    assert result.score == pytest.approx(by_hand, abs=1e-9)
    (tmp_path / "ref.txt").write_text("\n".join(refs) + "\n")
    (tmp_path / "hyp.txt").write_text("\n".join(hyps) + "\n")
    cli = subprocess.run([sys.executable, "-m", "sacrebleu", str(tmp_path / "ref.txt"), "-i", str(tmp_path / "hyp.txt"),
                          "-b", "-w", "4"], capture_output=True, text=True, check=True)
    assert float(cli.stdout) == pytest.approx(result.score, abs=1e-4)
    assert bleu(refs, hyps).score != pytest.approx(result.score)        # hypotheses first: the order matters


def test_rouge_of_the_textbook_example_by_hand():
    """The worked example of ROUGE's usual explanation (Ganesan, 2018): "the cat was found under the bed"
    against "the cat was under the bed". ROUGE-1: precision 6/7, recall 6/6; ROUGE-2: 4/6 and 4/5; ROUGE-L:
    the longest common subsequence is the whole reference, 6/7 and 6/6. F = 2PR / (P + R)."""
    pytest.importorskip("rouge_score.rouge_scorer")
    f = lambda p, r: 2 * p * r / (p + r)                                                  # noqa: E731
    scores = rouge(["the cat was found under the bed"], ["the cat was under the bed"])
    assert scores == pytest.approx({"rouge1": 100 * f(6 / 7, 1), "rouge2": 100 * f(4 / 6, 4 / 5),
                                    "rougeL": 100 * f(6 / 7, 1)})
    # two documents: the mean of each one's score (a perfect one and the example): not a pooled count
    two = rouge(["the cat was found under the bed", "a dog"], ["the cat was under the bed", "a dog"])
    assert two["rouge2"] == pytest.approx((100 * f(4 / 6, 4 / 5) + 100) / 2)


def test_rouge_equals_rouge_score_with_max_over_references():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    preds = ["the cats are sitting on mats", "we propose a new model for summarization"]
    refs = [["a cat sat on the mat", "cats sitting on a mat"], ["a novel summarization model is proposed"]]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    expected = {}
    for kind in ("rouge1", "rouge2", "rougeL"):
        per_example = [max(scorer.score(r, p)[kind].fmeasure for r in rs) for p, rs in zip(preds, refs)]
        expected[kind] = 100 * sum(per_example) / len(per_example)
    assert rouge(preds, refs) == pytest.approx(expected)
    assert rouge(["cats sitting"], ["cat sits"])["rouge1"] == pytest.approx(100.0)  # the stemmer is on


def test_reference_errors():
    with pytest.raises(InputError, match="2 predictions but 1 reference lists"):
        rouge(["a", "b"], [["a"]])
    with pytest.raises(InputError, match="example 0 has no reference"):
        bleu(["a"], [[]])


@pytest.mark.parametrize("module,call,pip_name", [
    ("sacrebleu", lambda: bleu(["a"], ["a"]), "sacrebleu"),
    ("seqeval.metrics", lambda: entity_f1([["O"]], [["O"]]), "seqeval"),
    ("rouge_score.rouge_scorer", lambda: rouge(["a"], ["a"]), "rouge-score"),
])
def test_missing_library_names_the_install(monkeypatch, module, call, pip_name):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    extra = r"needs the metrics extra: pip install 'qkv\[metrics\]' "
    with pytest.raises(MissingExtraError, match=extra + rf"\(or pip install {pip_name}\)"):
        call()
