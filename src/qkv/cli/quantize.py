"""`qkv quantize PATH OUT --bits 8|4 [--group-size 32|64|128]`: a qkv checkpoint with quantized weights.

    qkv quantize path/to/SmolLM2-135M-Instruct OUT --bits 4 --group-size 32
    qkv generate OUT --chat "Hi"           # qkv.load swaps in the quantized Linear modules by itself

Every Linear layer becomes ``Int8Linear`` (int8 per output channel) or ``Int4Linear`` (4-bit per group of
inputs, asymmetric), a tied head (the token embedding) int8 (qkv.quant explains why); norms and an untied
embedding table stay float32. OUT is a qkv checkpoint directory (safetensors weights, config.json with the
layout, the tokenizer and chat template), written atomically; never PATH itself, a folder inside it or one
around it (a run quantized in place would keep a trainer_state.pt its weights no longer match). Input: any float
checkpoint qkv loads (a qkv run, a Hugging Face directory, an F32/F16/BF16 GGUF). A checkpoint that is already
quantized is refused: a quantized GGUF keeps its own blocks with ``--quantized`` on the decoding commands
instead.
"""

from __future__ import annotations

import argparse

from ..errors import CheckpointError
from ..family import Family
from .flags import path_arg, value_parser


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=path_arg, metavar="PATH", help="a float checkpoint: qkv, Hugging Face or .gguf")
    p.add_argument("out", type=path_arg, metavar="OUT", help="the new checkpoint directory")
    p.add_argument("--bits", type=value_parser(int, "--bits"), required=True, help="8 (int8 per channel) or 4")
    p.add_argument("--group-size", type=value_parser(int, "--group-size"), default=32,
                   help="4-bit only: inputs per scale, 32, 64 or 128 (default 32)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT when it holds a qkv checkpoint")


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import save
    from ..interop import is_gguf
    from ..loading import load
    from ..quant import check_bits, is_quantized, layout_of, quantize_model
    from ..rundir import claim_out_dir
    from ._common import require_family

    check_bits(args.bits, args.group_size)
    require_family(args.model, "quantize", Family.DECODER)
    claim_out_dir(args.out, overwrite=args.overwrite, flag="OUT", reads=(args.model,))
    if is_gguf(args.model):
        from ..interop.gguf import GGUFFile
        kinds = {t.tensor_type.name for t in GGUFFile(args.model).tensors.values()} - {"F32", "F16", "BF16"}
        if kinds:
            raise CheckpointError(f"{args.model} is already quantized ({', '.join(sorted(kinds))}); load it with "
                                  f"--quantized (qkv.load(path, quantized=True)) to keep its own blocks")
    model = load(args.model)
    if is_quantized(model):
        raise CheckpointError(f"{args.model} is already quantized ({sorted(set(layout_of(model).values()))}); "
                              f"quantize the float checkpoint it was made from")
    layout = quantize_model(model, args.bits, args.group_size)
    save(model, args.out, model.tokenizer)
    kinds = sorted(set(layout.values()))
    print(f"wrote {args.out}: {len(layout)} Linear layers as {', '.join(kinds)}")
    return 0
