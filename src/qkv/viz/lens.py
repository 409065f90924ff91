"""The next token, for real: the top candidates with their logits and probabilities, and the logit lens.

Legend: L length, C d_model, V vocab, Z the lens' rows (the embeddings, then each block), P the positions shown.

    "The capital of France is" ─> model ─> logits_V ─> softmax ─>  " Paris"  12.3  0.82
                                                                    " the"     9.8  0.07  ...

The logit lens (nostalgebraist, 2020) reads the same prediction off every layer: the residual stream after
the embeddings and after each block goes through the model's final norm and output head, as if the
network stopped there. The last row is the model's own output (a test holds them equal). Where the
answer first appears shows how many layers the model needed to form it.

Where the prediction is read: a decoder's last token (the next token); an encoder-decoder's last target
token, with the source encoded; a masked-LM encoder's first ``[MASK]`` (the token that fills it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import InputError
from .output import plain, png_figure, text_inches, wrap
from ..family import Family
from .read import Inputs, encode_inputs, residuals, stack_family, token_label, tokenizer_of, unembed


@dataclass
class Candidate:
    token: str                           # the token's text, as the tokenizer decodes it
    label: str                           # as a person reads it (``token_label``: a space shows as ␣)
    id: int
    logit: float
    prob: float


@dataclass
class NextTokens:
    context: list[str]                   # the tokens read, their text
    labels: list[str]                    # the same, as ``token_label`` shows them
    position: int                        # where the prediction is read
    top: list[Candidate]                 # the model's own prediction, best first
    reads: str                           # "next token" or "masked token"
    layers: list[str] | None = None      # logit lens rows: "embeddings", "layer 1", ...
    lens: list[list[Candidate]] | None = None      # per row: top candidates at ``position``
    lens_top1: list[list[Candidate]] | None = None  # per row, per position: the top-1 candidate


def _top(tokenizer, logits_V: torch.Tensor, k: int) -> list[Candidate]:
    probs_V = logits_V.float().softmax(-1)
    values, ids = logits_V.float().topk(min(k, logits_V.shape[-1]))
    return [Candidate(tokenizer.decode([i]), token_label(tokenizer, i), i, v, float(probs_V[i]))
            for v, i in zip(values.tolist(), ids.tolist())]


def _position(model, inputs: Inputs) -> int:
    if stack_family(model) != Family.ENCODER:
        return len(inputs.ids) - 1
    mask_id = tokenizer_of(model).mask_id
    if mask_id is None or mask_id not in inputs.ids:
        raise InputError("an encoder predicts masked tokens, not the next one: put [MASK] in the text "
                         "(e.g. --text \"The capital of France is [MASK].\")")
    return inputs.ids.index(mask_id)


@torch.no_grad()
def next_tokens(model, text: str, top: int = 10, source: str | None = None, truncate: bool = False,
                lens: bool = False) -> NextTokens:
    """The ``top`` next tokens after ``text`` (and with ``lens``, the same read off every layer)."""
    if top < 1:
        raise InputError(f"top={top} must be a positive number of tokens")
    tokenizer = tokenizer_of(model)
    keep_end = stack_family(model) != Family.ENCODER        # the newest context predicts the next token
    inputs = encode_inputs(model, text, source, truncate, keep_end)
    position = _position(model, inputs)
    stream = residuals(model, inputs)
    head_logits_LV = unembed(model, stream.hidden[-1])   # the lens at the last layer = the model's logits
    reads = "masked token" if stack_family(model) == Family.ENCODER else "next token"
    result = NextTokens([tokenizer.decode([i]) for i in inputs.ids], inputs.labels, position,
                        _top(tokenizer, head_logits_LV[position], top), reads)
    if lens:
        per_row_LV = [unembed(model, h_LC) for h_LC in stream.hidden]
        result.layers = stream.names
        result.lens = [_top(tokenizer, logits_LV[position], top) for logits_LV in per_row_LV]
        result.lens_top1 = [[_top(tokenizer, logits_V, 1)[0] for logits_V in logits_LV]
                            for logits_LV in per_row_LV]
    return result


def quoted(token: str) -> str:
    """A token label in quotes (labels already show whitespace, so repr's escaping would double it)."""
    return f"'{token}'"


def format_table(result: NextTokens) -> str:
    """The seeds' table: rank, token, logit, probability; then the lens rows when present."""
    lines = [f"{'rank':>4}  {'token':<16} {'logit':>9} {'prob':>8}"]
    for rank, c in enumerate(result.top, 1):
        lines.append(f"{rank:>4}  {quoted(c.label):<16} {c.logit:>9.3f} {c.prob:>8.4f}")
    if result.lens is not None:
        width = max(len(n) for n in result.layers)
        lines += ["", f"logit lens at token {result.position} ({quoted(result.labels[result.position])}): "
                      f"top 5 per layer"]
        for name, row in zip(result.layers, result.lens):
            lines.append(f"{name:<{width}}  " + "  ".join(f"{quoted(c.label)} {c.prob:.3f}" for c in row[:5]))
    return "\n".join(lines)


# The lens grid is sized from what it shows: a column as wide as its longest token (up to CELL_CHARS
# characters; a longer one ends in "…"), as many columns as fit MAX_WIDTH inches (at most MAX_POSITIONS).
CELL_CHARS, CELL_SIZE, MAX_POSITIONS, MAX_WIDTH = 12, 7.0, 40, 26.0


def _short(label: str, n: int = CELL_CHARS) -> str:
    return label if len(label) <= n else label[:n - 1] + "…"


def _window(position: int, length: int, n: int) -> range:
    """``n`` positions around ``position``: those before it, and after it (an encoder's [MASK]) up to half."""
    after = min(length - 1 - position, n // 2)
    start = max(0, position + after + 1 - n)
    return range(start, min(length, start + n))


def plot_next(result: NextTokens, path: str | Path, title: str = "") -> Path:
    """A bar chart of the top candidates' probabilities (with their logits); with the lens, a second panel:
    layers x positions, each cell the top-1 token read at that layer, coloured by its probability."""
    has_lens = result.lens_top1 is not None
    bars_h = 0.3 * len(result.top) + 1.0
    width, shown, cell = 7.0, range(0), 0.0
    if has_lens:
        cells = [_short(row[p].label) for row in result.lens_top1 for p in range(len(result.context))]
        cell = max(0.3, text_inches(cells, CELL_SIZE) + 0.1)
        room = MAX_WIDTH - text_inches(result.layers) - 1.6                 # row names, colour bar
        shown = _window(result.position, len(result.context), max(1, min(MAX_POSITIONS, int(room / cell))))
        width = max(width, cell * len(shown) + text_inches(result.layers) + 1.6)
    ticks = max(text_inches([_short(result.labels[p]) for p in shown]), 0.3) if has_lens else 0.0
    height = bars_h + 0.5 + (0.28 * len(result.layers) + ticks + 0.9 if has_lens else 0)
    with png_figure(path, width, height) as fig:          # constrained layout: room for every label
        top = fig
        if has_lens:
            top, bottom = fig.subfigures(2, 1, height_ratios=[bars_h + 0.5, height - bars_h - 0.5])
            _lens(bottom.subplots(), result, shown)
        _bars(top.subplots(), result)
        # The (sub)figure's title, centred on its width (the bars' axes sit off centre, between two labels).
        top.suptitle(plain(wrap(f"{title + ': ' if title else ''}after ...{quoted(_context(result))}", width - 0.4,
                                10)), fontsize=10)
    return Path(path)


def _context(result: NextTokens) -> str:
    return "".join(result.labels[max(0, result.position - 30):result.position + 1])


def _bars(ax, result: NextTokens) -> None:
    """The top candidates, best on top; each bar's logit and probability as labels on the right."""
    top = result.top[::-1]
    ax.barh(range(len(top)), [c.prob for c in top], color="#1f5fa8")
    ax.set_yticks(range(len(top)), [plain(quoted(_short(c.label, 24))) for c in top])
    ax.set_xlim(0, max(c.prob for c in top) * 1.05)
    ax.set_ylim(-0.6, len(top) - 0.4)
    numbers = ax.twinx()                                   # ticks, so the layout makes room for them
    numbers.set_ylim(ax.get_ylim())
    numbers.set_yticks(range(len(top)), [f"logit {c.logit:.2f}  p {c.prob:.3f}" for c in top], fontsize=8)
    numbers.tick_params(length=0)
    ax.set_xlabel(f"probability of the {result.reads}")


def _lens(ax, result: NextTokens, shown: range) -> None:
    probs_ZP = torch.tensor([[row[p].prob for p in shown] for row in result.lens_top1])
    image = ax.imshow(probs_ZP.numpy(), cmap="Blues", vmin=0, vmax=1, aspect="auto", origin="lower",
                      interpolation="nearest")
    for r, row in enumerate(result.lens_top1):
        for x, p in enumerate(shown):
            ax.text(x, r, plain(_short(row[p].label)), ha="center", va="center", fontsize=CELL_SIZE,
                    color="white" if row[p].prob > 0.5 else "black")
    ax.set_yticks(range(len(result.layers)), result.layers)
    ax.set_xticks(range(len(shown)), [plain(_short(result.labels[p])) for p in shown], rotation=90)
    ax.get_xticklabels()[shown.index(result.position)].set_fontweight("bold")     # where the answer is read
    ax.set_xlabel(f"input token (each cell: what that layer predicts there; bold: token {result.position})")
    ax.set_title("logit lens: the top token read off each layer")
    ax.figure.colorbar(image, ax=ax, label="probability", shrink=0.9, pad=0.01)
