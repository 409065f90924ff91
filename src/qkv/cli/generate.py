"""`qkv generate PATH --prompt TEXT`: continue a prompt with a checkpoint, streamed token by token.

    qkv generate runs/shakespeare-char --prompt "ROMEO:" --max-new-tokens 200 --temperature 0.8 --top-p 0.95
    qkv generate SmolLM2-135M-Instruct.Q4_1.gguf --chat "What is the capital of France?" --temperature 0

Prints the prompt, then each piece of the continuation as soon as it is safe to show (see
``qkv.generate.stream``). Every flag is a field of ``qkv.generate.GenerationConfig`` and takes its default
from there; a bad value is one error line (exit status 2) naming the fix.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from ..errors import InputError
from ..family import Family
from ..generate import GenerationConfig
from .flags import (add_chat_template_argument, add_dataclass_flags, add_device_argument, add_kv_cache_argument,
                    add_load_arguments, path_arg, unescaped)

DEFAULTS = GenerationConfig()

# GenerationConfig fields that are not one of the generated flags: --stop is repeatable and takes escapes;
# --no-cache, --json-schema FILE and --context-shift are qkv generate's alone (written in add_arguments);
# logit_bias (a dict of token ids) is the server's. Every other field is a flag of generate and chat, with
# its comment as the help: a new sampling parameter in GenerationConfig is a flag with nothing added here.
NOT_FLAGS = ("stop", "use_cache", "json_schema", "context_shift", "logit_bias")
SAMPLING_FLAGS = tuple(f.name for f in dataclasses.fields(GenerationConfig) if f.name not in NOT_FLAGS)


def add_sampling_arguments(parser: argparse.ArgumentParser, defaults: GenerationConfig = DEFAULTS) -> None:
    """The GenerationConfig flags (shared by `qkv generate` and `qkv chat`), --stop, and how the model loads
    and runs (--threads, --quantized, --kv-cache-dtype, --device, --chat-template)."""
    add_dataclass_flags(parser, GenerationConfig, "sampling (GenerationConfig fields)",
                        shown={name: getattr(defaults, name) for name in SAMPLING_FLAGS}, only=SAMPLING_FLAGS)
    parser.add_argument("--stop", action="append", default=[], metavar="S", type=unescaped,
                        help="stop before this string (repeatable; \\n and \\t are a newline and a tab, as in "
                             "--stop '\\n\\n'); it is not printed")
    add_load_arguments(parser)
    add_kv_cache_argument(parser)
    add_device_argument(parser, "the model runs")
    add_chat_template_argument(parser)


def sampling_config(args: argparse.Namespace, defaults: GenerationConfig = DEFAULTS, **more) -> GenerationConfig:
    """The GenerationConfig the flags describe, on top of ``defaults``."""
    given = {name: getattr(args, name) for name in SAMPLING_FLAGS if hasattr(args, name)}
    return dataclasses.replace(defaults, **given, stop=tuple(args.stop), **more)


def load_for_decoding(path: str, args: argparse.Namespace, command: str):
    """``qkv.load`` of a decoder, with the decode thread policy applied first; it must have a tokenizer."""
    from ..conversation import read_chat_template
    from ..runtime import inference_device
    from ._common import load_model, require_family
    require_family(path, command, Family.DECODER)
    device = inference_device(args.device)
    template = read_chat_template(args.chat_template) if args.chat_template else None   # checked before the load
    model = load_model(path, args, device)
    if model.tokenizer is None:
        raise InputError(f"{path} has no tokenizer (tokenizer.json, or vocab.json + merges.txt); "
                         f"add one to generate text")
    if template is not None:
        model.tokenizer.chat_template = template
    return model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", type=path_arg, metavar="PATH",
                        help="a qkv checkpoint, a Hugging Face directory (GPT-2, Llama, Mistral, Qwen2) "
                             "or a .gguf file")
    parser.add_argument("--prompt", default="", help="text to continue (default: start from bos/eos)")
    parser.add_argument("--chat", metavar="MESSAGE", default=None,
                        help="one chat turn: the message goes through the model's chat template; prints the reply")
    parser.add_argument("--system", metavar="TEXT", default=None, help="with --chat: a system message")
    add_sampling_arguments(parser)
    parser.add_argument("--context-shift", action="store_true",
                        help="past the model's context, drop the oldest half of the window and keep going "
                             "(as llama.cpp's --context-shift; the kept half is recomputed)")
    parser.add_argument("--no-cache", dest="use_cache", action="store_false",
                        help="recompute the whole sequence every step (slow; for comparison)")
    parser.add_argument("--json-schema", metavar="FILE", type=path_arg, default=None,
                        help="constrain the output to JSON matching the schema in FILE (see qkv.grammar)")


def read_schema(path: str | None) -> dict | None:
    """The JSON schema in ``path`` (None without one); a missing or malformed file is one error line."""
    if path is None:
        return None
    from pathlib import Path
    from ..grammar import check_schema, require_grammar_engine
    require_grammar_engine()                # the grammar engine, asked for before the model loads
    p = Path(path)
    if not p.is_file():
        raise InputError(f"--json-schema {path} is not a file; give a JSON schema file")
    try:
        return check_schema(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"--json-schema {path} is not UTF-8 text; give a JSON schema file") from None


def run(args: argparse.Namespace) -> int:
    from ..conversation import chat_stream
    from ..generate import stream

    if args.chat is not None and args.prompt:
        raise InputError("give --prompt (plain continuation) or --chat (a chat turn), not both")
    if args.system is not None and args.chat is None:
        raise InputError("--system goes with --chat; add --chat MESSAGE")
    cfg = sampling_config(args, use_cache=args.use_cache, json_schema=read_schema(args.json_schema),
                          context_shift=args.context_shift)
    model = load_for_decoding(args.directory, args, "generate")
    if args.chat is not None:
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + \
                   [{"role": "user", "content": args.chat}]
        pieces, shown = chat_stream(model, messages, cfg), ""
    else:                                    # with a schema, stdout is the JSON alone (not the prompt before it)
        pieces = stream(model, model.tokenizer, args.prompt, cfg)
        shown = "" if cfg.json_schema is not None else args.prompt
    first = next(pieces, "")                 # validate everything before printing anything
    sys.stdout.write(shown + first)
    sys.stdout.flush()
    reply = [first]
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
        reply.append(piece)
    sys.stdout.write("\n")
    if cfg.json_schema is not None:
        _check_complete_json("".join(reply), cfg.max_new_tokens)
    return 0


def _check_complete_json(text: str, max_new_tokens: int) -> None:
    """The grammar keeps every prefix valid, so output that does not parse was cut by the token limit:
    say so (exit 2) rather than hand a consumer half a JSON value with status 0."""
    import json
    try:
        json.loads(text)
    except ValueError:
        raise InputError(f"the JSON output was cut at --max-new-tokens {max_new_tokens} before it was complete; "
                         f"raise --max-new-tokens") from None
