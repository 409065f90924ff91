"""`qkv eval DIR --data FILE`: mean next-token loss and perplexity of a checkpoint on a text file."""

from __future__ import annotations

import math


def add_arguments(p) -> None:
    p.add_argument("checkpoint", metavar="DIR", help="a qkv run directory or a Hugging Face GPT-2 directory")
    p.add_argument("--data", required=True, metavar="FILE", help="text file (or folder of .txt files)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default 8)")


def run(args) -> int:
    from ..checkpoint import load
    from ..data.text import read_text
    from ..errors import CheckpointError
    from ..train.evaluate import perplexity

    model = load(args.checkpoint)
    if model.tokenizer is None:
        raise CheckpointError(f"{args.checkpoint} has no tokenizer files; eval needs one to read text")
    result = perplexity(model, model.tokenizer.encode(read_text(args.data)), args.batch_size)
    print(f"tokens {result['tokens']:,} | loss {result['loss']:.4f} | perplexity {math.exp(result['loss']):.3f}")
    return 0
