"""Writing pictures and pages: whole files or nothing, PNGs through matplotlib's Agg renderer.

A file is written to a temp file beside its target and renamed over it (``qkv.rundir.write_atomic``), so an
interrupted run never leaves half a PNG (or half a page) where a good one was. Figures use matplotlib's object API
(``matplotlib.figure.Figure``), never ``pyplot``: no global state, no window, and a notebook's own backend
is left alone. Text that comes from data (tokens, paths) goes through ``plain``: a token "$" is a dollar
sign, not the start of a formula (matplotlib keeps math text on for its own log-scale tick labels).
"""

from __future__ import annotations

import math
import textwrap
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


FONT_SIZE = 9.0                          # points; png_figure's default, so sizes computed here match the drawing


def text_inches(texts: Iterable[str], size: float = FONT_SIZE) -> float:
    """The width in inches of the widest line of ``texts`` at ``size`` points, as the Agg renderer draws it.

    Layouts computed by hand (a grid of hundreds of panels, where constrained layout is slow) size their
    margins from this instead of guessing from the number of characters: "W" and "i" differ threefold."""
    require_png()
    from matplotlib.backends.backend_agg import RendererAgg
    from matplotlib.font_manager import FontProperties
    renderer, font = RendererAgg(1, 1, 72), FontProperties(size=size)
    widths = [renderer.get_text_width_height_descent(plain(line), font, ismath=False)[0]
              for t in texts for line in t.splitlines()]
    return max(widths, default=0.0) / 72


def wrap(text: str, width: float, size: float = FONT_SIZE) -> str:
    """``text`` broken into lines that fit ``width`` inches at ``size`` points: a title as long as the path it
    names wraps (a path with no spaces breaks anywhere) instead of running off the figure's edges."""
    per_line = max(12, math.floor(width * 72 / (0.62 * size)))     # 0.62 em: DejaVu Sans's widest usual glyphs
    return "\n".join(textwrap.fill(line, per_line, break_long_words=True, break_on_hyphens=False)
                     for line in text.splitlines() or [""])


def label_step(n: int, room: float, size: float) -> int:
    """Label every ``label_step``-th of ``n`` ticks along ``room`` inches so labels of ``size`` points do not
    overlap (1: every tick). A 128-token axis a few inches long keeps its labels legible, one in k."""
    spacing = 72 * room / max(n, 1)                                # points between neighbouring ticks
    return max(1, math.ceil(1.15 * size / spacing))


@contextmanager
def png_figure(path: str | Path, width: float, height: float, dpi: int = 110,
               layout: str | None = "constrained") -> Iterator:
    """Yield a matplotlib Figure of ``width`` x ``height`` inches; when the block ends, save it as a PNG."""
    matplotlib = require_png()
    from matplotlib.figure import Figure
    path = check_suffix(path, [".png"], "a PNG")
    with matplotlib.rc_context({"font.size": FONT_SIZE}), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from")   # CJK or emoji tokens: boxes
        fig = Figure(figsize=(width, height), layout=layout)
        yield fig
        write_atomic(path, lambda fh: fig.savefig(fh, format="png", dpi=dpi))
