"""Task metrics, each computed the way its field reports it, so our numbers compare with published ones.

| task                       | metric                      | scale   | source of truth                        |
| -------------------------- | --------------------------- | ------- | -------------------------------------- |
| SST-2, POS                 | ``accuracy``                | 0..1    | the definition                         |
| CoLA                       | ``matthews_corrcoef``       | -1..1   | Matthews (1975); Gorodkin (2004) for K classes |
| NER (WNUT17)               | ``entity_f1``               | 0..1    | ``seqeval`` (conlleval's entity rule)  |
| SQuAD v1.1                 | ``squad_em_f1``             | 0..100  | the official v1.1 evaluation rule      |
| translation                | ``bleu``                    | 0..100  | ``sacrebleu`` corpus BLEU + signature  |
| summarization (SciTLDR)    | ``rouge``                   | 0..100  | Google's ``rouge_score``, stemmed      |

seqeval, sacrebleu and rouge_score are optional (``pip install 'qkv[metrics]'``) and imported only when
their metric is called; a command that will score asks for them first (``require_metric``), before it trains
or translates. Arguments put the predictions first, then the references.

Matthews correlation over K classes, from the confusion matrix C (rows true, columns predicted),
t_k = row sums, p_k = column sums, c = trace, s = total:

    MCC = (c·s − Σ_k p_k·t_k) / sqrt((s² − Σ_k p_k²) · (s² − Σ_k t_k²))

which for K = 2 is (TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)). A zero denominator (all
predictions or all labels one class) gives 0, as in scikit-learn.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from typing import Mapping, NamedTuple, Sequence

from .errors import InputError, require_extra


# metric -> (the module it is computed with, its pip package): the metrics extra
PACKAGES = {"entity_f1": ("seqeval.metrics", "seqeval"), "bleu": ("sacrebleu", "sacrebleu"),
            "rouge": ("rouge_score.rouge_scorer", "rouge-score")}


def require_metric(name: str, feature: str | None = None):
    """The module metric ``name`` is computed with, or MissingExtraError naming the metrics extra;
    ``feature`` is what the message says needs it (default the metric)."""
    module, package = PACKAGES[name]
    return require_extra(module, "metrics", feature or name, package)


def _check_pairs(preds: Sequence, golds: Sequence, what: str) -> None:
    if len(preds) != len(golds):
        raise InputError(f"{len(preds)} predictions but {len(golds)} {what}; pass one prediction per example")
    if not preds:
        raise InputError("no predictions to score; pass at least one example")


def accuracy(preds: Sequence, golds: Sequence) -> float:
    """Fraction of predictions equal to the gold label (flatten token labels first for POS)."""
    _check_pairs(preds, golds, "gold labels")
    return sum(p == g for p, g in zip(preds, golds)) / len(preds)


def matthews_corrcoef(preds: Sequence, golds: Sequence) -> float:
    """Matthews correlation coefficient, binary or multi-class (formula in the module docstring)."""
    _check_pairs(preds, golds, "gold labels")
    s = len(preds)
    c = sum(p == g for p, g in zip(preds, golds))
    p_k, t_k = Counter(preds), Counter(golds)
    classes = p_k.keys() | t_k.keys()
    covariance = c * s - sum(p_k[k] * t_k[k] for k in classes)  # integers: exact until the last step
    var_pred = s * s - sum(n * n for n in p_k.values())
    var_gold = s * s - sum(n * n for n in t_k.values())
    if var_pred == 0 or var_gold == 0:
        return 0.0
    return covariance / math.sqrt(var_pred * var_gold)


def entity_f1(preds: Sequence[Sequence[str]], golds: Sequence[Sequence[str]]) -> dict[str, float]:
    """Entity-level precision, recall and F1 (micro over entities) of BIO tag sequences, via seqeval.

    An entity counts only when its type and both boundaries match (seqeval's default, conlleval-compatible
    mode). Each argument is one tag list per sentence.
    """
    _check_pairs(preds, golds, "gold sentences")
    for i, (p, g) in enumerate(zip(preds, golds)):
        if len(p) != len(g):
            raise InputError(f"sentence {i}: {len(p)} predicted tags for {len(g)} gold tags; predict one tag "
                             f"per word (take the first sub-word's label)")
    metrics = require_metric("entity_f1")
    y_true, y_pred = [list(g) for g in golds], [list(p) for p in preds]
    return {"precision": float(metrics.precision_score(y_true, y_pred)),
            "recall": float(metrics.recall_score(y_true, y_pred)),
            "f1": float(metrics.f1_score(y_true, y_pred))}


# ---- SQuAD v1.1 --------------------------------------------------------------------------------------
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalization: lowercase, drop ASCII punctuation, drop a/an/the, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _token_f1(prediction: str, truth: str) -> float:
    pred_tokens, true_tokens = normalize_answer(prediction).split(), normalize_answer(truth).split()
    n_same = sum((Counter(pred_tokens) & Counter(true_tokens)).values())
    if n_same == 0:  # includes both empty: v1.1 scores that 0 (v2.0 changed it to 1)
        return 0.0
    precision, recall = n_same / len(pred_tokens), n_same / len(true_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_em_f1(predictions: Mapping[str, str], examples: Sequence) -> dict[str, float]:
    """{"exact_match", "f1"} in percent, the official SQuAD v1.1 rule.

    Each question scores its best match over its ground truths (``example.answers``); a question with no
    prediction scores 0 and still counts; predictions for unknown ids are ignored.
    """
    if not examples:
        raise InputError("no examples to score; pass the SquadExamples the predictions answer")
    exact = f1 = 0.0
    for example in examples:
        if example.id not in predictions:
            continue
        prediction = predictions[example.id]
        exact += max((float(normalize_answer(prediction) == normalize_answer(t)) for t in example.answers),
                     default=0.0)
        f1 += max((_token_f1(prediction, t) for t in example.answers), default=0.0)
    return {"exact_match": 100.0 * exact / len(examples), "f1": 100.0 * f1 / len(examples)}


# ---- generation ------------------------------------------------------------------------------------------
def _reference_lists(refs_list: Sequence, n: int) -> list[list[str]]:
    """One list of references per example (a bare string is one reference)."""
    if len(refs_list) != n:
        raise InputError(f"{n} predictions but {len(refs_list)} reference lists; pass the references of "
                         f"every example, in order")
    refs = [[r] if isinstance(r, str) else list(r) for r in refs_list]
    for i, r in enumerate(refs):
        if not r:
            raise InputError(f"example {i} has no reference; every example needs at least one")
    return refs


class Bleu(NamedTuple):
    score: float       # corpus BLEU, 0..100
    signature: str     # as sacrebleu prints it: "BLEU|nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"


def bleu(hyps: Sequence[str], refs_list: Sequence[Sequence[str] | str]) -> Bleu:
    """Corpus BLEU with sacrebleu's defaults (13a tokenization, exponential smoothing) and its signature.

    ``refs_list[i]`` holds the reference(s) of ``hyps[i]``; the count may vary per example.
    """
    refs = _reference_lists(refs_list, len(hyps))
    if not hyps:
        raise InputError("no hypotheses to score; pass at least one")
    sacrebleu = require_metric("bleu")
    # sacrebleu wants reference *streams* (stream j = every example's j-th reference); None marks a
    # missing j-th reference, which is how it supports a varying number per example.
    n_streams = max(len(r) for r in refs)
    streams = [[r[j] if j < len(r) else None for r in refs] for j in range(n_streams)]
    metric = sacrebleu.metrics.BLEU()
    result = metric.corpus_score(list(hyps), streams)
    return Bleu(float(result.score), f"{result.name}|{metric.get_signature()}")


def rouge(preds: Sequence[str], refs_list: Sequence[Sequence[str] | str]) -> dict[str, float]:
    """{"rouge1", "rouge2", "rougeL"} F-measure in percent, with Porter stemming.

    With several references an example scores its best reference per ROUGE type (as SciTLDR reports);
    the scores are averaged over examples.
    """
    refs = _reference_lists(refs_list, len(preds))
    if not preds:
        raise InputError("no predictions to score; pass at least one")
    rouge_scorer = require_metric("rouge")
    types = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(types), use_stemmer=True)
    totals = dict.fromkeys(types, 0.0)
    for pred, example_refs in zip(preds, refs):
        best = scorer.score_multi(example_refs, pred)
        for t in types:
            totals[t] += best[t].fmeasure
    return {t: 100.0 * total / len(preds) for t, total in totals.items()}
