"""The next token, for real: the top candidates with their logits and probabilities, and the logit lens.

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
from .output import plain, png_figure
from .read import Inputs, encode_inputs, family, residuals, token_label, tokenizer_of, unembed


@dataclass
class Candidate:
    token: str                           # as ``token_label`` shows it
    id: int
    logit: float
    prob: float


@dataclass
class NextTokens:
    context: list[str]                   # the tokens read (labels)
    position: int                        # where the prediction is read
    top: list[Candidate]                 # the model's own prediction, best first
    reads: str                           # "next token" or "masked token"
    layers: list[str] | None = None      # logit lens rows: "embeddings", "layer 1", ...
    lens: list[list[Candidate]] | None = None      # per row: top candidates at ``position``
    lens_top1: list[list[Candidate]] | None = None  # per row, per position: the top-1 candidate


def _top(tokenizer, logits_V: torch.Tensor, k: int) -> list[Candidate]:
    probs_V = logits_V.float().softmax(-1)
    values, ids = logits_V.float().topk(min(k, logits_V.shape[-1]))
    return [Candidate(token_label(tokenizer, i), i, v, float(probs_V[i])) for v, i in zip(values.tolist(),
                                                                                          ids.tolist())]


def _position(model, inputs: Inputs) -> int:
    if family(model) != "encoder":
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
    keep_end = family(model) != "encoder"        # the newest context predicts the next token
    inputs = encode_inputs(model, text, source, truncate, keep_end)
    position = _position(model, inputs)
    stream = residuals(model, inputs)
    head_logits_LV = unembed(model, stream.hidden[-1])   # the lens at the last layer = the model's logits
    reads = "masked token" if family(model) == "encoder" else "next token"
    result = NextTokens(inputs.labels, position, _top(tokenizer, head_logits_LV[position], top), reads)
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
        lines.append(f"{rank:>4}  {quoted(c.token):<16} {c.logit:>9.3f} {c.prob:>8.4f}")
    if result.lens is not None:
        width = max(len(n) for n in result.layers)
        lines += ["", f"logit lens at token {result.position} ({quoted(result.context[result.position])}): "
                      f"top 5 per layer"]
        for name, row in zip(result.layers, result.lens):
            lines.append(f"{name:<{width}}  " + "  ".join(f"{quoted(c.token)} {c.prob:.3f}" for c in row[:5]))
    return "\n".join(lines)


def plot_next(result: NextTokens, path: str | Path, title: str = "") -> Path:
    """A bar chart of the top candidates' probabilities (with their logits); with the lens, a second panel:
    layers x positions, each cell the top-1 token read at that layer, coloured by its probability."""
    has_lens = result.lens_top1 is not None
    shown = list(range(max(0, len(result.context) - 40), len(result.context)))   # at most 40 positions
    width = max(7.0, 0.55 * len(shown) + 2.5) if has_lens else 7.0
    height = 0.32 * len(result.top) + 1.4 + (0.36 * len(result.layers) + 1.6 if has_lens else 0)
    with png_figure(path, width, height) as fig:
        if has_lens:
            bars, grid = fig.subplots(2, 1, height_ratios=[0.32 * len(result.top) + 1,
                                                            0.36 * len(result.layers) + 1.2])
        else:
            bars = fig.subplots()
        labels = [plain(quoted(c.token)) for c in result.top][::-1]
        probs = [c.prob for c in result.top][::-1]
        bars.barh(range(len(labels)), probs, color="#1f5fa8")
        bars.set_yticks(range(len(labels)), labels)
        for y, c in enumerate(result.top[::-1]):
            bars.text(c.prob, y, f"  logit {c.logit:.2f}, p {c.prob:.3f}", va="center", fontsize=8)
        bars.set_xlim(0, min(1.0, max(probs) * 1.6 + 0.05))
        bars.set_xlabel(f"probability of the {result.reads}")
        context = "".join(result.context[max(0, result.position - 30):result.position + 1])
        bars.set_title(plain(f"{title + ': ' if title else ''}after ...{quoted(context)}"))
        if has_lens:
            probs_RP = torch.tensor([[row[p].prob for p in shown] for row in result.lens_top1])
            grid.imshow(probs_RP.numpy(), cmap="Blues", vmin=0, vmax=1, aspect="auto", origin="lower",
                        interpolation="nearest")
            for r, row in enumerate(result.lens_top1):
                for x, p in enumerate(shown):
                    grid.text(x, r, plain(row[p].token[:6]), ha="center", va="center", fontsize=7,
                              color="white" if row[p].prob > 0.5 else "black")
            grid.set_yticks(range(len(result.layers)), result.layers)
            grid.set_xticks(range(len(shown)), [plain(result.context[p]) for p in shown], rotation=90)
            grid.set_xlabel("input token (each cell: what that layer predicts there)")
            grid.set_title("logit lens: colour = probability of the cell's token")
    return Path(path)

