"""`qkv generate DIR --prompt TEXT`: continue a prompt with a checkpoint, streamed token by token.

    qkv generate runs/shakespeare-char --prompt "ROMEO:" --max-new-tokens 200 --temperature 0.8 --top-p 0.95

Prints the prompt, then each piece of the continuation as soon as it is safe to show (see
``qkv.generate.stream``). Every flag is a field of ``qkv.generate.GenerationConfig`` and takes its default
from there; a bad value is one error line (exit status 2) naming the fix.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import InputError
from ..generate import GenerationConfig
from .flags import path_arg, unescaped, value_parser

DEFAULTS = GenerationConfig()

# flag -> (field, type, help). argparse parses the types; GenerationConfig checks the ranges.
FLAGS = {
    "--max-new-tokens": ("max_new_tokens", int, "tokens to generate (the prompt not counted)"),
    "--temperature": ("temperature", float, "0 = greedy; higher = more random"),
    "--top-k": ("top_k", int, "sample from the k most likely tokens only"),
    "--top-p": ("top_p", float, "nucleus sampling: the smallest set reaching probability p, in (0, 1]"),
    "--min-p": ("min_p", float, "drop tokens below min_p x the top probability, in [0, 1]"),
    "--repetition-penalty": ("repetition_penalty", float, "CTRL penalty over prompt + output, > 0, 1 = off"),
    "--presence-penalty": ("presence_penalty", float, "OpenAI additive penalty, -2..2, output only"),
    "--frequency-penalty": ("frequency_penalty", float, "OpenAI per-occurrence penalty, -2..2, output only"),
    "--seed": ("seed", int, "random seed for reproducible sampling"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", type=path_arg, metavar="DIR", help="a qkv checkpoint or Hugging Face GPT-2 directory")
    parser.add_argument("--prompt", default="", help="text to continue (default: start from eos)")
    for flag, (field, kind, help_text) in FLAGS.items():
        parser.add_argument(flag, dest=field, type=value_parser(kind, flag), default=None,
                            metavar=kind.__name__.upper(),
                            help=f"{help_text} (default {getattr(DEFAULTS, field)})")
    parser.add_argument("--stop", action="append", default=[], metavar="S", type=unescaped,
                        help="stop before this string (repeatable; \\n and \\t are a newline and a tab, as in "
                             "--stop '\\n\\n'); it is not printed")
    parser.add_argument("--ignore-eos", action="store_true", help="keep generating past the eos token")
    parser.add_argument("--no-cache", dest="use_cache", action="store_false",
                        help="recompute the whole sequence every step (slow; for comparison)")


def run(args: argparse.Namespace) -> int:
    from .. import load
    from ..generate import stream
    from ._common import require_family

    given = {field: getattr(args, field) for field, _, _ in FLAGS.values() if getattr(args, field) is not None}
    cfg = GenerationConfig(**given, stop=tuple(args.stop), ignore_eos=args.ignore_eos,
                           use_cache=args.use_cache)
    require_family(args.directory, "generate", "decoder")
    model = load(args.directory)
    if model.tokenizer is None:
        raise InputError(f"{args.directory} has no tokenizer (tokenizer.json, or vocab.json + merges.txt); "
                         f"add one to generate text")
    pieces = stream(model, model.tokenizer, args.prompt, cfg)
    first = next(pieces, "")                 # validate everything before printing anything
    sys.stdout.write(args.prompt + first)
    sys.stdout.flush()
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
