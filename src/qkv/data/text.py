"""Read training text from a file or a folder of text files, with errors that say what to fix."""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from . import BUNDLED_CORPUS

TEXT_SUFFIXES = (".txt", ".text", ".md")


def read_text(path: str | Path | None) -> str:
    """The whole corpus as one string. A folder contributes its text files in sorted order, one per line.

    ``None`` reads the bundled tiny shakespeare.
    """
    p = Path(path) if path is not None else BUNDLED_CORPUS
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in TEXT_SUFFIXES)
        if not files:
            raise DataError(f"folder {p} has no {'/'.join(TEXT_SUFFIXES)} files; point --data at a text file "
                            f"or a folder of them")
    elif p.is_file():
        files = [p]
    else:
        raise DataError(f"training data {p} does not exist; pass --data FILE_OR_FOLDER")
    parts = []
    for f in files:
        raw = f.read_bytes()
        try:
            parts.append(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise DataError(f"{f} is not UTF-8 (bad byte at offset {e.start}); convert it, e.g. "
                            f"`iconv -f latin1 -t utf-8 {f.name}`") from None
    text = "\n".join(parts)
    if not text.strip():
        raise DataError(f"{p} is empty; training needs text")
    return text
