"""Attention maps as PNG heat-maps: a grid of layers x heads, one layer's heads, one head's layers, or one map.

Each map is a query x key matrix (rows: the token attending; columns: the token attended to) of one head's
softmax probabilities; each row sums to 1. Colours follow the square root of the probability on a fixed
0..1 scale, so every panel is comparable and a diffuse head (1/L everywhere) is still visible.

    >>> maps = attention_maps(model, encode_inputs(model, "The car is red"))          # doctest: +SKIP
    >>> plot_attention(maps[0], "grid.png")                                           # doctest: +SKIP
    >>> plot_attention(maps[0], "l2h3.png", layer=2, head=3)                           # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError, counted
from .output import label_step, plain, png_figure, text_inches, wrap
from .read import AttentionMap

CMAP = "Blues"


def check_index(value: int | None, count: int, what: str) -> None:
    if value is not None and not 0 <= value < count:
        numbered = "numbered 0" if count == 1 else f"numbered 0 to {count - 1}"
        raise InputError(f"{what} {value} is out of range: this model has {counted(count, what)}, {numbered}")


def _norm():
    from matplotlib.colors import PowerNorm
    return PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0)


def plot_attention(amap: AttentionMap, path: str | Path, layer: int | None = None, head: int | None = None,
                   title: str = "") -> Path:
    """Write ``amap`` as a PNG: every layer x head, or only ``layer`` and/or ``head`` (0-based)."""
    check_index(layer, amap.n_layers, "layer")
    check_index(head, amap.n_heads, "head")
    layers = range(amap.n_layers) if layer is None else [layer]
    heads = range(amap.n_heads) if head is None else [head]
    if len(layers) == 1 and len(heads) == 1:
        return _single(amap, path, layers[0], heads[0], title)
    return _grid(amap, path, list(layers), list(heads), title)


def _label_size(n: int, room: float) -> float:
    """A font size (points) that fits n labels along ``room`` inches; below 6 points (too small to read at
    110 dpi) the labels stay 6 points and ``label_step`` thins them."""
    return max(6.0, min(9.0, 0.8 * 72 * room / max(n, 1)))


def _ticks(ax, axis: str, labels: list[str], room: float, size: float) -> None:
    """Tick every token (or every k-th, where they would overlap) with its label."""
    step = label_step(len(labels), room, size)
    shown = range(0, len(labels), step)
    if axis == "x":
        ax.set_xticks(shown, [plain(labels[i]) for i in shown], rotation=90, fontsize=size)
    else:
        ax.set_yticks(shown, [plain(labels[i]) for i in shown], fontsize=size)


def _heading(title: str, amap: AttentionMap, what: str) -> str:
    return f"{title + ': ' if title else ''}{amap.name}{what}"


def _single(amap: AttentionMap, path, layer: int, head: int, title: str) -> Path:
    probs_LM = amap.layers[layer][head].numpy()
    L, M = probs_LM.shape
    side = min(max(0.28 * max(L, M), 3.5), 14.0)
    width, height = side * M / max(L, M) + 2.2, side * L / max(L, M) + 1.6
    with png_figure(path, width, height) as fig:       # constrained layout makes room for labels and title
        ax = fig.subplots()
        image = ax.imshow(probs_LM, cmap=CMAP, norm=_norm(), interpolation="nearest", aspect="auto")
        size = _label_size(max(L, M), side)
        _ticks(ax, "x", amap.keys, side * M / max(L, M), size)
        _ticks(ax, "y", amap.queries, side * L / max(L, M), size)
        ax.set_xlabel("key (attended to)")
        ax.set_ylabel("query (attending)")
        # The figure's title, not the axes': centred on the figure, a title as wide as it stays on it.
        fig.suptitle(plain(wrap(_heading(title, amap, f", layer {layer}, head {head}"), width - 0.3, 10)), fontsize=10)
        if max(L, M) <= 16:                              # small enough to print every probability
            for q in range(L):
                for k in range(M):
                    ax.text(k, q, f"{probs_LM[q, k]:.2f}", ha="center", va="center", fontsize=size * 0.8,
                            color="white" if probs_LM[q, k] > 0.5 else "black")
        fig.colorbar(image, ax=ax, shrink=0.8, label="probability (square-root scale)")
    return Path(path)


# The grid is laid out by hand in inches (constrained layout takes minutes over 30 x 9 panels): panels of one
# size, gaps for each panel's title, margins measured from the labels, a title wrapped to the width on top.
MAX_WIDTH, MAX_HEIGHT, MIN_WIDTH = 32.0, 48.0, 5.0     # inches: 30 layers x 9 heads stays a picture, not a poster
GAP_X, GAP_Y = 0.1, 0.3                                # between panels; GAP_Y holds a panel's "L3 H2"
BAR = 1.1                                              # the colour bar, its ticks and its label, on the right


def _grid(amap: AttentionMap, path, layers: list[int], heads: list[int], title: str) -> Path:
    L, M = len(amap.queries), len(amap.keys)
    rows, cols = len(layers), len(heads)
    cell = min(max(0.13 * max(L, M), 1.2), 4.0, (MAX_WIDTH - 3) / cols - GAP_X, (MAX_HEIGHT - 2) / rows - GAP_Y)
    size = _label_size(max(L, M), cell)
    keys, queries = amap.keys, amap.queries
    left = text_inches(queries[::label_step(L, cell, size)], size) + 0.2
    bottom = text_inches(keys[::label_step(M, cell, size)], size) + 0.2      # rotated: width becomes height
    panels_w, panels_h = cols * cell + (cols - 1) * GAP_X, rows * cell + (rows - 1) * GAP_Y
    width = max(left + panels_w + BAR, MIN_WIDTH)
    left += (width - left - panels_w - BAR) / 2                             # a narrow grid sits in the middle
    heading = wrap(_heading(title, amap, " (rows: query tokens, columns: key tokens)"), width - 0.3, 11)
    top = 0.2 + 0.2 * (heading.count("\n") + 1) + GAP_Y                   # the title's lines, a panel title
    height = top + panels_h + bottom
    with png_figure(path, width, height, layout=None) as fig:
        image = None
        for r, layer in enumerate(layers):
            for c, head in enumerate(heads):
                x, y = left + c * (cell + GAP_X), height - top - r * (cell + GAP_Y) - cell
                ax = fig.add_axes((x / width, y / height, cell / width, cell / height))
                image = ax.imshow(amap.layers[layer][head].numpy(), cmap=CMAP, norm=_norm(),
                                  interpolation="nearest", aspect="auto")
                ax.set_title(f"L{layer} H{head}", fontsize=7, pad=2)
                ax.tick_params(length=0, pad=1)
                ax.set_xticks([]) if r < rows - 1 else _ticks(ax, "x", keys, cell, size)
                ax.set_yticks([]) if c > 0 else _ticks(ax, "y", queries, cell, size)
        fig.suptitle(plain(heading), y=1 - 0.15 / height, va="top", fontsize=11)
        bar_h = min(panels_h, 4.0)                                          # beside the first rows
        bar = fig.add_axes(((left + panels_w + 0.15) / width, (height - top - bar_h) / height, 0.15 / width,
                            bar_h / height))
        fig.colorbar(image, cax=bar, label="probability (sqrt scale)")
    return Path(path)
