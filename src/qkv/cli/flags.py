"""Command-line flags generated from the config dataclasses, so there is one list of options.

Every field ``foo_bar`` becomes ``--foo-bar``; its type hint gives the parser (``Literal`` -> choices,
``bool`` -> ``--x/--no-x``, ``X | None`` accepts ``none``). Flags default to "not given", so only the
values a person typed override the preset or config file.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import re
import types
import typing
from typing import Literal


KIND_WORDS = {int: "an integer", float: "a number"}


def value_parser(base: type, flag: str, optional: bool = False, minimum: int | None = None):
    """An argparse ``type`` whose error names the flag and what it takes (``none`` allowed if optional;
    ``minimum``: the smallest value, so a count or a batch size of 0 or -5 is refused where it is parsed)."""
    def parse(text: str):
        if optional and text.lower() == "none":
            return None
        try:
            value = base(text)
        except ValueError:
            unset = " (or none, to leave it unset)" if optional else ""
            raise argparse.ArgumentTypeError(f"{flag} expects {KIND_WORDS.get(base, base.__name__)}, got {text!r}"
                                             f"{unset}") from None
        if minimum is not None and value < minimum:
            words = "a positive integer" if minimum == 1 and base is int else f"{KIND_WORDS.get(base)} >= {minimum}"
            raise argparse.ArgumentTypeError(f"{flag} {text} must be {words}")
        return value
    parse.__name__ = base.__name__ if not optional else f"{base.__name__} or none"
    return parse


def positive_int(flag: str):
    """The parser of a count: a batch size, a number of rounds, threads, tokens (1 or more)."""
    return value_parser(int, flag, minimum=1)


def add_device_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """``--device``, checked by ``qkv.runtime.inference_device`` when the command runs."""
    parser.add_argument("--device", default="cpu", metavar="DEVICE",
                        help=f"cpu (default), cuda or cuda:N: where {what}")


def add_load_arguments(parser: argparse.ArgumentParser) -> None:
    """``--threads`` and ``--quantized``: how a command's model loads and runs (``_common.load_model``)."""
    parser.add_argument("--threads", type=positive_int("--threads"), default=None, metavar="N",
                        help="CPU threads (default: the cores other processes leave idle, see qkv.runtime)")
    parser.add_argument("--quantized", action="store_true",
                        help="keep a GGUF file's Q8_0/Q4_x weights quantized in memory (other float "
                             "checkpoints: int8 on load)")


def add_kv_cache_argument(parser: argparse.ArgumentParser) -> None:
    """``--kv-cache-dtype``: what a decoder's KV caches store (``_common.set_cache_dtype``)."""
    parser.add_argument("--kv-cache-dtype", choices=["float32", "float16"], default=None,
                        help="store the KV cache's keys and values in this dtype (default: the model's); "
                             "float16 halves the bytes a token reads at long contexts")


def add_overwrite_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """``--overwrite``, checked by ``qkv.rundir.claim_out_file`` / ``claim_out_dir`` before any work."""
    parser.add_argument("--overwrite", action="store_true",
                        help=f"replace {what} when it exists (never a file of a checkpoint)")


def add_chat_template_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--chat-template", metavar="FILE", type=path_arg, default=None,
                        help="a Jinja chat template file to use instead of the model's own")


