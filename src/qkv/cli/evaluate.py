"""`qkv evaluate DIR [--data FILE]`: score a fine-tuned checkpoint on a task's eval file.

    qkv evaluate runs/sst2 --data ../shared/data/sst2/test.tsv
    qkv evaluate runs/squad                        # the run's own eval data (squad: its held-out articles)

The task comes from the checkpoint (``qkv finetune`` saves it; --task names it for other checkpoints).
Prints the metrics and writes OUT/eval.json and OUT/predictions.json(l) (OUT defaults to DIR/evaluate).
"""

from __future__ import annotations

from pathlib import Path

from ..tasks import TASKS
from .flags import path_arg, value_parser


def add_arguments(p) -> None:
    p.add_argument("checkpoint", type=path_arg, metavar="DIR", help="a `qkv finetune` run directory")
    p.add_argument("--data", type=path_arg, metavar="FILE", help="eval file in the task's format (default: the run's eval data)")
    p.add_argument("--task", choices=list(TASKS), help="the task, for checkpoints saved without one")
    p.add_argument("--out-dir", type=path_arg, metavar="OUT", help="where eval.json and the predictions go (default DIR/evaluate)")
    p.add_argument("--batch-size", type=value_parser(int, "--batch-size"), help="inputs per forward pass")


def run(args) -> int:
    import dataclasses

    from ..errors import InputError
    from ..rundir import check_writable
    from ..train.finetune import evaluate, load_finetuned, write_outputs
    from ._common import require_family
    from .finetune import _summary

    out = Path(args.out_dir) if args.out_dir else Path(args.checkpoint) / "evaluate"
    if out.exists() and not out.is_dir():
        raise InputError(f"--out-dir {out} is a file; give a folder for eval.json and the predictions")
    check_writable(out, "--out-dir")
    require_family(args.checkpoint, "evaluate", "fine-tuned encoder")
    model, fcfg = load_finetuned(args.checkpoint, args.task, args.data)
    if args.batch_size:
        fcfg = dataclasses.replace(fcfg, eval_batch_size=args.batch_size)
    report, predictions = evaluate(model, fcfg, args.data or fcfg.eval_data)
    report["checkpoint"] = str(args.checkpoint)
    write_outputs(out, fcfg, report, predictions)
    print(_summary(report, out))
    return 0
