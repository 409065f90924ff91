"""`qkv train`: a preset and/or a JSON/TOML config file, then flags for any config field."""

from __future__ import annotations

import math
from pathlib import Path

from ..checkpoint import read_config
from ..config import PRESETS, ModelConfig, TrainConfig, load_config_file, resolve
from ..errors import ConfigError
from ._common import default_out_dir
from .flags import add_dataclass_flags, collect, path_arg

# by --task (and --objective mlm, whose encoder needs a WordPiece vocabulary and a bidirectional mask)
DEFAULT_PRESETS = {"lm": "shakespeare-char", "mlm": "bert-mlm", "translate": "multi30k", "summarize": "scitldr"}


def add_arguments(p) -> None:
    p.add_argument("--preset", help=f"named preset: {', '.join(PRESETS)} (default when no --config is given: "
                                    f"{', '.join(f'{v} for ' + ('--objective mlm' if k == 'mlm' else f'--task {k}') for k, v in DEFAULT_PRESETS.items())})")
    p.add_argument("--config", type=path_arg, metavar="FILE", help="JSON or TOML file with [model] and [train] tables")
    p.add_argument("--resume", type=path_arg, metavar="DIR", help="continue the run in DIR exactly where it stopped "
                                                  "(training flags such as --max-iters extend it)")
    add_dataclass_flags(p, ModelConfig, "model (ModelConfig fields)")
    add_dataclass_flags(p, TrainConfig, "training (TrainConfig fields)")


def _preset(args) -> str | None:
    """The preset a run uses: --preset, else the config file's own, else the default for its task."""
    train_options = collect(args, TrainConfig)
    task = "mlm" if train_options.get("objective") == "mlm" else train_options.get("task", "lm")
    return getattr(args, "preset", None) or (None if getattr(args, "config", None) else DEFAULT_PRESETS[task])


def help_defaults(args) -> tuple[str, dict]:
    name = _preset(args)
    if name is None:
        name = load_config_file(args.config).get("preset")
    preset = PRESETS.get(name, {"model": {}, "train": {}})
    return name, {**preset["model"], **preset["train"]}


def run(args) -> int:
    from ..train.distributed import shutdown
    try:
        return _train(args)
    finally:
        shutdown()                               # under torchrun: leave the process group cleanly


def _train(args) -> int:
    from ..train.trainer import Trainer          # torch import deferred so `qkv --help` is instant

    from ..train.distributed import check_launch

    model_overrides, train_overrides = collect(args, ModelConfig), collect(args, TrainConfig)
    if args.resume:
        if args.preset or args.config or model_overrides:
            raise ConfigError("--resume continues a run with its saved model config; drop --preset, --config "
                              "and model flags (training flags like --max-iters are allowed)")
        if "finetune" in read_config(args.resume):
            raise ConfigError(f"{args.resume} is a fine-tuning run; continue it with `qkv finetune --resume "
                              f"{args.resume}`")
        saved = read_config(args.resume).get("train", {})
        check_launch(train_overrides.get("batch_size", saved.get("batch_size", 1)),
                     train_overrides.get("fsdp", saved.get("fsdp", False)), resumed="batch_size" not in train_overrides)
        trainer = Trainer.resume(args.resume, train_overrides)
        if trainer.done():
            raise ConfigError(f"{args.resume} has spent its budget: {trainer.spent_budget()}")
        elsewhere = f", writing to {trainer.out_dir} ({args.resume} stays as it is)" \
            if trainer.out_dir.resolve() != Path(args.resume).resolve() else ""
        print(f"resuming {args.resume} at step {trainer.step}{elsewhere}")
    else:
        model_cfg, train_cfg = resolve(_preset(args), args.config, model_overrides, train_overrides)
        check_launch(train_cfg.batch_size, train_cfg.fsdp)               # before the rendezvous and any work
        trainer = Trainer(model_cfg, default_out_dir(train_cfg, args.config, train_overrides))
    n_params = trainer.model.num_params()
    unit = "pairs" if isinstance(trainer.data.splits["train"], list) else "tokens"
    print(f"model: {n_params / 1e6:.2f}M parameters, {trainer.model_cfg.n_layers} layers, d_model "
          f"{trainer.model_cfg.d_model}, context {trainer.model_cfg.max_len}, vocab {trainer.model_cfg.vocab_size}"
          f" ({trainer.tokenizer.kind}); data: {len(trainer.data.splits['train']):,} train / "
          f"{len(trainer.data.splits['val']):,} val {unit}; run dir {trainer.out_dir}")
    last = trainer.fit()
    print(f"final: step {last['step']} | {last['elapsed_s']:.1f}s | train_loss {last['train_loss']:.4f} | "
          f"saved to {trainer.out_dir} | val_loss {last['val_loss']:.4f} (ppl {math.exp(last['val_loss']):.2f})")
    return 0
