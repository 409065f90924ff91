"""`qkv eval PATH --data FILE`: mean next-token loss and perplexity of a decoder on a text file.

    qkv eval SmolLM2-135M-Instruct.Q4_1.gguf --data held_out.txt --window 512 --bits 8     # int8 weights
"""

from __future__ import annotations

import json
import math

from ..family import Family
from .flags import add_load_arguments, path_arg, positive_int, value_parser


def add_arguments(p) -> None:
    p.add_argument("checkpoint", type=path_arg, metavar="DIR",
                   help="a decoder: a qkv run directory, a Hugging Face directory or a .gguf file")
    p.add_argument("--data", required=True, type=path_arg, metavar="FILE",
                   help="text file (or folder of .txt files; - for stdin)")
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=8,
                   help="windows per forward pass (default 8)")
    p.add_argument("--json", action="store_true", help="print one JSON object: tokens, loss, perplexity")
    p.add_argument("--window", type=positive_int("--window"), default=1024,
                   help="tokens per window, at most the model's context (default 1024)")
    p.add_argument("--bits", type=value_parser(int, "--bits"), default=None,
                   help="quantize the weights on load: 8 (int8 per channel) or 4 (4-bit, groups of 32)")
    add_load_arguments(p)


def run(args) -> int:
    from ..data.text import read_text
    from ..errors import CheckpointError, InputError
    from ..quant import check_bits
    from ..perplexity import perplexity
    from ._common import load_model, require_family

    if args.bits is not None:
        check_bits(args.bits)
    if args.bits is not None and args.quantized:
        raise InputError("give --bits (quantize the float weights) or --quantized (keep a GGUF's blocks), not both")
    require_family(args.checkpoint, "eval", Family.DECODER)
    text = read_text(args.data)
    model = load_model(args.checkpoint, args, bits=args.bits)
    if model.tokenizer is None:
        raise CheckpointError(f"{args.checkpoint} has no tokenizer files; eval needs one to read text")
    result = perplexity(model, model.tokenizer.encode(text), args.batch_size, args.window, progress=True)
    ppl = math.exp(result["loss"])
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), "data": str(args.data), **result, "perplexity": ppl}))
    else:
        print(f"tokens {result['tokens']:,} | loss {result['loss']:.4f} | perplexity {ppl:.3f}")
    return 0
