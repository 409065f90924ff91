"""`qkv <command>`: the command line, one module per command.

Each command module defines ``add_arguments(parser)`` and ``run(args) -> int``. Errors meant for a person
(``QkvError``) print as one line naming the fix and exit with status 2; nothing prints a traceback for
bad input.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import QkvError

COMMANDS = {   # name -> (module, one-line help)
    "train": ("qkv.cli.train", "train a model (a preset, a config file, flags for every config field)"),
    "generate": ("qkv.cli.generate", "generate text from a checkpoint, streamed token by token"),
    "translate": ("qkv.cli.translate", "translate or summarize with an encoder-decoder; BLEU/ROUGE with references"),
    "eval": ("qkv.cli.eval", "loss and perplexity of a checkpoint on a text file"),
    "bench": ("qkv.cli.bench", "speed benchmarks against transformers in the same run"),
    "embed": ("qkv.cli.embed", "sentence embeddings from an encoder and their cosine similarities"),
    "finetune": ("qkv.cli.finetune", "fine-tune an encoder on sst2, cola, upos, wnut17 or squad, then score it"),
    "evaluate": ("qkv.cli.evaluate", "score a fine-tuned encoder on a task's eval file (metrics + predictions)"),
    "predict": ("qkv.cli.predict", "run a fine-tuned encoder on new text: label, tags or answer span"),
    "attention": ("qkv.cli.attention", "attention maps of a text: PNG heat-maps, an interactive HTML page, bertviz data"),
    "next": ("qkv.cli.next", "the top next tokens with logits and probabilities, and the logit lens"),
    "plot": ("qkv.cli.plot", "training and validation curves of one or more runs, as a PNG"),
    "experiment": ("qkv.cli.experiment", "run an experiment that tests an architectural argument; write its report"),
}


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag prints one line (the usage of `qkv train` alone is 20 lines)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="qkv", description="qkv: a readable, fast transformer library.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod = importlib.import_module(module)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:          # a bad flag (status 2) or --help (0): a status, like every other error
        return int(e.code or 0)
    try:
        return int(args._run(args) or 0)
    except QkvError as e:
        print(f"qkv {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"qkv {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
