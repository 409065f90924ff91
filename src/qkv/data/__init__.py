"""Datasets and batching. ``shakespeare.txt`` (public domain) ships here as the built-in default corpus."""

from pathlib import Path

BUNDLED_CORPUS = Path(__file__).with_name("shakespeare.txt")
