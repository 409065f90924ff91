"""The sampling a model's authors recommend, where its files say so: Hugging Face's generation_config.json
or GGUF's ``general.sampling.*`` keys (llama.cpp's names). ``qkv serve`` uses them for the fields a request
leaves unset, as vLLM does with generation_config.json; without them OpenAI's defaults hold (temperature
1, no filter), which a small model answers with noise.

Only the fields present are taken (``do_sample`` is not read: a server request that sets a temperature
samples). A value the sampler would refuse is left out with a warning, so one bad file does not turn every
request into an error.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from .errors import InputError

HF_FIELDS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
GGUF_KEYS = {"general.sampling.temp": "temperature", "general.sampling.top_p": "top_p",
             "general.sampling.top_k": "top_k", "general.sampling.min_p": "min_p",
             "general.sampling.penalty_repeat": "repetition_penalty"}


def _checked(values: dict, source: str) -> dict:
    from .generate import GenerationConfig
    kept = {}
    for name, value in values.items():
        try:
            GenerationConfig(**{name: value})
        except (InputError, TypeError) as e:
            warnings.warn(f"{source}: {name} left out of the sampling defaults ({e})", stacklevel=3)
            continue
        kept[name] = value
    return kept


def from_generation_config(directory: str | Path) -> dict:
    """{field: value} from ``directory``'s generation_config.json ({} without one)."""
    path = Path(directory) / "generation_config.json"
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        warnings.warn(f"{path} is not valid JSON; no sampling defaults taken from it", stacklevel=2)
        return {}
    values = {k: config[k] for k in HF_FIELDS if isinstance(config, dict) and config.get(k) is not None}
    return _checked(values, str(path))


def from_gguf(f) -> dict:
    """{field: value} from a ``qkv.interop.gguf.GGUFFile``'s general.sampling.* keys."""
    values = {field: f.get(key) for key, field in GGUF_KEYS.items() if f.get(key) is not None}
    values = {k: int(v) if k == "top_k" else float(v) for k, v in values.items()}
    return _checked(values, str(f.path))


def describe(defaults: dict) -> str:
    """One line for a server's start: what an unset field means."""
    if not defaults:
        return "sampling defaults: OpenAI's (temperature 1, top_p 1; the model's files set none)"
    return "sampling defaults from the model's files: " + ", ".join(f"{k} {v}" for k, v in defaults.items())
