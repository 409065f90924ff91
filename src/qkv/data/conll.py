"""Token-tagging corpora: UD CoNLL-U (POS) and two-column BIO files (NER), plus sub-word label alignment.

Both readers return a list of sentences, each ``(tokens, tags)`` with one tag per word. A model sees
sub-words, not words, so ``align_labels`` puts each word's label on its FIRST sub-word and -100 (the index
``torch.nn.functional.cross_entropy`` ignores) on the rest, as BERT does for NER (Devlin et al., 2019, §5.3):

    words      [CLS]  Dogs          ran   [SEP]
    sub-words  [CLS]  dog   ##s     ran   [SEP]
    word_ids   None   0     0       1     None
    labels     -100   B-x   -100    O     -100

CoNLL-U (https://universaldependencies.org/format.html): ten TAB-separated columns per word, ``#`` comment
lines, a blank line after each sentence. IDs like ``1-2`` (a multiword token such as "don't", whose parts
follow as their own lines) and ``8.1`` (an empty node of enhanced dependencies) are not words of the
sentence, so they are skipped; what is left matches the treebank's stated token counts.

BIO (WNUT17, CoNLL-2003 style): ``token<TAB>tag`` per line, a sentence break at any line that is empty
after ``strip()``: the WNUT17 train file separates sentences with lines holding a single TAB.

``read_lines`` is the one file opener for line-oriented data (plain or ``.gz``, UTF-8); the TSV and SQuAD
readers use it too, so every reader reports a missing file or a bad byte the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from ..errors import ConfigError, DataError, InputError
from .text import read_lines

CONLLU_COLUMNS = ("id", "form", "lemma", "upos", "xpos", "feats", "head", "deprel", "deps", "misc")
IGNORE_INDEX = -100  # cross_entropy's default ignore_index: no loss on special tokens and continuations

Sentence = tuple[list[str], list[str]]


def read_conllu(path: str | Path, column: str = "upos") -> list[Sentence]:
    """Sentences of a CoNLL-U file as ``(forms, tags)``, the tags taken from ``column`` (``upos``, ``xpos``,
    ``deprel``, ...). Plain or ``.gz``.

        >>> read_conllu("en_ewt-ud-dev.conllu")[0]          # doctest: +SKIP
        (['From', 'the', 'AP', 'comes', 'this', 'story', ':'], ['ADP', 'DET', 'PROPN', 'VERB', ...])
    """
    if column not in CONLLU_COLUMNS[1:]:
        raise ConfigError(f"column={column!r} is not a CoNLL-U column; use one of {', '.join(CONLLU_COLUMNS[1:])}")
    tag_index = CONLLU_COLUMNS.index(column)
    sentences: list[Sentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    for lineno, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            if tokens:
                sentences.append((tokens, tags))
                tokens, tags = [], []
            continue
        if line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != len(CONLLU_COLUMNS):
            raise DataError(f"{path}:{lineno}: expected {len(CONLLU_COLUMNS)} TAB-separated CoNLL-U columns "
                            f"(ID FORM LEMMA UPOS XPOS FEATS HEAD DEPREL DEPS MISC), got {len(fields)}; "
                            f"is the file space-separated or cut short?")
        word_id = fields[0]
        if "-" in word_id or "." in word_id:
            continue  # a multiword-token range or an empty node, not a word of the sentence
        if not word_id.isdigit():
            raise DataError(f"{path}:{lineno}: ID {word_id!r} is not a word number, a range like 1-2 or an "
                            f"empty node like 8.1; fix the line")
        tokens.append(fields[1])
        tags.append(fields[tag_index])
    if tokens:  # the last sentence may lack its closing blank line
        sentences.append((tokens, tags))
    return sentences


def _is_bio(tag: str) -> bool:
    return tag == "O" or (tag[:2] in ("B-", "I-") and len(tag) > 2)


def read_bio(path: str | Path) -> list[Sentence]:
    """Sentences of a ``token<TAB>tag`` file with BIO tags (``O``, ``B-type``, ``I-type``). Plain or ``.gz``."""
    sentences: list[Sentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    for lineno, line in enumerate(read_lines(path), start=1):
        if not line.strip():  # blank, or WNUT17 train's lone TAB
            if tokens:
                sentences.append((tokens, tags))
                tokens, tags = [], []
            continue
        fields = line.split("\t")
        if len(fields) != 2 or not fields[0] or not _is_bio(fields[1].strip()):
            raise DataError(f"{path}:{lineno}: expected `token<TAB>tag` with a BIO tag (O, B-type, I-type), "
                            f"got {line!r}")
        tokens.append(fields[0])
        tags.append(fields[1].strip())
    if tokens:
        sentences.append((tokens, tags))
    return sentences


def tag_vocab(sentences: Sequence[Sentence]) -> dict[str, int]:
    """Tag -> id over the training sentences, sorted so the mapping does not depend on sentence order."""
    return {tag: i for i, tag in enumerate(sorted({t for _, tags in sentences for t in tags}))}


def align_labels(word_ids: Sequence[int | None], tags: Sequence[str],
                 label_to_id: Mapping[str, int]) -> list[int]:
    """One label id per sub-word token: the word's label on its first sub-word, -100 elsewhere.

    ``word_ids`` is ``Encoding.word_ids`` of the word list encoded with ``is_pretokenized=True`` (None for
    special and padding tokens); ``tags`` has one tag per word.
    """
    labels = []
    previous = None
    for word_id in word_ids:
        if word_id is None or word_id == previous:
            labels.append(IGNORE_INDEX)
        else:
            if not 0 <= word_id < len(tags):
                raise InputError(f"word id {word_id} but the sentence has {len(tags)} tags; encode the same "
                                 f"word list the tags belong to, with is_pretokenized=True")
            tag = tags[word_id]
            if tag not in label_to_id:
                raise DataError(f"tag {tag!r} is not in the label set ({len(label_to_id)} labels); build "
                                f"label_to_id from the training tags (tag_vocab) and check the file's tag set")
            labels.append(label_to_id[tag])
        previous = word_id
    return labels
