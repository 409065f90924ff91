"""Errors a person can act on.

Every error qkv raises on bad input is a ``QkvError`` whose message names the fix. The CLI prints the
message on one line and exits non-zero; library users can catch the subclasses they care about.
"""

import importlib


class QkvError(Exception):
    """Base class: the message says what went wrong and what to change."""


class ConfigError(QkvError, ValueError):
    """An unknown preset or key, or a field value out of range."""


class InputError(QkvError, ValueError):
    """Bad token ids, a prompt too long for the context, bad sampling parameters."""


class DataError(QkvError, ValueError):
    """A training file that is empty, too short, or not UTF-8."""


class CheckpointError(QkvError, OSError):
    """A checkpoint directory that is missing, truncated, corrupt or inconsistent."""


class MissingExtraError(QkvError, ImportError):
    """An optional package is not installed; the message names the qkv extra that brings it."""


def counted(n: int, noun: str) -> str:
    """``n`` and ``noun`` in the number it takes, for messages: ``counted(1, "head")`` -> '1 head'."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def article(word: str) -> str:
    """``word`` with its indefinite article: 'an encoder', 'a decoder' (by the first letter, enough for the
    names qkv prints)."""
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


def require_extra(module: str, extra: str, feature: str, package: str | None = None):
    """Import ``module`` for ``feature``, or raise MissingExtraError naming the extra (pyproject.toml's
    optional-dependencies) and the one package. Optional packages are imported here, where they are used,
    so that the base install (``pip install qkv``) runs every command that does not need them.

    >>> require_extra("fastapi", "serve", "qkv serve")          # doctest: +SKIP  (a base install)
    MissingExtraError: qkv serve needs the serve extra: pip install 'qkv[serve]' (or pip install fastapi)
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        package = package or module.split(".")[0]
        raise MissingExtraError(f"{feature} needs the {extra} extra: pip install 'qkv[{extra}]' "
                                f"(or pip install {package})") from None
