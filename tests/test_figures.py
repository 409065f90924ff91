"""Every PNG at the sizes people make it: no text off the figure, on another text, or on a panel not its own.

The issue-20 pictures: an attention grid's title across its first row of panels, a next.png title cut by a
long path, logit-lens cells cut to 5 characters, the best-loss labels of training curves off the right edge.
Sizes: one head, 30 layers x 9 heads (SmolLM2-135M), 128-token texts, BPE tokens, long names.

The check runs inside matplotlib's own save: Figure.draw and Text.draw are wrapped, so the boxes are those
of the texts the renderer really drew (not ticks outside the view), at the resolution of the saved file.
"""

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")      # the plots extra; .ci/run (CI=true) fails a skipped test

from matplotlib.figure import Figure  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from qkv.viz.curves import plot_curves  # noqa: E402
from qkv.viz.lens import Candidate, NextTokens, plot_next  # noqa: E402
from qkv.viz.maps import plot_attention  # noqa: E402
from qkv.viz.read import AttentionMap  # noqa: E402

WORDS = ["First", "␣Citizen", ":", "\\n", "Before", "␣we", "␣proceed", "␣any", "␣further", ",", "␣hear", "␣me",
         "<|endoftext|>", "$5", "␣$", "é", "␣Marcius", "W"]


def tokens(n: int) -> list[str]:
    return [WORDS[i % len(WORDS)] for i in range(n)]


def random_map(name: str, layers: int, heads: int, queries: int, keys: int) -> AttentionMap:
    torch.manual_seed(0)
    probs = [(3 * torch.randn(heads, queries, keys)).softmax(-1) for _ in range(layers)]
    return AttentionMap(name, tokens(queries), tokens(keys)[::-1], probs)


def overlap(a, b, slack: float = 1.0) -> bool:
    return min(a.x1, b.x1) - max(a.x0, b.x0) > slack and min(a.y1, b.y1) - max(a.y0, b.y0) > slack


def layout_problems(fig, renderer, texts: list[Text]) -> list[str]:
    """What a person would see as broken: a text cut by the figure's edge, two texts on each other, a text on
    another panel (a title over the first row, a tick label inside its neighbour)."""
    problems, frame = [], fig.bbox
    boxes = [t.get_window_extent(renderer) for t in texts]
    for t, b in zip(texts, boxes):
        if b.x0 < frame.x0 - 1 or b.y0 < frame.y0 - 1 or b.x1 > frame.x1 + 1 or b.y1 > frame.y1 + 1:
            problems.append(f"{t.get_text()!r} runs off the figure ({b.bounds} outside {frame.bounds})")
        for ax in fig.axes:
            if ax is not t.axes and ax.bbox.bounds != getattr(t.axes, "bbox", frame).bounds and overlap(b, ax.bbox):
                problems.append(f"{t.get_text()!r} lies on another panel ({ax.get_title()!r})")
    corners = np.array([[b.x0, b.y0, b.x1, b.y1] for b in boxes]).reshape(-1, 4)
    for i in range(len(texts)):
        w = np.minimum(corners[i, 2], corners[i + 1:, 2]) - np.maximum(corners[i, 0], corners[i + 1:, 0])
        h = np.minimum(corners[i, 3], corners[i + 1:, 3]) - np.maximum(corners[i, 1], corners[i + 1:, 1])
        for j in np.flatnonzero((w > 1) & (h > 1)):
            problems.append(f"{texts[i].get_text()!r} overlaps {texts[i + 1 + j].get_text()!r}")
    return problems[:20]


@pytest.fixture
def drawn(monkeypatch):
    """Each saved figure's problems, and the texts it drew."""
    saved = []
    texts: list[Text] = []
    draw_text, draw_figure = Text.draw, Figure.draw

    def text(self, renderer):
        draw_text(self, renderer)
        if self.get_visible() and self.get_text().strip():
            texts.append(self)

    def figure(self, renderer):
        texts.clear()
        draw_figure(self, renderer)
        saved.append((layout_problems(self, renderer, list(texts)), [t.get_text() for t in texts]))

    monkeypatch.setattr(Text, "draw", text)
    monkeypatch.setattr(Figure, "draw", figure)
    return saved


