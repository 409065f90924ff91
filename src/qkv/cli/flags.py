"""Command-line flags generated from the config dataclasses, so there is one list of options.

Every field ``foo_bar`` becomes ``--foo-bar``; its type hint gives the parser (``Literal`` -> choices,
``bool`` -> ``--x/--no-x``, ``X | None`` accepts ``none``). Flags default to "not given", so only the
values a person typed override the preset or config file.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from typing import Literal


KIND_WORDS = {int: "an integer", float: "a number"}


def value_parser(base: type, flag: str, optional: bool = False):
    """An argparse ``type`` whose error names the flag and what it takes (``none`` allowed if optional)."""
    def parse(text: str):
        if optional and text.lower() == "none":
            return None
        try:
            return base(text)
        except ValueError:
            kind = KIND_WORDS.get(base, base.__name__) + (" or none" if optional else "")
            raise argparse.ArgumentTypeError(f"{flag} expects {kind}, got {text!r}") from None
    parse.__name__ = base.__name__ if not optional else f"{base.__name__} or none"
    return parse


def unescaped(text: str) -> str:
    r"""A flag value with \n, \t, \r and \\ turned into what a shell cannot type inside quotes:
    ``--stop "\n\n"`` stops at a blank line."""
    return re.sub(r"\\([nrt\\])", lambda m: ESCAPES[m[1]], text)


ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\"}


def _parser_for(hint, name: str):
    args = typing.get_args(hint)
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args
    base = next(a for a in args if a is not type(None)) if optional else hint
    return value_parser(base, "--" + name.replace("_", "-"), optional)


def add_dataclass_flags(parser: argparse.ArgumentParser, cls, title: str, shown: dict | None = None) -> None:
    """One flag per field of ``cls``; ``shown`` are the defaults that apply (a preset's), for the help text."""
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(cls)
    shown = shown or {}
    for f in dataclasses.fields(cls):
        flag, hint = "--" + f.name.replace("_", "-"), hints[f.name]
        if f.name in shown:
            default = f"(default {shown[f.name]})"
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            default = "(required)"
        else:
            default = f"(default {f.default if f.default is not dataclasses.MISSING else f.default_factory()})"
        if hint is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=default)
        elif typing.get_origin(hint) is Literal:
            group.add_argument(flag, dest=f.name, choices=typing.get_args(hint), default=argparse.SUPPRESS,
                               help=default)
        else:
            group.add_argument(flag, dest=f.name, type=_parser_for(hint, f.name), default=argparse.SUPPRESS,
                               metavar=f.name.upper(), help=default)


def collect(args: argparse.Namespace, cls) -> dict:
    """The fields of ``cls`` that were given on the command line."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
