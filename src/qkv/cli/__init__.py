"""`qkv <command>`: the command line, one module per command.

Each command module defines ``add_arguments(parser)`` and ``run(args) -> int`` (and, when its defaults come
from a preset, ``help_defaults(args) -> (preset, values)`` for ``--help``). Errors meant for a person
(``QkvError``) print as one line naming the fix and exit with status 2; nothing prints a traceback for
bad input.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import importlib
import os
import sys

from .. import __version__
from ..errors import QkvError
from ..train.interrupt import TrainingInterrupted
from .flags import add_preset_help

COMMANDS = {   # name -> (module, one-line help)
    "train": ("qkv.cli.train", "train a model (a preset, a config file, flags for every config field)"),
    "generate": ("qkv.cli.generate", "generate text from a checkpoint, streamed token by token"),
    "chat": ("qkv.cli.chat", "chat with a model in its own chat template (KV cache kept between turns)"),
    "serve": ("qkv.cli.serve", "an OpenAI-compatible HTTP server: chat, completions, embeddings, streaming"),
    "quantize": ("qkv.cli.quantize", "write an int8 or 4-bit weight-only quantized checkpoint"),
    "merge-adapter": ("qkv.cli.merge_adapter", "fold LoRA adapters (a --lora run's or PEFT's) into the weights"),
    "export": ("qkv.cli.export", "write a checkpoint as a Hugging Face directory or a GGUF file (llama.cpp)"),
    "translate": ("qkv.cli.translate", "translate or summarize with an encoder-decoder; BLEU/ROUGE with references"),
    "eval": ("qkv.cli.eval", "a language model's loss and perplexity on a text file (task scores: evaluate)"),
    "bench": ("qkv.cli.bench", "speed benchmarks against transformers in the same run"),
    "embed": ("qkv.cli.embed", "sentence embeddings from an encoder and their cosine similarities"),
    "finetune": ("qkv.cli.finetune", "fine-tune an encoder (sst2, cola, upos, wnut17, squad) or a chat decoder "
                                     "(chat), whole or with LoRA adapters, then score it"),
    "evaluate": ("qkv.cli.evaluate", "a fine-tuned model's task scores (accuracy, F1, ...) and predictions "
                                     "on an eval file (perplexity: eval)"),
    "predict": ("qkv.cli.predict", "run a fine-tuned encoder on new text: label, tags or answer span"),
    "info": ("qkv.cli.info", "what a checkpoint is: family, architecture, parameters, tokenizer, how it was made"),
    "attention": ("qkv.cli.attention",
                  "attention maps of a text: PNG heat-maps, an interactive HTML page, bertviz data"),
    "next": ("qkv.cli.next_token", "the top next tokens with logits and probabilities, and the logit lens"),
    "plot": ("qkv.cli.plot", "training and validation curves of one or more runs, as a PNG"),
    "experiment": ("qkv.cli.experiment", "run an experiment that tests an architectural argument; write its report"),
}


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag prints one line (the usage of `qkv train` alone is 20 lines)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


@functools.lru_cache(maxsize=None)
def build_parser(commands: tuple[str, ...] = tuple(COMMANDS)) -> argparse.ArgumentParser:
    """The command line, built once per process. Every command is listed (``qkv --help``, "did you mean");
    only those in ``commands`` get their flags, so a run imports its own command's module and no other's
    (``main`` asks for the one named on the line; the default, every command, is what tests sweep)."""
    parser = Parser(prog="qkv", description="qkv: a readable, fast transformer library.")
    parser.add_argument("--version", action="version", version=f"qkv {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        if name not in commands:
            sub.add_parser(name, help=help_text, description=help_text)
            continue
        mod = importlib.import_module(module)
        preset_help = getattr(mod, "help_defaults", None)      # commands whose defaults come from a preset
        p = sub.add_parser(name, help=help_text, description=help_text, add_help=preset_help is None)
        if preset_help is not None:
            add_preset_help(p, preset_help)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def command_named(argv: list[str]) -> tuple[str, ...]:
    """The command a command line runs (its first word that is not a flag), or none (``qkv --help``)."""
    word = next((a for a in argv if not a.startswith("-")), None)
    return (word,) if word in COMMANDS else ()


def main(argv: list[str] | None = None) -> int:
    """Run one command. Every failure is one line on stderr and a status: 2 for bad input (``QkvError``,
    a bad flag), 130 for Ctrl-C, 141 for a closed pipe (as Unix tools), 1 for a qkv bug (its traceback only
    with QKV_DEBUG=1)."""
    parser = build_parser(command_named(sys.argv[1:] if argv is None else argv))
    try:
        args, unknown = parser.parse_known_args(argv)
    except SystemExit as e:          # a bad flag (status 2) or --help (0): a status, like every other error
        return int(e.code or 0)
    if unknown:
        print(f"qkv {args.command}: error: {_unknown_flag(parser, args.command, unknown)}", file=sys.stderr)
        return 2
    try:
        return int(args._run(args) or 0)
    except QkvError as e:
        print(f"qkv {args.command}: error: {e}", file=sys.stderr)
        return 2
    except TrainingInterrupted as e:
        print(f"qkv {args.command}: interrupted: step {e.step} is saved in {e.out_dir}; continue with "
              f"`qkv {args.command} --resume {e.out_dir}`", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"qkv {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:          # `qkv generate ... | head`: the reader left; stop quietly
        try:                         # no second error when Python flushes stdout at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 141
    except MemoryError:
        print(f"qkv {args.command}: error: out of memory; use a smaller model, batch or input", file=sys.stderr)
        return 2
    except Exception as e:           # a bug in qkv, not the user's mistake: still one line, and how to see more
        if os.environ.get("QKV_DEBUG"):
            raise
        print(f"qkv {args.command}: internal error: {type(e).__name__}: {e} (QKV_DEBUG=1 shows the traceback; "
              f"please report it)", file=sys.stderr)
        return 1


def _unknown_flag(parser: argparse.ArgumentParser, command: str, unknown: list[str]) -> str:
    """Name the unknown flag, its likely spelling and the command's help (argparse names only `qkv`)."""
    flags = [f for f in unknown if f.startswith("-")]
    if not flags:
        return f"unexpected argument(s) {' '.join(unknown)} (see `qkv {command} --help`)"
    known = _option_strings(parser, command)
    close = difflib.get_close_matches(flags[0].split("=")[0], known, n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"unknown flag {flags[0]} for qkv {command}{hint} (see `qkv {command} --help`)"


def _option_strings(parser: argparse.ArgumentParser, command: str) -> list[str]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    parsers, names = [sub], []
    while parsers:
        p = parsers.pop()
        for action in p._actions:
            names += action.option_strings
            if isinstance(action, argparse._SubParsersAction):
                parsers += action.choices.values()
    return names


if __name__ == "__main__":
    sys.exit(main())
