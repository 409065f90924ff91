"""`qkv next PATH --text TEXT`: the top next tokens with their logits and probabilities (and the logit lens).

    qkv next path/to/gpt2 --text "The capital of France is" --top 10
    qkv next runs/shakespeare-char --text "ROMEO:" --lens --out next.png     # + every layer's guess, as a PNG
    qkv next path/to/bert --text "The capital of France is [MASK]."           # an encoder fills the [MASK]
    qkv next runs/multi30k --source "Zwei Hunde." --text "Two"                # the next target token

(The module is not named next.py: a submodule ``next`` would shadow the builtin ``next`` inside
``qkv/cli/__init__.py``, whose namespace holds its submodules.)

Prints the table (rank, token, logit, probability); --lens adds the same prediction read off every layer
through the final norm and the output head; --out writes it as a PNG; --json prints it as JSON (each
token's text as the tokenizer decodes it, and its label as the table shows it: a space as ␣).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..family import Family
from .flags import add_load_arguments, add_overwrite_argument, path_arg, positive_int


def add_arguments(p) -> None:
    p.add_argument("model", type=path_arg, metavar="PATH", help="a checkpoint qkv loads")
    p.add_argument("--text", required=True, help="the context (encoder: a text with [MASK])")
    p.add_argument("--source", help="encoder-decoder: the source text")
    p.add_argument("--top", type=positive_int("--top"), default=10, help="how many tokens (default 10)")
    p.add_argument("--lens", action="store_true", help="also read the prediction off every layer (logit lens)")
    p.add_argument("--out", type=path_arg, metavar="FILE.png", help="also draw the table (and the lens) as a PNG")
    add_overwrite_argument(p, "--out")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--truncate", action="store_true", help="keep the last max_len tokens of a long text")
    add_load_arguments(p)


def run(args) -> int:
    from ..errors import InputError
    from ..rundir import claim_out_file
    from ..viz.lens import format_table, next_tokens, plot_next
    from ..viz.output import check_suffix, require_png
    from ._common import load_model, require_family

    if args.out is not None:
        check_suffix(args.out, [".png"], "the next-token picture")
        claim_out_file(args.out, args.overwrite, "--out", reads=(args.model,))
        require_png("qkv next --out")                    # before the model loads and runs
    elif args.overwrite:
        raise InputError("--overwrite lets --out replace a file; there is no --out: drop --overwrite")
    require_family(args.model, "next", Family.DECODER, Family.ENCODER, Family.ENCODER_DECODER)
    model = load_model(args.model, args)
    result = next_tokens(model, args.text, args.top, args.source, args.truncate, args.lens)
    if args.out is not None:
        plot_next(result, args.out, title=Path(args.model).name or str(args.model))   # the run, as attention
    if args.json:
        print(json.dumps(dataclasses.asdict(result), ensure_ascii=False))
    else:
        print(f"{result.reads} after {len(result.labels)} tokens '...{''.join(result.labels[-40:])}':")
        print(format_table(result))
    return 0
