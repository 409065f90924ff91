"""qkv's version, recorded in every checkpoint's config.json (a module of its own: checkpoint.py reads it
without importing the package it is part of)."""

__version__ = "0.1.0"
