"""What several commands share: up-front checks (the checkpoint is of a family the command runs, the
optional packages the command will need are there) that run before any slow work, so a mistake costs a second,
not a training run; and the default run directory of a training command (named after its data). (Where outputs
may be written is ``qkv.rundir``'s: ``claim_out_dir`` and ``claim_out_file``.)"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from ..config import TrainConfig, load_config_file
from ..errors import CheckpointError, article
from ..family import Family
from ..rundir import free_dir

# what a person can run on each family instead
USES = {Family.DECODER: "`qkv generate` or `qkv eval`",
        Family.ENCODER: "`qkv embed`, or `qkv finetune --init DIR` to train a task head on it",
        Family.FINETUNED_ENCODER: "`qkv predict` or `qkv evaluate`",
        Family.FINETUNED_DECODER: "`qkv.load` in Python (its scores are the run's eval.json)",
        Family.ENCODER_DECODER: "`qkv translate`",
        Family.IMAGE_CLASSIFIER: "`qkv predict --image` or `qkv evaluate`"}


def require_family(path: str | Path, command: str, *families: Family) -> Family:
    """The checkpoint's family, or a one-line error naming the command that fits it."""
    from ..loading import family_of, model_type_of
    found, model_type = family_of(path), model_type_of(path)
    if found not in families:
        raise CheckpointError(f"{path} holds {article(found)} model ({model_type}); qkv {command} needs "
                              f"{' or '.join(article(f) for f in families)}: use {USES[found]} for this one")
    return found


def load_model(path: str | Path, args, device=None, bits: int | None = None):
    """``qkv.load`` as the flags of ``flags.add_load_arguments`` ask, for a command that runs the model: the
    threads set first (``--threads``, else qkv.runtime's count of idle cores), then the checkpoint,
    ``--quantized`` or not, quantized to ``bits`` when given, and last ``for_inference`` (its swaps are
    made on the modules the model runs with)."""
    from ..loading import load
    from ..quant import quantize_model
    from ..runtime import set_decode_threads
    from ..runtime.inference import for_inference
    set_decode_threads(args.threads)
    model = load(path, device=device, quantized=args.quantized)
    if bits is not None:
        quantize_model(model, bits)
    return set_cache_dtype(for_inference(model), args)


def set_cache_dtype(model, args):
    """The model with ``--kv-cache-dtype`` (``flags.add_kv_cache_argument``) applied when the command has it."""
    from ..nn.kv_cache import CACHE_DTYPES
    name = getattr(args, "kv_cache_dtype", None)
    if name is not None:
        model.cache_dtype = CACHE_DTYPES[name]
    return model


def report_summary(report: dict, directory) -> str:
    """The one line `qkv finetune` and `qkv evaluate` end on: the task's scores and where the report is."""
    scores = " | ".join(f"{k} {report[k]:.4f}" for k in ("accuracy", "mcc", "precision", "recall", "f1",
                                                         "exact_match") if k in report)
    cut = f", {report['truncated']} truncated" if report.get("truncated") else ""
    return (f"{report['task']} on {report['examples']:,} examples{cut}: {scores} | report and predictions in "
            f"{directory}")


def require_task_metrics(task: str, feature: str) -> None:
    """The optional packages task ``task`` is scored with, asked for now: a run that trains for an hour
    must not end on a missing seqeval."""
    from ..metrics import require_metric
    from ..tasks import get_task
    for metric in get_task(task).needs:
        require_metric(metric, feature)


def say_truncated(cut: int, total: int, max_len: int) -> None:
    """One stderr line when inputs were cut to the model's positions (the output is still printed)."""
    if cut:
        print(f"note: {cut} of {total} inputs were longer than the model's {max_len} positions and were "
              f"truncated to fit", file=sys.stderr)


def default_out_dir(train_cfg: TrainConfig, config_file: str | None, train_overrides: dict) -> TrainConfig:
    """The run directory of a run nobody named: after the data it trains on when --data (or the config
    file) gives some (``--data books/`` -> runs/books), else the preset's runs/NAME. When that is taken it
    becomes runs/NAME-2, -3, ...: a new run never replaces an older one unless --out-dir names it (and then
    only with --overwrite)."""
    from_file = load_config_file(config_file).get("train", {}) if config_file else {}
    if "out_dir" in train_overrides or "out_dir" in from_file:
        return train_cfg
    data = train_overrides.get("data") or from_file.get("data")
    if data and data != "-":                             # stdin has no name
        p = Path(data).resolve()
        train_cfg = dataclasses.replace(train_cfg, out_dir=str(Path(train_cfg.out_dir).parent /
                                                               (p.name if p.is_dir() else p.stem)))
    if train_cfg.overwrite:
        return train_cfg
    free = free_dir(train_cfg.out_dir)
    if str(free) != train_cfg.out_dir:
        print(f"{train_cfg.out_dir} is taken; this run goes to {free} (name the folder with --out-dir)")
    return dataclasses.replace(train_cfg, out_dir=str(free))
