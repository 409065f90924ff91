"""`qkv finetune`: fine-tune an encoder on a task (sst2, cola, upos, wnut17, squad) or a chat decoder on
conversations (chat), optionally with LoRA adapters (--lora), then score it.

    qkv finetune --task sst2 --init runs/bert-mlm --data ../shared/data/sst2/train.tsv \\
                 --eval-data ../shared/data/sst2/test.tsv --max-time 300 --out-dir runs/sst2
    qkv finetune --task squad --init none --data ../shared/data/squad_v1.1_dev/dev-v1.1.json.gz   # baseline
    qkv finetune --resume runs/sst2 --max-time 600                  # continue exactly, with a longer budget
    qkv finetune --task chat --init SmolLM2.gguf --data chats.jsonl --eval-data held_out.jsonl --lora \
                 --lora-rank 16 --max-iters 200 --out-dir runs/chat   # loss on assistant turns only

--init is an encoder checkpoint (a `qkv train --preset bert-mlm` run or a Hugging Face BERT directory), or
none (--scratch) for the baseline: the --preset's model (default bert-finetune) with a WordPiece vocabulary
trained on the task's training text. Training flags are TrainConfig's (the run is an ordinary trainer run:
checkpoints, metrics.jsonl, --max-time); model flags apply to the baseline only. At the end the model is
scored on --eval-data and DIR/eval.json plus DIR/predictions.json(l) are written.
"""

from __future__ import annotations

import dataclasses
import typing

from ..checkpoint import read_config
from ..config import ModelConfig, TrainConfig, build, resolve
from ..presets import PRESETS
from ..errors import ConfigError
from ..family import Family
from ..rundir import claim_out_dir
from ._common import default_out_dir, report_summary, require_family, require_task_metrics
from .flags import add_dataclass_flags, collect, path_arg

DEFAULT_PRESET = "bert-finetune"
# TrainConfig fields that describe language-model data, not fine-tuning (--task and --data are the task's).
LM_ONLY = ("task", "objective", "data", "src_lang", "tgt_lang", "joint_vocab", "label_smoothing")


def _fields_except(cls, names: tuple[str, ...]):
    """``cls`` less some fields, as a dataclass the flag builder reads: still one list of options."""
    hints = typing.get_type_hints(cls)
    fewer = dataclasses.make_dataclass(cls.__name__, [(f.name, hints[f.name], dataclasses.field(default=f.default))
                                                      for f in dataclasses.fields(cls) if f.name not in names])
    fewer.__wrapped__ = cls                   # the flags' help comes from the comments in cls's source
    return fewer


TrainFlags = _fields_except(TrainConfig, LM_ONLY)


def add_arguments(p) -> None:
    from ..train.finetune import FinetuneConfig

    p.add_argument("--preset", help=f"training defaults and the --init none model: one of {', '.join(PRESETS)} "
                                    f"(default {DEFAULT_PRESET})")
    p.add_argument("--scratch", action="store_true", help="train from scratch: the same as --init none")
    p.add_argument("--resume", type=path_arg, metavar="DIR",
                   help="continue the fine-tuning run in DIR exactly where it stopped")
    add_dataclass_flags(p, FinetuneConfig, "task (FinetuneConfig fields)")
    preset = PRESETS[DEFAULT_PRESET]
    add_dataclass_flags(p, TrainFlags, f"training (TrainConfig fields; defaults of --preset {DEFAULT_PRESET})",
                        preset["train"])
    add_dataclass_flags(p, ModelConfig, f"model for --init none (ModelConfig fields; defaults of --preset "
                                        f"{DEFAULT_PRESET})", preset["model"])


def help_defaults(args) -> tuple[str, dict]:
    name = getattr(args, "preset", None) or DEFAULT_PRESET
    preset = PRESETS.get(name, PRESETS[DEFAULT_PRESET])
    return name, {**preset["model"], **preset["train"]}


def run(args) -> int:
    from ..train.distributed import shutdown
    try:
        return _finetune(args)
    finally:
        shutdown()                               # under torchrun: leave the process group cleanly


