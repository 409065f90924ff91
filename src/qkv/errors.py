"""Errors a person can act on.

Every error qkv raises on bad input is a ``QkvError`` whose message names the fix. The CLI prints the
message on one line and exits non-zero; library users can catch the subclasses they care about.
"""


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
