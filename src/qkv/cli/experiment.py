"""`qkv experiment NAME [--quick]`: run an experiment that tests an architectural argument; write its report.

    qkv experiment long-range                   # attention vs LSTM vs tanh RNN on a token d back (~10 min)
    qkv experiment prenorm-warmup --quick       # a smaller version in under a minute
    qkv experiment all --out-dir docs/experiments

Each writes OUT_DIR/report.md with its figures, configuration and seed (default OUT_DIR:
runs/experiments/NAME; with `all`, one folder per experiment inside --out-dir).
"""

from __future__ import annotations

from pathlib import Path

from .flags import path_arg, positive_int, value_parser


def add_arguments(p) -> None:
    from ..experiments import EXPERIMENTS
    p.add_argument("name", metavar="NAME", help=f"one of {', '.join(EXPERIMENTS)}, or all")
    p.add_argument("--quick", action="store_true", help="a small version that finishes in under a minute")
    p.add_argument("--out-dir", type=path_arg, metavar="DIR",
                   help="where the report goes (default runs/experiments/NAME)")
    p.add_argument("--seed", type=value_parser(int, "--seed", minimum=0),
                   help="random seed (default: the experiment's, 0)")
    p.add_argument("--threads", type=positive_int("--threads"), help="torch threads (default: torch's)")


def run(args) -> int:
    import torch

    from ..experiments import EXPERIMENTS, experiment_module, run_experiment

    names = list(EXPERIMENTS) if args.name == "all" else [args.name]
    for name in names:
        experiment_module(name)                   # an unknown name fails before anything runs
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    base = Path(args.out_dir) if args.out_dir else Path("runs/experiments")
    for name in names:
        out_dir = base / name if (args.name == "all" or not args.out_dir) else base
        run_experiment(name, out_dir, args.quick, args.seed)
        print(f"wrote {out_dir / 'report.md'}")
    return 0
