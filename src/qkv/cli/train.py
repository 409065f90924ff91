"""`qkv train`: a preset and/or a JSON/TOML config file, then flags for any config field."""

from __future__ import annotations

import math
from pathlib import Path

from ..checkpoint import read_config
from ..config import ModelConfig, TrainConfig, VisionConfig, build, load_config_file, resolve
from ..presets import PRESETS
from ..data.images import ImageDataConfig
from ..errors import ConfigError, article
from ._common import default_out_dir
from .flags import add_dataclass_flags, collect, path_arg

# by --task (and --objective mlm, whose encoder needs a WordPiece vocabulary and a bidirectional mask; images:
# by --model, mnist-vit / mnist-swin / mnist-cnn)
DEFAULT_PRESETS = {"lm": "shakespeare-char", "mlm": "bert-mlm", "translate": "multi30k", "summarize": "scitldr",
                   "image-classification": "mnist-vit"}
IMAGES = "image-classification"


def add_arguments(p) -> None:
    defaults = ", ".join(f"{v} for " + ("--objective mlm" if k == "mlm" else f"--task {k}")
                         for k, v in DEFAULT_PRESETS.items())
    p.add_argument("--preset", help=f"named preset: {', '.join(PRESETS)} (default when no --config is given: "
                                    f"{defaults})")
    p.add_argument("--config", type=path_arg, metavar="FILE", help="JSON or TOML file with [model] and [train] tables")
    p.add_argument("--resume", type=path_arg, metavar="DIR", help="continue the run in DIR exactly where it stopped "
                                                  "(training flags such as --max-iters extend it)")
    add_dataclass_flags(p, ModelConfig, "model (ModelConfig fields)")
    add_dataclass_flags(p, TrainConfig, "training (TrainConfig fields)")
    add_dataclass_flags(p, VisionConfig, "images, --task image-classification (VisionConfig fields)")
    add_dataclass_flags(p, ImageDataConfig, "image data, --task image-classification (ImageDataConfig fields)")


def _preset(args) -> str | None:
    """The preset a run uses: --preset, else the config file's own, else the default for its task."""
    train_options = collect(args, TrainConfig)
    task = "mlm" if train_options.get("objective") == "mlm" else train_options.get("task", "lm")
    default = f"mnist-{getattr(args, 'model', 'vit')}" if task == IMAGES else DEFAULT_PRESETS[task]
    return getattr(args, "preset", None) or (None if getattr(args, "config", None) else default)


def help_defaults(args) -> tuple[str, dict]:
    name = _preset(args)
    if name is None:
        name = load_config_file(args.config).get("preset")
    preset = PRESETS.get(name, {"model": {}, "train": {}})
    return name, {**preset["model"], **preset["train"], **preset.get("vision", {})}


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
    image_overrides = {**collect(args, VisionConfig), **collect(args, ImageDataConfig)}
    if args.resume:
        _check_resumed_task(args.resume, train_overrides)
    if args.resume and "images" in read_config(args.resume):
        return _images(args, model_overrides, train_overrides, image_overrides)
    preset_task = PRESETS.get(_preset(args) or "", {}).get("train", {}).get("task")
    if not args.resume and train_overrides.get("task", preset_task) == IMAGES:
        return _images(args, model_overrides, train_overrides, image_overrides)
    if image_overrides:
        raise ConfigError(f"{', '.join('--' + k.replace('_', '-') for k in image_overrides)} describe images; add "
                          f"--task image-classification, or drop them")
    if args.resume:
        if args.preset or args.config or model_overrides:
            raise ConfigError("--resume continues a run with its saved model config; drop --preset, --config "
                              "and model flags (training flags like --max-iters are allowed)")
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


def _check_resumed_task(run_dir: str, train_overrides: dict) -> None:
    """A --task that is not the resumed run's is a conflict to name, before any file of the run is read as
    that task's data (which would say that a train.jsonl is missing)."""
    config = read_config(run_dir)
    if "finetune" in config:
        raise ConfigError(f"{run_dir} is a fine-tuning run; continue it with `qkv finetune --resume {run_dir}`")
    saved = IMAGES if "images" in config else config.get("train", {}).get("task", "lm")
    given = train_overrides.get("task", saved)
    if given != saved:
        raise ConfigError(f"--task {given} conflicts with --resume {run_dir}, {article(saved)} run: drop --task "
                          f"to continue it, or drop --resume to start a new {given} run")


def _images(args, model_overrides: dict, train_overrides: dict, image_overrides: dict) -> int:
    """`qkv train --task image-classification`: ViT, Swin or the CNN on MNIST; scored on the test split."""
    from ..rundir import claim_out_dir
    from ..train.images import build_image_task, finish, resume_images
    from ..train.trainer import Trainer

    if args.resume:
        if args.preset or args.config or model_overrides or image_overrides:
            raise ConfigError("--resume continues a run with its saved model, image and data settings; pass only "
                              "training flags such as --max-time")
        trainer = resume_images(args.resume, train_overrides)
        if trainer.done():
            raise ConfigError(f"{args.resume} has spent its budget: {trainer.spent_budget()}")
        print(f"resuming {args.resume} at step {trainer.step}")
    else:
        name = _preset(args)
        if args.config:
            raise ConfigError("--config files hold [model] and [train] only; for images use --preset and flags")
        model_cfg, train_cfg = resolve(name, None, model_overrides, train_overrides)
        vision_options = {k: v for k, v in image_overrides.items() if k in VisionConfig.__dataclass_fields__}
        vision = build(VisionConfig, {**PRESETS[name].get("vision", {}), **vision_options}, "the image flags")
        dcfg = build(ImageDataConfig, {k: v for k, v in image_overrides.items() if k not in vision_options},
                     "the image data flags")
        train_cfg = default_out_dir(train_cfg, None, train_overrides)
        claim_out_dir(train_cfg.out_dir, train_cfg.overwrite)       # before the data is read and the model built
        task = build_image_task(model_cfg, vision, train_cfg, dcfg)
        trainer = Trainer(task.model_cfg, train_cfg, parts=task)
    data, model, split = trainer.data, trainer.model, trainer.task_config["images"]
    sizes = " / ".join(f"{len(data.splits[s]):,} {s}" for s in ("train", "val", "test"))
    first_test = split["test_in_train"] + split["val_images"]
    print(f"model: {type(model).__name__}, {model.num_params() / 1e6:.2f}M parameters; data: {sizes} images (train: "
          f"the CSV subset + test images 0..{split['test_in_train'] - 1}; val: test images "
          f"{split['test_in_train']}..{first_test - 1}; test: {first_test}..); run dir {trainer.out_dir}")
    trainer.fit()
    report, written = finish(trainer)
    print(f"final: step {trainer.step} | {trainer.elapsed:.1f}s | test accuracy {report['accuracy']:.4f} on "
          f"{report['examples']:,} held-out images | {written} in {trainer.out_dir}")
    return 0

