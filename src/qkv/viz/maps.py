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
from .output import plain, png_figure
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
    """A font size (points) that fits n labels along ``room`` inches."""
    return max(4.0, min(9.0, 0.8 * 72 * room / max(n, 1)))


def _single(amap: AttentionMap, path, layer: int, head: int, title: str) -> Path:
    probs_LM = amap.layers[layer][head].numpy()
    L, M = probs_LM.shape
    side = min(max(0.28 * max(L, M), 3.5), 14.0)
    with png_figure(path, side * M / max(L, M) + 2.2, side * L / max(L, M) + 1.6) as fig:
        ax = fig.subplots()
        image = ax.imshow(probs_LM, cmap=CMAP, norm=_norm(), interpolation="nearest", aspect="auto")
        size = _label_size(max(L, M), side)
        ax.set_xticks(range(M), [plain(t) for t in amap.keys], rotation=90, fontsize=size)
        ax.set_yticks(range(L), [plain(t) for t in amap.queries], fontsize=size)
        ax.set_xlabel("key (attended to)")
        ax.set_ylabel("query (attending)")
        ax.set_title(plain(f"{title + ': ' if title else ''}{amap.name}, layer {layer}, head {head}"))
        if max(L, M) <= 16:                              # small enough to print every probability
            for q in range(L):
                for k in range(M):
                    ax.text(k, q, f"{probs_LM[q, k]:.2f}", ha="center", va="center", fontsize=size * 0.8,
                            color="white" if probs_LM[q, k] > 0.5 else "black")
        fig.colorbar(image, ax=ax, shrink=0.8, label="probability (square-root scale)")
    return Path(path)


def _grid(amap: AttentionMap, path, layers: list[int], heads: list[int], title: str) -> Path:
    L, M = len(amap.queries), len(amap.keys)
    rows, cols = len(layers), len(heads)
    cell = min(max(0.13 * max(L, M), 1.2), 4.0, 32.0 / cols)      # inches per panel, at most ~32 in wide
    margin = 0.9 + 0.045 * max(len(t) for t in amap.queries + amap.keys)   # room for the token labels
    width, height = cols * cell + margin + 1.2, rows * cell + margin + 0.6
    with png_figure(path, width, height, layout=None) as fig:      # a fixed grid: constrained layout is slow
        axes = fig.subplots(rows, cols, squeeze=False)
        fig.subplots_adjust(left=margin / width, bottom=margin / height, right=1 - 1.2 / width,
                            top=1 - 0.6 / height, wspace=0.08, hspace=0.25)
        size = _label_size(max(L, M), cell)
        keys, queries = [plain(t) for t in amap.keys], [plain(t) for t in amap.queries]
        for r, layer in enumerate(layers):
            for c, head in enumerate(heads):
                ax = axes[r][c]
                image = ax.imshow(amap.layers[layer][head].numpy(), cmap=CMAP, norm=_norm(),
                                  interpolation="nearest", aspect="auto")
                ax.set_title(f"L{layer} H{head}", fontsize=7, pad=2)
                ax.tick_params(length=0, pad=1)
                ax.set_xticks([]) if r < rows - 1 else ax.set_xticks(range(M), keys, rotation=90, fontsize=size)
                ax.set_yticks([]) if c > 0 else ax.set_yticks(range(L), queries, fontsize=size)
        fig.suptitle(plain(f"{title + ': ' if title else ''}{amap.name} (rows: query tokens, columns: key tokens)"))
        bar = fig.add_axes((1 - 1.0 / width, 0.25, 0.15 / width, 0.5))
        fig.colorbar(image, cax=bar, label="probability (sqrt scale)")
    return Path(path)
