"""`qkv merge-adapter SOURCE OUT [--adapter DIR]`: fold LoRA adapters into the weights, a plain checkpoint.

    qkv merge-adapter runs/sst2-lora runs/sst2-merged              # a `qkv finetune --lora` run
    qkv merge-adapter path/to/SmolLM2 merged --adapter my-adapter  # any base + a PEFT-format adapter

Each adapted weight becomes W + (alpha / R) B A; the adapters are gone, so OUT loads, generates and serves
like any qkv checkpoint, at the base's speed. A quantized base (a GGUF with --quantized) is refused: the
adapter cannot be folded into int8 / 4-bit codes. OUT is written atomically, never inside SOURCE or the
adapter; a fine-tuning run's task and label names go with it, so `qkv evaluate OUT` still knows the task.
"""

from __future__ import annotations

import argparse

from .flags import path_arg


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", type=path_arg, metavar="SOURCE",
                   help="a `qkv finetune --lora` run, or a base model (qkv, Hugging Face or .gguf) with --adapter")
    p.add_argument("out", type=path_arg, metavar="OUT", help="the new checkpoint directory")
    p.add_argument("--adapter", type=path_arg, metavar="DIR", default=None,
                   help="a LoRA adapter in PEFT's format (adapter_config.json + adapter_model.safetensors)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT when it holds a qkv checkpoint")


def run(args: argparse.Namespace) -> int:
    from ..adapters import merge_lora
    from ..adapters.lora import adapted
    from ..checkpoint import read_config, write_model_files
    from ..interop import is_gguf
    from ..loading import load
    from ..errors import ConfigError
    from ..rundir import atomic_dir, claim_out_dir

    claim_out_dir(args.out, overwrite=args.overwrite, flag="OUT",
                  reads=tuple(p for p in (args.source, args.adapter) if p is not None))
    model = load(args.source, adapter=args.adapter)
    if not adapted(model):
        raise ConfigError(f"{args.source} has no LoRA adapters; pass --adapter DIR (or a `qkv finetune --lora` run)")
    n = len(adapted(model))
    merge_lora(model)
    config = {} if is_gguf(args.source) else read_config(args.source)
    kept = {k: config[k] for k in ("finetune", "label_names") if k in config}
    if "finetune" in kept:
        kept["finetune"] = {**kept["finetune"], "lora": False}
    with atomic_dir(args.out) as tmp:
        write_model_files(tmp, model, model.tokenizer, kept)
    print(f"wrote {args.out}: {n} adapted layers folded into their weights")
    return 0
