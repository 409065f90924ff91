"""`qkv plot RUN_DIR... --out curves.png`: training and validation loss curves, several runs overlaid.

    qkv plot runs/shakespeare-char --out curves.png
    qkv plot runs/a runs/b runs/c --x tokens --log-y --out compare.png

Reads each run's metrics.jsonl (written by qkv train and qkv finetune).
"""

from __future__ import annotations


def add_arguments(p) -> None:
    from ..viz.curves import X_AXES
    from .flags import add_overwrite_argument, path_arg
    p.add_argument("runs", nargs="+", type=path_arg, metavar="RUN_DIR", help="run directories holding metrics.jsonl")
    p.add_argument("--out", default="curves.png", type=path_arg, metavar="FILE.png",
                   help="the PNG to write (default curves.png)")
    add_overwrite_argument(p, "--out")
    p.add_argument("--x", choices=list(X_AXES), default="step", help="the x axis (default step)")
    p.add_argument("--log-y", action="store_true", help="a logarithmic loss axis")
    p.add_argument("--title", default="", help="the figure's title")


def run(args) -> int:
    from ..rundir import claim_out_file
    from ..viz.curves import plot_curves
    from ..viz.output import check_suffix, require_png

    check_suffix(args.out, [".png"], "training curves")
    claim_out_file(args.out, args.overwrite, "--out", reads=args.runs)
    require_png("qkv plot")
    plot_curves(args.runs, args.out, args.x, args.log_y, args.title)
    print(f"wrote {args.out} ({len(args.runs)} run{'s' if len(args.runs) > 1 else ''})")
    return 0