def path_arg(text: str) -> str:
    """An argparse ``type`` for a file or folder: refuses the empty string (often a variable never set)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expects a path, got an empty string")
    return text


def unescaped(text: str) -> str:
    r"""A flag value with \n, \t, \r and \\ turned into what a shell cannot type inside quotes:
    ``--stop "\n\n"`` stops at a blank line."""
    return re.sub(r"\\([nrt\\])", lambda m: ESCAPES[m[1]], text)


ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\"}


def list_parser(item: type, flag: str, optional: bool = False):
    """An argparse ``type`` for a comma-separated list (``--depths 2,2,6``) -> a tuple of ``item``s."""
    one = value_parser(item, flag)

    def parse(text: str):
        if optional and text.lower() == "none":
            return None
        words = [w.strip() for w in text.split(",")]
        if not all(words):
            plural, example = {int: ("integers", "2,2"), float: ("numbers", "0.5,0.5"), str: ("names", "a,b")}[item]
            raise argparse.ArgumentTypeError(f"{flag} expects comma-separated {plural} (e.g. {example}), got {text!r}")
        return tuple(one(w) for w in words)
    parse.__name__ = f"list of {item.__name__}" + (" or none" if optional else "")
    return parse


def field_parser(hint, name: str, flag: str | None = None):
    """The argparse ``type`` of a dataclass field ``name`` with type ``hint`` (``X | None`` accepts none,
    ``tuple[X, ...]`` a comma-separated list); its errors name ``flag`` (default ``--name``)."""
    args = typing.get_args(hint)
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args
    base = next(a for a in args if a is not type(None)) if optional else hint
    flag = flag or "--" + name.replace("_", "-")
    if typing.get_origin(base) is tuple:
        return list_parser(typing.get_args(base)[0], flag, optional)
    return value_parser(base, flag, optional)


def add_dataclass_flags(parser: argparse.ArgumentParser, cls, title: str, shown: dict | None = None,
                        only: tuple[str, ...] | None = None) -> None:
    """One flag per field of ``cls`` (or per field named in ``only``), described by the field's comment in the
    class source; ``shown`` are the defaults that apply (a preset's), for the help text."""
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    for f in dataclasses.fields(cls):
        if only is not None and f.name not in only:
            continue
        flag, hint = "--" + f.name.replace("_", "-"), hints[f.name]
        if hint is bool:
            action = group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                        default=argparse.SUPPRESS)
        elif typing.get_origin(hint) is Literal:
            action = group.add_argument(flag, dest=f.name, choices=typing.get_args(hint), default=argparse.SUPPRESS)
        else:
            action = group.add_argument(flag, dest=f.name, type=field_parser(hint, f.name), default=argparse.SUPPRESS,
                                        metavar=f.name.upper())
        action.comment = comments.get(f.name, "")
        if f.default is not dataclasses.MISSING:
            action.field_default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            action.field_default = f.default_factory()
        _describe(action, shown or {})


def _describe(action: argparse.Action, shown: dict) -> None:
    if action.dest in shown:
        default = f"default {_as_typed(shown[action.dest])}"
    elif hasattr(action, "field_default"):
        default = f"default {_as_typed(action.field_default)}"
    else:
        default = "required"
    if "(default" in action.comment:                    # the comment says it in words ("default: CORS off")
        text = action.comment
    else:
        text = f"{action.comment} ({default})" if action.comment else f"({default})"
    action.help = text.replace("%", "%%")                # argparse formats help strings with %


def _as_typed(value) -> str:
    """A default as one would type it: a tuple as its comma list (``2,2``)."""
    return ",".join(map(str, value)) if isinstance(value, tuple) and value else str(value)


def show_defaults(parser: argparse.ArgumentParser, shown: dict) -> None:
    """Rewrite every dataclass flag's "(default ...)" with the values that will actually apply."""
    for action in parser._actions:
        if hasattr(action, "comment"):
            _describe(action, shown)


@functools.lru_cache(maxsize=None)
def field_comments(cls) -> dict[str, str]:
    """{field: its comment} from the class source: the ``# ...`` after each field and the comment lines below
    it, so the dataclass's comments are the flags' help (one place to describe an option)."""
    try:
        lines = inspect.getsource(getattr(cls, "__wrapped__", cls)).splitlines()
    except (OSError, TypeError):
        return {}
    comments, current = {}, None
    for line in lines:
        field = re.match(r"\s+(\w+)\s*:[^#]*?(?:#\s?(.*))?$", line)
        if field and not line.lstrip().startswith("#"):
            current = field[1]
            comments[current] = (field[2] or "").strip()
        elif current and re.match(r"\s+#", line):
            comments[current] = (comments[current] + " " + line.strip().lstrip("#").strip()).strip()
        else:
            current = None
    return comments


class PresetHelp(argparse.Action):
    """``--help`` that shows the defaults of the preset that would run, given the flags typed before it
    (``qkv train --preset multi30k --help``). ``choose(namespace) -> (preset name, its values)``."""

    def __init__(self, option_strings, dest, choose, **kwargs):
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, **kwargs)
        self.choose = choose

    def __call__(self, parser, namespace, values, option_string=None):
        name, values = self.choose(namespace)
        show_defaults(parser, values)
        parser.epilog = f"Defaults shown are those of --preset {name}, the preset this command would run."
        parser.print_help()
        parser.exit()


def add_preset_help(parser: argparse.ArgumentParser, choose) -> None:
    """Give a parser made with ``add_help=False`` a ``-h/--help`` that is a ``PresetHelp``."""
    parser.add_argument("-h", "--help", action=PresetHelp, choose=choose,
                        help="show this help, with the defaults of the preset that would run, and exit")


def collect(args: argparse.Namespace, cls) -> dict:
    """The fields of ``cls`` that were given on the command line."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
