"""`qkv export RUN OUT [--format hf|gguf] [--type T] [--merge]`: a checkpoint in another tool's format.

    qkv export runs/books runs/books-hf                          # a Hugging Face directory (transformers reads it)
    qkv export runs/llama runs/llama.gguf --type q8_0            # a GGUF file (llama.cpp, transformers' GGUF loader)
    qkv export runs/chat chat.gguf --merge                       # a LoRA run: adapters folded in first

RUN is anything ``qkv.load`` reads (a qkv run, a Hugging Face directory, a GGUF file, dequantized to float).
``--format`` defaults to gguf for an OUT ending in .gguf, else hf. What each format can hold, and what is
refused by name: ``qkv.interop.export_axes``. Refused too: a ``qkv quantize`` checkpoint (its int8 / 4-bit
codes are not the weights it was made from: export that float checkpoint), a run with LoRA adapters unless
``--merge``, ``--type`` for a Hugging Face export (float32), a GGUF of anything but a decoder.

OUT follows ``qkv.rundir``'s rules: a directory is new, empty, or an earlier qkv output replaced only with
``--overwrite``; a .gguf file is new, or a GGUF replaced with ``--overwrite``; never RUN, inside it or around
it. Both are written beside OUT and renamed into place whole, so a failure leaves no half-written file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import CheckpointError, ConfigError, article
from ..family import Family
from .flags import path_arg

TYPES = ("f32", "f16", "q8_0", "q4_0", "q4_1")
HF_FAMILIES = (Family.DECODER, Family.FINETUNED_DECODER, Family.ENCODER, Family.FINETUNED_ENCODER)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=path_arg, metavar="PATH", help="the checkpoint to export: qkv, Hugging Face or .gguf")
    p.add_argument("out", type=path_arg, metavar="OUT", help="the Hugging Face directory or .gguf file to write")
    p.add_argument("--format", choices=("hf", "gguf"), default=None,
                   help="hf: config.json + model.safetensors + tokenizer files; gguf: one llama.cpp file (default: "
                        "gguf when OUT ends in .gguf, else hf)")
    p.add_argument("--type", choices=TYPES, default=None,
                   help="GGUF only: the matrices' tensor type (default f32; norms stay f32)")
    p.add_argument("--merge", action="store_true", help="fold a LoRA run's adapters into the weights first")
    p.add_argument("--overwrite", action="store_true", help="replace OUT when it holds an earlier export")


def claim_gguf_file(path: str, overwrite: bool, source: str) -> Path:
    """Check that OUT may be written (see the module docstring), before any work; return it."""
    from ..rundir import check_writable
    where, src = Path(path).resolve(), Path(source).resolve()
    if where.is_dir():
        raise CheckpointError(f"OUT {path} is a directory; give a file name such as {Path(path) / 'model.gguf'}")
    if where == src or src in where.parents:
        raise CheckpointError(f"OUT {path} is {'the' if where == src else 'inside the'} checkpoint {source} this "
                              f"command reads; write the GGUF beside it (e.g. {src.name}.gguf)")
    if where.exists() and not overwrite:
        raise CheckpointError(f"OUT {path} already exists; pass --overwrite to replace it, or choose another name")
    if where.exists() and not _is_gguf_file(where):
        raise CheckpointError(f"OUT {path} exists and is not a GGUF file; --overwrite replaces only a GGUF: choose "
                              f"another name")
    check_writable(where.parent, "OUT")
    return Path(path)


def _is_gguf_file(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as fh:
        return fh.read(4) == b"GGUF"


def _checks(args: argparse.Namespace, fmt: str) -> None:
    """Everything decided by the flags and RUN's config.json alone, before the weights are read."""
    from ..errors import require_extra
    from ..loading import family_of
    from ..rundir import claim_out_dir, is_qkv_run
    from ._common import require_family
    if fmt == "hf" and args.type is not None:
        raise ConfigError(f"--type {args.type} chooses GGUF tensor types, and a Hugging Face export is float32: drop "
                          f"--type, or pass --format gguf")
    if fmt == "gguf":
        require_extra("gguf", "gguf", "qkv export --format gguf")
        family = family_of(args.model)
        if family != Family.DECODER:
            raise CheckpointError(f"{args.model} holds {article(family)} model; GGUF (llama.cpp's format) holds "
                                  f"decoders: export it with --format hf")
        claim_gguf_file(args.out, args.overwrite, args.model)
    else:
        require_family(args.model, "export", *HF_FAMILIES)
        if is_qkv_run(Path(args.out)) and not args.overwrite:      # rundir's own line would offer --resume
            raise CheckpointError(f"OUT {args.out} already holds a checkpoint; pass --overwrite to replace it, or "
                                  f"choose another OUT")
        claim_out_dir(args.out, overwrite=args.overwrite, flag="OUT", reads=(args.model,))


def load_for_export(path: str, merge: bool):
    """The float model to write: a quantized checkpoint refused, LoRA adapters folded in or refused."""
    from ..adapters import merge_lora
    from ..adapters.lora import adapted
    from ..loading import load
    from ..quant import is_quantized, layout_of
    model = load(path)
    if is_quantized(model):
        raise CheckpointError(f"{path} holds quantized weights ({', '.join(sorted(set(layout_of(model).values())))}"
                              f" from qkv quantize), not the weights it was made from; export the float checkpoint "
                              f"it came from")
    if adapted(model) and not merge:
        raise CheckpointError(f"{path} has LoRA adapters on {len(adapted(model))} layers; pass --merge to fold them "
                              f"into the weights (the adapter alone is in PEFT's format in {Path(path) / 'adapter'})")
    if merge and not adapted(model):
        raise ConfigError(f"--merge folds LoRA adapters into the weights, and {path} has none: drop --merge")
    return merge_lora(model) if merge else model


def run(args: argparse.Namespace) -> int:
    fmt = args.format or ("gguf" if str(args.out).endswith(".gguf") else "hf")
    _checks(args, fmt)
    model = load_for_export(args.model, args.merge)
    if fmt == "gguf":
        from ..interop.export_gguf import write_gguf
        counts = write_gguf(args.out, model, args.type or "f32")
        tensors = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
        print(f"wrote {args.out}: GGUF llama, {tensors} tensors (llama.cpp, qkv.load, or transformers' "
              f"from_pretrained(dir, gguf_file=name) read it)")
        return 0
    from ..interop.export_hf import save_hf
    name = save_hf(model, args.out)
    print(f"wrote {args.out}: {name} (transformers' AutoModel classes read it)")
    return 0
