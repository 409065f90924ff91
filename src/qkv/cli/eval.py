"""`qkv eval DIR --data FILE`: mean next-token loss and perplexity of a decoder on a text file."""

from __future__ import annotations

import json
import math

from .flags import path_arg, value_parser


def add_arguments(p) -> None:
    p.add_argument("checkpoint", type=path_arg, metavar="DIR", help="a decoder: a qkv run directory or a Hugging Face GPT-2 directory")
    p.add_argument("--data", required=True, type=path_arg, metavar="FILE", help="text file (or folder of .txt files; - for stdin)")
    p.add_argument("--batch-size", type=value_parser(int, "--batch-size"), default=8,
                   help="windows per forward pass (default 8)")
    p.add_argument("--json", action="store_true", help="print one JSON object: tokens, loss, perplexity")


def run(args) -> int:
    from ..checkpoint import load
    from ..data.text import read_text
    from ..errors import CheckpointError
    from ..train.evaluate import perplexity
    from ..validation import check_positive_int
    from ._common import require_family

    check_positive_int("--batch-size", args.batch_size)
    require_family(args.checkpoint, "eval", "decoder")
    text = read_text(args.data)
    model = load(args.checkpoint)
    if model.tokenizer is None:
        raise CheckpointError(f"{args.checkpoint} has no tokenizer files; eval needs one to read text")
    result = perplexity(model, model.tokenizer.encode(text), args.batch_size)
    ppl = math.exp(result["loss"])
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), "data": str(args.data), **result, "perplexity": ppl}))
    else:
        print(f"tokens {result['tokens']:,} | loss {result['loss']:.4f} | perplexity {ppl:.3f}")
    return 0
