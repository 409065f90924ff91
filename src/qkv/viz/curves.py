"""Training curves from run directories: train and validation loss per step, several runs overlaid.

Each run directory of ``qkv train`` / ``qkv finetune`` has ``metrics.jsonl``, one JSON object per
evaluation (``step``, ``elapsed_s``, ``tokens``, ``train_loss``, ``val_loss``, ``lr``). One colour per run;
validation solid, training dashed; the best validation loss of each run is marked.

    >>> plot_curves(["runs/a", "runs/b"], "curves.png", x="tokens")                  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

from ..errors import InputError
from .output import plain, png_figure, text_inches, wrap

X_AXES = {"step": "step", "tokens": "tokens", "time": "elapsed_s"}
X_LABELS = {"step": "optimizer step", "tokens": "training tokens", "time": "seconds of training"}


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The rows of ``run_dir/metrics.jsonl``; an error naming the fix when there are none."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise InputError(f"{run_dir} does not exist; check the path (a run directory written by qkv train or "
                         f"qkv finetune)")
    path = run_dir / "metrics.jsonl" if run_dir.is_dir() else run_dir
    if not path.is_file():
        raise InputError(f"{run_dir} has no metrics.jsonl; point at a run directory written by qkv train "
                         f"or qkv finetune")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise InputError(f"{path}:{n} is not a JSON object; fix or delete that line") from None
        if isinstance(row, dict):
            rows.append(row)
    if not rows:
        raise InputError(f"{path} holds no evaluations yet; train longer than one --eval-interval")
    return rows


def _labels(run_dirs: Sequence[str | Path]) -> list[str]:
    """Each run's folder name, or its whole path where two runs share a name."""
    names = [Path(d).name or str(d) for d in run_dirs]
    return [str(d) if names.count(n) > 1 else n for d, n in zip(run_dirs, names)]


def _series(rows: list[dict], x_key: str, y_key: str) -> tuple[list[float], list[float]]:
    points = [(r[x_key], r[y_key]) for r in rows
              if isinstance(r.get(x_key), (int, float)) and isinstance(r.get(y_key), (int, float))
              and math.isfinite(r[y_key])]
    return [p[0] for p in points], [p[1] for p in points]


def plot_curves(run_dirs: Sequence[str | Path], path: str | Path, x: str = "step", log_y: bool = False,
                title: str = "") -> Path:
    """Write train (dashed) and validation (solid) loss of every run to one PNG."""
    if x not in X_AXES:
        raise InputError(f"x axis {x!r} is not one of {sorted(X_AXES)}")
    if not run_dirs:
        raise InputError("no run directories given; pass one or more")
    runs = [(wrap(label, 6.0, 8), read_metrics(d)) for label, d in zip(_labels(run_dirs), run_dirs)]
    # The legend stands outside the axes, on the right, so it never hides a curve: the figure widens by it
    # (a run's name longer than 6 inches, a whole path where two runs share a name, wraps).
    # Each run's best validation loss is in its legend entry (marked on the curve by a star), not printed
    # beside the point, where the labels of runs that end close together would overlap and run off the edge.
    legend = text_inches([plain(f"{label} val, best 0.000") for label, _ in runs], 8) + 0.8   # + the line
    width = 6.5 + legend
    with png_figure(path, width, 4.8) as fig:
        ax = fig.subplots()
        for i, (label, rows) in enumerate(runs):
            color = f"C{i % 10}"
            xs, ys = _series(rows, X_AXES[x], "train_loss")
            ax.plot(xs, ys, "--", color=color, alpha=0.7, label=plain(f"{label} train"))
            xs, ys = _series(rows, X_AXES[x], "val_loss")
            best = min(range(len(ys)), key=ys.__getitem__, default=None)
            note = "" if best is None else f", best {ys[best]:.3f}"
            ax.plot(xs, ys, "-", color=color, marker="o", markersize=3, label=plain(f"{label} val{note}"))
            if best is not None:
                ax.plot(xs[best], ys[best], "*", color=color, markersize=11, markeredgecolor="white")
        ax.set_xlabel(X_LABELS[x])
        ax.set_ylabel("cross-entropy loss (nats/token)")
        if x == "tokens":                                  # 3M, not 3 with "1e6" by the axis' end
            from matplotlib.ticker import EngFormatter
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        if log_y:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        fig.legend(fontsize=8, loc="outside right upper")
        ax.set_title(plain(wrap(title or "training curves", width - legend - 1.0, 10)))
    return Path(path)