def assert_laid_out(drawn):
    assert drawn, "nothing was saved"
    problems, _ = drawn[-1]
    assert problems == []


LONG_TITLE = "/home/someone/projects/experiments/2024/runs/shakespeare-char-rope-swiglu-long-name-2 (decoder)"


@pytest.mark.parametrize("layers,heads,n,layer,head", [
    (1, 1, 12, None, None),             # one head: the single map, probabilities printed in the cells
    (2, 1, 13, None, None),             # a one-head preset's grid: one column, a title wider than it
    (30, 9, 20, None, None),            # SmolLM2-135M: 270 panels
    (30, 9, 128, None, 2),              # one head's 30 layers: a column, tall
    (30, 9, 128, 3, None),              # one layer's 9 heads: a row
    (4, 4, 128, 1, 2),                  # a long text in one map
])
def test_attention_png_is_laid_out(drawn, tmp_path, layers, heads, n, layer, head):
    amap = random_map("self-attention", layers, heads, n, n)
    plot_attention(amap, tmp_path / "a.png", layer, head, title=LONG_TITLE)
    assert_laid_out(drawn)
    _, texts = drawn[-1]
    assert any("long-name" in t for t in texts)                   # the title is drawn, wrapped, not dropped


def test_cross_attention_png_at_128_target_tokens(drawn, tmp_path):
    plot_attention(random_map("cross-attention", 6, 8, 128, 100), tmp_path / "cross.png", title="multi30k")
    assert_laid_out(drawn)


def lens_result(layers: int, length: int, top: int = 10) -> NextTokens:
    torch.manual_seed(0)
    context = tokens(length)

    def candidate(i: int) -> Candidate:
        label = WORDS[i % len(WORDS)]
        return Candidate(label.replace("␣", " "), label, i, float(torch.randn(())), float(torch.rand(())))
    names = ["embeddings"] + [f"layer {i + 1}" for i in range(layers)]
    return NextTokens([t.replace("␣", " ") for t in context], context, length - 1,
                      [candidate(i) for i in range(top)], "next token", names,
                      [[candidate(i) for i in range(top)] for _ in names],
                      [[candidate(r + p) for p in range(length)] for r in range(len(names))])


@pytest.mark.parametrize("layers,length,lens", [(1, 5, True), (2, 30, True), (30, 200, True), (2, 30, False)])
def test_next_png_is_laid_out_and_shows_whole_tokens(drawn, tmp_path, layers, length, lens):
    result = lens_result(layers, length)
    if not lens:
        result.layers = result.lens = result.lens_top1 = None
    plot_next(result, tmp_path / "next.png", title=LONG_TITLE)
    assert_laid_out(drawn)
    _, texts = drawn[-1]
    if lens and length >= 30:                 # the lens cells hold whole tokens: "␣proceed" was "␣proc"
        assert "␣proceed" in texts and "<|endoftext|>"[:11] + "…" in texts


def test_an_encoders_mask_is_in_the_lens_window(drawn, tmp_path):
    result = lens_result(4, 200)
    result.position = 20                                       # a [MASK] early in a long text
    plot_next(result, tmp_path / "next.png")
    assert_laid_out(drawn)


@pytest.mark.parametrize("names,x,log_y,title", [
    (["a"], "step", False, ""),
    (["shakespeare-char-rope-swiglu-lr3e-4-long-name", "b", "shakespeare-char-2"], "tokens", True, "x " * 80),
    (["x" * 120, "y"], "time", False, ""),                      # a name longer than the figure wraps
])
def test_training_curves_are_laid_out(drawn, tmp_path, names, x, log_y, title):
    import json
    runs = []
    for i, name in enumerate(names):
        run = tmp_path / name
        run.mkdir()
        rows = [{"step": s, "elapsed_s": s / 10, "tokens": s * 6_400_000, "train_loss": (1 + i / 10) * 4 / (1 + s / 50),
                 "val_loss": (1 + i / 10) * 4.2 / (1 + s / 50)} for s in range(0, 5000, 250)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        runs.append(run)
    plot_curves(runs, tmp_path / "curves.png", x=x, log_y=log_y, title=title)
    assert_laid_out(drawn)
    _, texts = drawn[-1]
    assert any("best" in t for t in texts)
