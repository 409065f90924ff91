"""Token classification: UD English EWT part-of-speech tags (accuracy) and WNUT17 entities (seqeval F1).

BERT's recipe (Devlin et al., 2019, sec. 5.3): the words go in already split (``is_pretokenized``), each
word's label sits on its FIRST sub-word and the other pieces are not scored (``align_labels``); a word's
prediction is the argmax at its first sub-word:

    words      Dogs          ran
    tokens     [CLS] dog ##s ran [SEP]
    scored           ^       ^

A sentence longer than the model's positions is cut; its words past the cut (and any word the tokenizer
turns into no token at all) get the fallback tag ("O" when the tag set has it, else the first tag), and
the number of cut sentences is reported. UPOS is scored by accuracy over all words, WNUT17 by entity-level
precision / recall / F1 (seqeval, conlleval's rule).

Prediction records (one JSON line per sentence, in file order):

    {"words": ["Dogs", "ran"], "tags": ["NOUN", "VERB"], "predictions": ["NOUN", "VERB"]}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..data.conll import IGNORE_INDEX, align_labels, tag_vocab
from ..errors import DataError
from ..metrics import accuracy, entity_f1
from .batches import Item


@dataclass(frozen=True)
class Tagging:
    reader: Callable                             # read_conllu or read_bio: path -> [(words, tags)]
    metric: str                                  # "accuracy" (over words) or "f1" (entities)
    head = "tag"
    layout = "BL"
    predictions_file = "predictions.jsonl"

    @property
    def needs(self) -> tuple[str, ...]:
        """The optional metrics (``qkv.metrics.PACKAGES``) ``score`` computes with: entity F1 is seqeval's."""
        return ("entity_f1",) if self.metric == "f1" else ()

    def read_train(self, cfg) -> list:
        return self.reader(cfg.data)

    def read_eval(self, cfg, path, labels: list[str]) -> list:
        sentences = self.reader(path)
        known = set(labels)
        for i, (_, tags) in enumerate(sentences, start=1):
            unseen = sorted(set(tags) - known)
            if unseen:
                raise DataError(f"{path}: sentence {i} has tag {unseen[0]!r}, which never occurs in the training "
                                f"data (tags: {', '.join(labels)}); check that the file belongs to this task")
        return sentences

    def label_names(self, train: list) -> list[str]:
        return list(tag_vocab(train))

    def label_meanings(self, labels: list[str]) -> dict[str, str]:
        return {}                                # tags (NOUN, B-person) are their own names

    def texts(self, train: list) -> list[str]:
        return [" ".join(words) for words, _ in train]

    def from_input(self, texts: list[str]) -> list:
        return [(text.split(), None) for text in texts]

    def encode(self, sentences, tokenizer, max_len: int, labels: list[str], cfg) -> tuple[list[Item], dict]:
        label_to_id = {label: i for i, label in enumerate(labels)}
        encodings = tokenizer.encode_batch_for_model([list(words) for words, _ in sentences], max_len=max_len)
        items = []
        for (words, tags), enc in zip(sentences, encodings):
            ids = align_labels(enc.word_ids, tags, label_to_id) if tags is not None \
                else [IGNORE_INDEX] * len(enc.ids)
            items.append(Item(enc.ids, enc.type_ids, ids, list(enc.word_ids)))
        return items, {"truncated": sum(bool(enc.overflowing) for enc in encodings)}

    def predict(self, sentences, items, logits: list[torch.Tensor], labels: list[str], cfg) -> list[dict]:
        fallback = "O" if "O" in labels else labels[0]
        records = []
        for (words, tags), item, logits_LK in zip(sentences, items, logits):
            best_L = logits_LK.argmax(-1).tolist()
            predicted = [fallback] * len(words)
            seen = set()
            for position, word in enumerate(item.word_ids):
                if word is not None and word not in seen:
                    seen.add(word)
                    predicted[word] = labels[best_L[position]]
            records.append({"words": list(words), "tags": None if tags is None else list(tags),
                            "predictions": predicted})
        return records

    def score(self, predictions: list[dict], examples) -> dict:
        preds, golds = [r["predictions"] for r in predictions], [r["tags"] for r in predictions]
        if self.metric == "accuracy":
            return {"accuracy": accuracy([t for p in preds for t in p], [t for g in golds for t in g])}
        return entity_f1(preds, golds)

    def show(self, predictions: list[dict]) -> str:
        return "\n".join(" ".join(f"{w}/{t}" for w, t in zip(r["words"], r["predictions"])) for r in predictions)
