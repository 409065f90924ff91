"""Extractive question answering on SQuAD v1.1 (Rajpurkar et al., 2016), the BERT recipe (Devlin et al., 2019, §4.2).

Legend: W windows (features), L tokens in one window.

The model reads ``[CLS] question [SEP] context [SEP]`` and scores every token as the answer's start and
as its end. A context longer than the model's window is cut into overlapping windows, each with the whole
question; ``stride`` tokens of context repeat between neighbours, so an answer cut by one window's edge
lies whole inside the next:

    context tokens   c0 c1 c2 c3 c4 c5 c6 c7 c8 c9
    window 0         c0 c1 c2 c3 c4 c5 c6              (room for 7 context tokens)
    window 1                  c4 c5 c6 c7 c8 c9        (stride = 3: c4..c6 seen twice)

Training labels a window with the answer's first and last token; a window that does not hold the whole
answer points both at position 0, the [CLS] token (BERT's "no answer here"). At evaluation
``postprocess_qa`` takes, for each question, the best-scoring valid span over all of its windows and maps
it back to characters of the context through the tokens' offsets.

``split_by_article``: only the dev set is public at a size we ship, so fine-tuning splits it by article,
never by question, since questions on one paragraph share their answers' context.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..errors import ConfigError, DataError, InputError
from .text import read_text_file

Offset = tuple[int, int]


@dataclass(frozen=True)
class SquadExample:
    id: str
    title: str
    context: str
    question: str
    answers: tuple[str, ...]           # every ground-truth text (the dev set has about 3 per question)
    answer_starts: tuple[int, ...]     # character offset of each answer in ``context``


@dataclass(frozen=True)
class QAFeature:
    """One window of one example, ready to batch (pad ``input_ids`` etc. to a common L)."""
    input_ids: tuple[int, ...]
    token_type_ids: tuple[int, ...]
    attention_mask: tuple[int, ...]
    offsets: tuple[Offset | None, ...]  # (start, end) characters in the context; None off the context
    example_index: int                  # position of the example in the list given to squad_features
    start_position: int | None = None   # training only: the answer's first token, 0 ([CLS]) if not here
    end_position: int | None = None


def read_squad(path: str | Path) -> list[SquadExample]:
    """Every question of a SQuAD v1.1 JSON file (plain or ``.gz``), in file order."""
    try:
        data = json.loads(read_text_file(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg}); the file may be truncated, "
                        f"re-download it") from None
    examples = []
    where = "the top level"
    try:
        for a, article in enumerate(data["data"]):
            where = f"article {a}"
            for p, paragraph in enumerate(article["paragraphs"]):
                where = f"article {a} paragraph {p}"
                for q, qa in enumerate(paragraph["qas"]):
                    where = f"article {a} paragraph {p} question {q}"
                    answers = qa["answers"]
                    examples.append(SquadExample(
                        id=str(qa["id"]), title=article["title"], context=paragraph["context"],
                        question=qa["question"], answers=tuple(x["text"] for x in answers),
                        answer_starts=tuple(int(x["answer_start"]) for x in answers)))
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path}: {where} does not follow the SQuAD v1.1 schema ({type(e).__name__}: {e}); "
                        f"expected {{'data': [{{'title', 'paragraphs': [{{'context', 'qas': [{{'id', "
                        f"'question', 'answers': [{{'text', 'answer_start'}}]}}]}}]}}]}}") from None
    if not examples:
        raise DataError(f"{path} holds no questions; point it at a SQuAD v1.1 JSON file")
    return examples


def split_by_article(examples: Sequence[SquadExample],
                     n_eval_articles: int = 10) -> tuple[list[SquadExample], list[SquadExample]]:
    """(train, eval): the LAST ``n_eval_articles`` articles in file order evaluate, all earlier ones train.

    Articles are told apart by title. The split is deterministic (no seed), so every run and every reader
    of a results table evaluates the same questions; on the 48-article dev set the default gives 38 / 10.
    """
    titles = list(dict.fromkeys(e.title for e in examples))  # first-appearance order
    if not 0 < n_eval_articles < len(titles):
        raise ConfigError(f"n_eval_articles={n_eval_articles} but the data has {len(titles)} articles; choose "
                          f"1 to {len(titles) - 1} so both splits are non-empty")
    eval_titles = set(titles[-n_eval_articles:])
    return ([e for e in examples if e.title not in eval_titles], [e for e in examples if e.title in eval_titles])


def _answer_positions(offsets: Sequence[Offset | None], char_start: int, char_end: int) -> tuple[int, int]:
    """Token positions of the first and last answer token, or (0, 0) when the window cuts the answer off."""
    context_tokens = [i for i, o in enumerate(offsets) if o is not None]
    if not context_tokens or offsets[context_tokens[0]][0] > char_start \
            or offsets[context_tokens[-1]][1] < char_end:
        return 0, 0
    start = max(i for i in context_tokens if offsets[i][0] <= char_start)
    end = min(i for i in context_tokens if offsets[i][1] >= char_end)
    return start, end


def squad_features(examples: Sequence[SquadExample], tokenizer_backend, max_len: int, stride: int,
                   train: bool) -> list[QAFeature]:
    """Windows of at most ``max_len`` tokens for every example, in example order.

    ``tokenizer_backend`` is a ``tokenizers.Tokenizer`` whose post-processor builds
    ``[CLS] question [SEP] context [SEP]`` (type id 1 on the context). Its truncation setting is used for
    the windows and restored afterwards. With ``train`` the windows carry start/end positions of the first
    ground-truth answer.
    """
    if stride < 0 or max_len < 1:
        raise ConfigError(f"max_len={max_len}, stride={stride}: need max_len >= 1 and stride >= 0")
    backend = tokenizer_backend
    processor = backend.post_processor
    n_special = processor.num_special_tokens_to_add(True) if processor is not None else 0
    saved = backend.truncation
    try:
        # The library panics (not a Python error) when the question leaves no more than `stride` context
        # tokens, so measure the questions first and say which one is too long.
        backend.no_truncation()
        questions = backend.encode_batch([e.question for e in examples], add_special_tokens=False)
        for example, question in zip(examples, questions):
            room = max_len - sum(question.attention_mask) - n_special
            if room <= stride:
                raise InputError(f"question {example.id!r} leaves {room} of max_len={max_len} tokens for the "
                                 f"context, which must exceed stride={stride}; raise max_len or lower stride")
        backend.enable_truncation(max_len, stride=stride, strategy="only_second")
        encodings = backend.encode_batch([(e.question, e.context) for e in examples])
    finally:
        if saved is None:
            backend.no_truncation()
        else:
            backend.enable_truncation(**saved)

    features = []
    for index, (example, encoding) in enumerate(zip(examples, encodings)):
        for window in [encoding, *encoding.overflowing]:
            offsets = tuple(o if s == 1 else None for o, s in zip(window.offsets, window.sequence_ids))
            start = end = None
            if train:
                if example.answers:
                    char_start = example.answer_starts[0]
                    start, end = _answer_positions(offsets, char_start, char_start + len(example.answers[0]))
                else:
                    start, end = 0, 0
            features.append(QAFeature(tuple(window.ids), tuple(window.type_ids), tuple(window.attention_mask),
                                      offsets, index, start, end))
    return features


def postprocess_qa(examples: Sequence[SquadExample], features: Sequence[QAFeature], start_logits, end_logits,
                   max_answer_len: int = 30, n_best: int = 20) -> dict[str, str]:
    """{question id: answer text}: the highest start + end score over every window of the question.

    ``start_logits`` / ``end_logits``: a ``(W, L)`` tensor or array, or W sequences, row w scoring
    ``features[w]`` (a longer, padded row is cut to the window's length). Only spans inside the context
    with start <= end and at most ``max_answer_len`` tokens count; the ``n_best`` top starts and ends of
    each window are paired. A question with no valid span gets "".
    """
    best: dict[int, tuple[float, str]] = {}
    for w, feature in enumerate(features):
        L = len(feature.offsets)
        start_L = torch.as_tensor(start_logits[w], dtype=torch.float32).flatten()
        end_L = torch.as_tensor(end_logits[w], dtype=torch.float32).flatten()
        if len(start_L) < L or len(end_L) < L:
            raise InputError(f"window {w} has {L} tokens but {len(start_L)} start / {len(end_L)} end logits; "
                             f"pass the model's logits for the same features, in the same order")
        start_L, end_L = start_L[:L], end_L[:L]
        top_starts = start_L.topk(min(n_best, L)).indices.tolist()
        top_ends = end_L.topk(min(n_best, L)).indices.tolist()
        start_scores, end_scores = start_L.tolist(), end_L.tolist()
        offsets = feature.offsets
        context = examples[feature.example_index].context
        for s in top_starts:
            for e in top_ends:
                if offsets[s] is None or offsets[e] is None or e < s or e - s + 1 > max_answer_len:
                    continue
                score = start_scores[s] + end_scores[e]
                if feature.example_index not in best or score > best[feature.example_index][0]:
                    best[feature.example_index] = (score, context[offsets[s][0]:offsets[e][1]])
    return {example.id: best[i][1] if i in best else "" for i, example in enumerate(examples)}
