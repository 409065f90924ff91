"""The interactive attention viewer: one self-contained HTML page, no network, no CDN.

The page (``viewer.html`` beside this file) holds its data and its code inline: pick the kind of attention
(encoder self-, decoder self- or cross-attention for an encoder-decoder), a layer and a head (or the mean
of the heads); hover a query token to see the lines to the keys it attends to, its row of the matrix
outlined, and the keys shaded by probability. The matrix takes the window's room (a colour scale beside the
controls, a cell-size slider); a long text scrolls inside its box, its token labels kept in view, rather than
shrinking cells below legibility. Its Content-Security-Policy forbids every request, so it
opens from a file, an e-mail attachment or an air-gapped machine alike.

The probabilities travel as little-endian uint16 (p x 65535, a resolution of 1.5e-5) in base64: a third of
the size of decimal JSON for the same precision as the colours can show.
"""

from __future__ import annotations

import base64
import json
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from .output import check_suffix, write_text_atomic
from .read import AttentionMap


def _pack(amap: AttentionMap) -> dict:
    probs_NHLM = torch.stack(amap.layers)               # layers x heads x queries x keys
    levels = (probs_NHLM.clamp(0, 1) * 65535).round().to(torch.int32).numpy().astype("<u2")
    return {"name": amap.name, "queries": amap.queries, "keys": amap.keys, "layers": amap.n_layers,
            "heads": amap.n_heads, "probs": base64.b64encode(np.ascontiguousarray(levels).tobytes()).decode()}


def render_html(maps: list[AttentionMap], title: str, subtitle: str = "") -> str:
    """The page's HTML text for ``maps`` (one entry per kind of attention)."""
    data = json.dumps({"title": title, "subtitle": subtitle, "maps": [_pack(m) for m in maps]},
                      ensure_ascii=False)
    # Inside <script>, "</script>" in a token would end the element: escape every "<" (JSON allows \u003c).
    data = data.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    template = resources.files(__package__).joinpath("viewer.html").read_text(encoding="utf-8")
    return template.replace("__QKV_DATA__", data)


def write_html(maps: list[AttentionMap], path: str | Path, title: str, subtitle: str = "") -> Path:
    path = check_suffix(path, [".html", ".htm"], "the attention viewer")
    return write_text_atomic(path, render_html(maps, title, subtitle))
