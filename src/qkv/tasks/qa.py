"""Extractive question answering on SQuAD v1.1: official exact match and F1 (Rajpurkar et al., 2016).

BERT's recipe (Devlin et al., 2019, sec. 4.2), on ``qkv.data.squad``'s windows: the model reads
``[CLS] question [SEP] context window [SEP]`` and scores each token as the answer's start and end; a
context longer than the model's positions is cut into windows overlapping by ``stride`` tokens; a window
without the whole answer is trained to point at [CLS]. ``postprocess_qa`` picks, per question, the best
span of at most ``max_answer_len`` tokens over all of its windows.

Only the SQuAD dev set ships with the data, so without ``--eval-data`` the file is split by article: the
last ``n_eval_articles`` articles evaluate, the others train (questions on one paragraph never straddle
the split). ``qkv evaluate`` on the training file evaluates the same held-out articles.

Predictions are the official format, one JSON object ``{question id: answer text}`` (predictions.json).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.squad import SquadExample, postprocess_qa, read_squad, split_by_article, squad_features
from ..metrics import squad_em_f1
from .batches import Item


def _same_file(a, b) -> bool:
    return a is not None and b is not None and Path(a).resolve() == Path(b).resolve()


@dataclass(frozen=True)
class ExtractiveQA:
    metric = "f1"
    head = "qa"
    layout = "B2"
    predictions_file = "predictions.json"
    needs = ()                                   # optional metric packages: none (the official rule is here)

    def read_train(self, cfg) -> list[SquadExample]:
        examples = read_squad(cfg.data)
        return examples if cfg.eval_data is not None else split_by_article(examples, cfg.n_eval_articles)[0]

    def read_eval(self, cfg, path, labels) -> list[SquadExample]:
        if path is None or (cfg.eval_data is None and _same_file(path, cfg.data)):
            return split_by_article(read_squad(cfg.data), cfg.n_eval_articles)[1]
        return read_squad(path)

    def label_names(self, train) -> None:
        return None

    def label_meanings(self, labels) -> dict[str, str]:
        return {}                                # an answer is a span, not a class

    def texts(self, train: list[SquadExample]) -> list[str]:
        return [e.question for e in train] + list(dict.fromkeys(e.context for e in train))

    def from_input(self, pairs: list[tuple[str, str]]) -> list[SquadExample]:
        return [SquadExample(str(i), "", context, question, (), ()) for i, (question, context) in enumerate(pairs)]

    def encode(self, examples, tokenizer, max_len: int, labels, cfg) -> tuple[list[Item], dict]:
        features = squad_features(examples, tokenizer.backend, max_len, cfg.stride, train=True)
        items = [Item(list(f.input_ids), list(f.token_type_ids), [f.start_position, f.end_position], feature=f)
                 for f in features]
        return items, {"windows": len(items)}

    def predict(self, examples, items, logits: list[torch.Tensor], labels, cfg) -> dict[str, str]:
        starts, ends = [x[:, 0] for x in logits], [x[:, 1] for x in logits]     # logits_n2 per window
        return postprocess_qa(examples, [item.feature for item in items], starts, ends,
                              max_answer_len=cfg.max_answer_len)

    def score(self, predictions: dict[str, str], examples) -> dict:
        return squad_em_f1(predictions, examples)

    def show(self, predictions: dict[str, str]) -> str:
        return "\n".join(predictions.values())
