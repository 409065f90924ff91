"""Read training text from a file or a folder of text files, with errors that say what to fix."""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

from ..errors import DataError
from . import BUNDLED_CORPUS

TEXT_SUFFIXES = (".txt", ".text", ".md")
STDIN = "-"                     # as a path: read standard input, as Unix tools do


def read_text(path: str | Path | None) -> str:
    """The whole corpus as one string. A folder contributes its text files in sorted order, one per line.

    ``None`` reads the bundled tiny shakespeare; ``-`` reads standard input.
    """
    if str(path) == STDIN:
        return read_text_file(STDIN)
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
    text = "\n".join(read_text_file(f) for f in files)
    if not text.strip():
        raise DataError(f"{p} is empty; training needs text")
    return text


def read_text_file(path: str | Path) -> str:
    """The whole file decoded as UTF-8 (a leading BOM dropped); ``.gz`` files are decompressed first;
    ``-`` is standard input."""
    if str(path) == STDIN:
        return _decode(sys.stdin.buffer.read(), "<stdin>")
    p = Path(path)
    if p.is_dir():
        raise DataError(f"{p} is a directory; pass a file")
    if not p.is_file():
        raise DataError(f"{p} does not exist; pass the path of your copy of the data file")
    try:
        raw = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
    except (OSError, EOFError) as e:
        raise DataError(f"{p} is not a valid gzip file ({e}); re-download it or gunzip it and pass the "
                        f"plain file") from None
    return _decode(raw, p)


def _decode(raw: bytes, p) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(f"{p}:{line}: not UTF-8 (bad byte at offset {e.start}); convert the file to UTF-8, "
                        f"e.g. `iconv -f latin1 -t utf-8`") from None


def read_lines(path: str | Path) -> list[str]:
    """The file's lines without their line ends; ``lines[i]`` is line ``i + 1`` in error messages.

    Splits on ``\\n`` only (a ``\\r`` before it is dropped): ``str.splitlines`` would also split inside a
    tweet at U+2028 or a form feed and shift every later line number.
    """
    lines = read_text_file(path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line; it does not start an empty one
    return [line[:-1] if line.endswith("\r") else line for line in lines]
