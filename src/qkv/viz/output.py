"""Writing pictures and pages: whole files or nothing, PNGs through matplotlib's Agg renderer.

A file is written to a temp file beside its target and renamed over it (``qkv.rundir.write_atomic``), so an
interrupted run never leaves half a PNG (or half a page) where a good one was. Figures use matplotlib's object API
(``matplotlib.figure.Figure``), never ``pyplot``: no global state, no window, and a notebook's own backend
is left alone. Text that comes from data (tokens, paths) goes through ``plain``: a token "$" is a dollar
sign, not the start of a formula (matplotlib keeps math text on for its own log-scale tick labels).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import InputError, require_extra
from ..rundir import write_atomic, write_text_atomic   # noqa: F401  (the viz modules write through these)


def check_suffix(path: str | Path, allowed: Iterable[str], what: str) -> Path:
    """``path`` as a Path if it ends in one of ``allowed`` (".png", ...); else an error listing them."""
    path, allowed = Path(path), list(allowed)
    if path.suffix.lower() not in allowed:
        raise InputError(f"cannot write {what} to {str(path)!r}: use a file ending in {' or '.join(allowed)}")
    if path.is_dir():
        raise InputError(f"{path} is a directory; give a file name ending in {' or '.join(allowed)}")
    return path


def require_png(feature: str = "a PNG"):
    """matplotlib, or the one-line error naming the plots extra. ``png_figure`` asks when it draws; a command
    asks first, before it loads a model and computes what the picture shows."""
    return require_extra("matplotlib", "plots", feature)


def plain(text: str) -> str:
    """``text`` as matplotlib should draw it literally: a "$" pair would otherwise start math mode."""
    return text.replace("$", r"\$")


@contextmanager
def png_figure(path: str | Path, width: float, height: float, dpi: int = 110,
               layout: str | None = "constrained") -> Iterator:
    """Yield a matplotlib Figure of ``width`` x ``height`` inches; when the block ends, save it as a PNG."""
    matplotlib = require_png()
    from matplotlib.figure import Figure
    path = check_suffix(path, [".png"], "a PNG")
    with matplotlib.rc_context({"font.size": 9}), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from")   # CJK or emoji tokens: boxes
        fig = Figure(figsize=(width, height), layout=layout)
        yield fig
        write_atomic(path, lambda fh: fig.savefig(fh, format="png", dpi=dpi))
