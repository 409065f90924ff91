"""Fine-tuning tasks: each name is a task family (a head on the encoder) with its reader and its metric.

    task     family                    data                                         headline metric
    sst2     classify  ([CLS] pooled)  GLUE TSV: sentence<TAB>label, header         accuracy
    cola     classify                  CoLA TSV: source, label, mark, sentence      Matthews corr. (mcc)
    upos     tag       (first piece)   CoNLL-U, the UPOS column                     accuracy over words
    wnut17   tag                       token<TAB>BIO tag                            entity F1 (seqeval)
    squad    qa        (start, end)    SQuAD v1.1 JSON                              F1 (and EM), official rule
    chat     a decoder (its LM head)   JSONL {"messages": [...]}, chat template     greedy reply exact match

A family turns examples into padded batches for the trainer (``encode`` -> ``batches.Item``), logits back into
predictions (``predict``), predictions into metrics (``score``, with the optional packages named in ``needs``,
asked for before any training), and reads new input for ``qkv predict`` (``from_input``). ``qkv.train.finetune``
runs them; adding a task is one line here.
"""

from __future__ import annotations

from ..data.conll import read_bio, read_conllu
from ..errors import ConfigError
from .chat import ChatFinetuning
from .classify import SentenceClassification
from .qa import ExtractiveQA
from .tag import Tagging

TASKS = {
    "sst2": SentenceClassification("accuracy", {"0": "negative", "1": "positive"}),
    "cola": SentenceClassification("mcc", {"0": "unacceptable", "1": "acceptable"}),
    "upos": Tagging(read_conllu, "accuracy"),
    "wnut17": Tagging(read_bio, "f1"),
    "squad": ExtractiveQA(),
    "chat": ChatFinetuning(),
}


def get_task(name: str):
    if name not in TASKS:
        raise ConfigError(f"unknown fine-tuning task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[name]
