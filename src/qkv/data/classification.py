"""Sentence classification data in the GLUE TSV formats: SST-2 (sentiment) and CoLA (acceptability).

Two layouts exist in the wild, and the reader tells them apart from the first line:

    SST-2   header, then sentence<TAB>label           "sentence\\tlabel"   "kids , spirit \\t1"
    CoLA    no header, 4 columns                      "gj04\\t1\\t\\tOur friends won't buy this analysis ..."
            (source, label, author's mark, sentence)

A header is any first line whose columns include ``sentence`` and ``label`` (so ``label\\tsentence`` or
extra columns work too). Text is stripped: SST-2 writes a space before every TAB. Labels stay strings
("0", "1") until ``label_vocab`` numbers them, so one reader serves binary and multi-class files alike.

Lines are split on TAB only, never parsed as CSV: sentences contain quotes (``" the movie "``) that a CSV
reader would swallow.

    >>> train = read_classification("sst2/train.tsv")            # doctest: +SKIP
    >>> labels = label_vocab(train)                               # {'0': 0, '1': 1}
    >>> dev = read_classification("sst2/dev.tsv", labels)         # DataError on a label train never had
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import DataError
from .text import read_lines

COLA_COLUMNS = 4  # source, label, author's mark, sentence


@dataclass(frozen=True)
class Example:
    text: str
    label: str


def _layout(path, first_line: str) -> tuple[int, int, int, bool]:
    """(text column, label column, number of columns, has header) from the file's first line."""
    columns = [c.strip().lower() for c in first_line.split("\t")]
    if "sentence" in columns and "label" in columns:
        return columns.index("sentence"), columns.index("label"), len(columns), True
    if len(columns) == COLA_COLUMNS:
        return 3, 1, COLA_COLUMNS, False
    raise DataError(f"{path}:1: expected a header naming `sentence` and `label` columns (GLUE SST-2) or "
                    f"4 TAB-separated columns source/label/mark/sentence (CoLA), got {len(columns)} "
                    f"column(s): {first_line[:80]!r}")


def read_classification(path: str | Path, label_to_id: Mapping[str, int] | None = None) -> list[Example]:
    """Every row of a GLUE-style TSV file (plain or ``.gz``) as ``Example(text, label)``.

    With ``label_to_id`` (from ``label_vocab`` of the training file) every label must be in it: an eval file
    with a label training never saw would score a class the model cannot predict.
    """
    lines = read_lines(path)
    if not lines:
        raise DataError(f"{path} is empty; a classification file needs one labelled sentence per line")
    text_col, label_col, n_cols, header = _layout(path, lines[0])
    examples = []
    for lineno, line in enumerate(lines, start=1):
        if (header and lineno == 1) or not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != n_cols:
            expected = "sentence and label" if header else "source, label, author's mark and sentence (CoLA)"
            raise DataError(f"{path}:{lineno}: expected {n_cols} TAB-separated columns ({expected}), got "
                            f"{len(fields)}; a TAB inside a sentence must be removed")
        text, label = fields[text_col].strip(), fields[label_col].strip()
        if not text or not label:
            raise DataError(f"{path}:{lineno}: empty {'sentence' if not text else 'label'}; every row needs "
                            f"both a sentence and a label")
        if label_to_id is not None and label not in label_to_id:
            raise DataError(f"{path}:{lineno}: label {label!r} never occurs in the training data (labels: "
                            f"{', '.join(sorted(label_to_id))}); check that this file belongs to the same "
                            f"task, or build the label set from a training file that has it")
        examples.append(Example(text, label))
    if not examples:
        raise DataError(f"{path} has a header but no rows; a classification file needs labelled sentences")
    return examples


def label_vocab(train_examples: Sequence[Example]) -> dict[str, int]:
    """Label -> class id in sorted order, numbers by value ("2" before "10"), so GLUE's "0"/"1" become 0/1.

    Sorting makes the mapping independent of row order, so a checkpoint's ids mean the same after a reshuffle.
    """
    def order(label: str):
        return (0, int(label), label) if label.isdigit() else (1, 0, label)
    return {label: i for i, label in enumerate(sorted({e.label for e in train_examples}, key=order))}
