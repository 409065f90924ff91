"""Sequence classification from [CLS]: SST-2 sentiment (accuracy) and CoLA acceptability (Matthews corr.).

BERT's recipe (Devlin et al., 2019, sec. 4.1): ``[CLS] sentence [SEP]`` through the encoder, the pooled
[CLS] state through a linear layer, softmax over the classes. Sentences longer than the model's positions
are cut to fit (the count is reported). Labels are numbered from the training file (``label_vocab``); an
eval file with a label training never had is an error naming it.

Prediction records (one JSON line per sentence, in file order):

    {"text": "a gorgeous film", "label": "1", "prediction": "1", "probability": 0.97}

``label`` is the gold label (None for new text), ``probability`` the softmax of the predicted class.
The files number their classes (GLUE's SST-2: 0 negative, 1 positive; CoLA: 0 unacceptable, 1 acceptable);
``names`` holds what the numbers mean, a fine-tuned run stores them in config.json (``label_names``), and
`qkv predict` shows the name (records gain ``"name": "positive"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..data.classification import Example, label_vocab, read_classification
from ..metrics import accuracy, matthews_corrcoef
from .batches import Item


@dataclass(frozen=True)
class SentenceClassification:
    metric: str                                  # the headline metric: "accuracy" or "mcc"
    head = "classify"                            # qkv.models.encoder.HEADS key
    layout = "B"
    predictions_file = "predictions.jsonl"
    needs = ()                                   # optional metric packages: none
    names: dict[str, str] = field(default_factory=dict)   # the dataset's label -> what it means

    def label_meanings(self, labels: list[str]) -> dict[str, str]:
        """{label: name} for the labels the names cover (a file labelled "pos"/"neg" needs none)."""
        return {label: self.names[label] for label in labels if label in self.names}

    def read_train(self, cfg) -> list[Example]:
        return read_classification(cfg.data)

    def read_eval(self, cfg, path, labels: list[str]) -> list[Example]:
        return read_classification(path, {label: i for i, label in enumerate(labels)})

    def label_names(self, train: list[Example]) -> list[str]:
        return list(label_vocab(train))

    def texts(self, train: list[Example]) -> list[str]:
        return [e.text for e in train]

    def from_input(self, texts: list[str]) -> list[Example]:
        return [Example(text, None) for text in texts]

    def encode(self, examples, tokenizer, max_len: int, labels: list[str], cfg) -> tuple[list[Item], dict]:
        label_to_id = {label: i for i, label in enumerate(labels)}
        encodings = tokenizer.encode_batch_for_model([e.text for e in examples], max_len=max_len)
        items = [Item(enc.ids, enc.type_ids, [label_to_id.get(e.label, -100)])
                 for e, enc in zip(examples, encodings)]
        return items, {"truncated": sum(bool(enc.overflowing) for enc in encodings)}

    def predict(self, examples, items, logits: list[torch.Tensor], labels: list[str], cfg) -> list[dict]:
        records = []
        for e, logits_K in zip(examples, logits):
            probs_K = logits_K.softmax(-1)
            k = int(probs_K.argmax())
            records.append({"text": e.text, "label": e.label, "prediction": labels[k],
                            "probability": round(float(probs_K[k]), 6)})
        return records

    def score(self, predictions: list[dict], examples) -> dict:
        preds, golds = [r["prediction"] for r in predictions], [r["label"] for r in predictions]
        scores = {"accuracy": accuracy(preds, golds)}
        if self.metric == "mcc":
            scores["mcc"] = matthews_corrcoef(preds, golds)
        return scores

    def show(self, predictions: list[dict]) -> str:
        return "\n".join(f"{r.get('name', r['prediction'])}\t{r['probability']:.3f}\t{r['text']}" for r in predictions)