def _finetune(args) -> int:
    from ..train.distributed import World, check_launch
    from ..train.finetune import (FinetuneConfig, build_finetune_task, finetune_config, finish, new_model,
                                  resume_finetune)
    from ..train.trainer import Trainer

    task_options, train_overrides = collect(args, FinetuneConfig), collect(args, TrainFlags)
    model_overrides = collect(args, ModelConfig)
    if args.resume:
        if task_options or model_overrides or args.preset or args.scratch:
            raise ConfigError("--resume continues a run with its saved task and model; pass only training flags "
                              "such as --max-time")
        if "finetune" not in read_config(args.resume):
            raise ConfigError(f"{args.resume} is not a fine-tuning run; continue it with `qkv train --resume "
                              f"{args.resume}`")
        task = read_config(args.resume)["finetune"].get("task")
        require_task_metrics(task, f"qkv finetune --resume of a {task} run")
        trainer = resume_finetune(args.resume, train_overrides)
        if trainer.done():
            raise ConfigError(f"{args.resume} has spent its budget: {trainer.spent_budget()}")
        print(f"resuming {args.resume} at step {trainer.step}")
    else:
        if args.scratch:
            if task_options.get("init", None) is not None:
                raise ConfigError(f"--scratch trains from scratch but --init {task_options['init']} names an "
                                  f"encoder; drop one of them")
            task_options["init"] = None
        if "init" not in task_options:
            raise ConfigError("say where the encoder comes from: --init DIR (a qkv-bert run or a Hugging Face BERT "
                              "directory), or --init none / --scratch for the from-scratch baseline")
        for name in ("task", "data"):
            if name not in task_options:
                from ..tasks import TASKS                    # one list of names: a new task shows up here too
                raise ConfigError(f"--{name} is required (tasks: {', '.join(TASKS)}; --data is the training file)")
        if task_options["init"] is not None and model_overrides:
            raise ConfigError(f"model flags {sorted(model_overrides)} describe the --init none model; an encoder "
                              f"from --init keeps its own architecture")
        fcfg = build(FinetuneConfig, task_options)
        require_task_metrics(fcfg.task, f"qkv finetune --task {fcfg.task}")     # scored at the end
        if fcfg.init is not None:
            from ..tasks import get_task
            if get_task(fcfg.task).head is None:             # chat: the decoder itself learns
                require_family(fcfg.init, f"finetune --task {fcfg.task} --init", Family.DECODER)
            elif get_task(fcfg.task).head == "classify":      # an encoder's [CLS] or a decoder's last token
                require_family(fcfg.init, "finetune --init", Family.ENCODER, Family.FINETUNED_ENCODER, Family.DECODER)
            else:
                require_family(fcfg.init, "finetune --init", Family.ENCODER, Family.FINETUNED_ENCODER)
        model_cfg, train_cfg = resolve(args.preset or DEFAULT_PRESET, None, model_overrides, train_overrides)
        check_launch(train_cfg.batch_size, train_cfg.fsdp)               # before the rendezvous and any work
        train_cfg = default_out_dir(train_cfg, None, train_overrides)
        if World.from_env().is_main:                                  # the one writer, under torchrun
            claim_out_dir(train_cfg.out_dir, train_cfg.overwrite,      # before the tokenizer and model are built
                          reads=(fcfg.init,))
        task, notes = build_finetune_task(fcfg, train_cfg, new_model(fcfg, model_cfg, train_cfg))
        trainer = Trainer(task.model_cfg, train_cfg, parts=task)
        cut = f" ({notes['truncated']} truncated to the model's positions)" if notes.get("truncated") else ""
        print(f"task {fcfg.task}: {notes['examples']:,} training inputs{cut}; init {fcfg.init or 'none (scratch)'}")
    cfg = trainer.model_cfg
    print(f"model: {trainer.model.num_params() / 1e6:.2f}M parameters, {cfg.n_layers} layers, d_model {cfg.d_model}, "
          f"context {cfg.max_len}, vocab {cfg.vocab_size}; run dir {trainer.out_dir}")
    trainer.fit()
    if not trainer.world.is_main:                # rank 0 scores the model and writes the report
        return 0
    report = finish(trainer, finetune_config(trainer.out_dir))
    print(report_summary(report, trainer.out_dir))
    return 0
