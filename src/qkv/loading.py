"""``qkv.load``: one entry for every model qkv reads, and ``family_of``, what a model or checkpoint is.

    path                        how it is told apart          loader
    a GGUF file                 its name or magic bytes       qkv.interop.gguf_model.load_gguf
    a qkv checkpoint directory  config.json "model_type"      qkv.checkpoint.LOADERS (qkv-gpt, qkv-bert, ...)
    a Hugging Face directory    config.json "model_type"      qkv.interop.LOADERS (gpt2, bert, llama, vit, ...)

Each package keeps the table of its own formats (a model type -> its loader and the class it gives, which
names the family); this module only picks a row. Every loader builds its model the one way
(``qkv.weights.model_from_state``). What comes back is the model as its files hold it, in eval mode:
``qkv.for_inference`` (``qkv.runtime.inference``) is the separate step that readies it for running.
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import checkpoint, interop
from .errors import CheckpointError, InputError
from .family import Family
from .generation_defaults import from_generation_config
from .interop import is_gguf, load_gguf
from .quant import is_quantized, quantize_model
from .rundir import resolve_dir
from .runtime import choose_python_api_threads

LOADERS = {**checkpoint.LOADERS, **interop.LOADERS}     # config.json "model_type" -> (loader, model class)
GGUF = "gguf"                                           # the model type qkv info shows for a GGUF file


def model_type_of(path: str | Path) -> str:
    """A checkpoint's config.json ``model_type`` ("gguf" for a GGUF file), checked to be one qkv loads."""
    if is_gguf(path):
        return GGUF
    d = resolve_dir(path)
    model_type = checkpoint.read_config(d)["model_type"]
    if model_type not in LOADERS:
        what = f" ({interop.REFUSED[model_type]})" if model_type in interop.REFUSED else ""
        raise CheckpointError(f"model_type {model_type!r} in {d / 'config.json'} is not supported{what}; qkv loads "
                              f"{sorted(checkpoint.LOADERS) + sorted(interop.LOADERS)}")
    return model_type


def family_of(model_or_path) -> Family:
    """The family of a model, or of a checkpoint from its config.json alone, without reading the weights."""
    if isinstance(model_or_path, torch.nn.Module):
        family = getattr(model_or_path, "family", None)
        if family is None:
            raise InputError(f"{type(model_or_path).__name__} is not a qkv model (it names no family)")
        return Family(family)
    model_type = model_type_of(model_or_path)
    return Family.DECODER if model_type == GGUF else LOADERS[model_type][1].family


def load(directory: str | Path, device: str | torch.device | None = None, quantized: bool = False,
         adapter: str | Path | None = None):
    """Load a qkv checkpoint, a supported Hugging Face directory or a GGUF file. Returns the model in eval
    mode, with ``model.tokenizer`` set (None when there are no tokenizer files), as its files hold it: the
    speed swaps for running it are ``qkv.for_inference``'s, which every inference command calls after this.

    quantized: a GGUF file keeps its Q8_0 / Q4_x weights in int8 / 4-bit modules (``qkv.quant``) instead of
    dequantizing them to float32; any other float checkpoint is quantized to int8 on load. A checkpoint
    written by ``qkv quantize`` loads quantized either way.

    adapter: a LoRA adapter directory in PEFT's format (``qkv.adapters``) put on the loaded base (frozen).

    The threads are qkv.runtime's choice for the Python API (unless the program chose): torch's default of
    one per core stalls whenever another process holds a core (bench/README.md, "qkv.load's threads").
    """
    choose_python_api_threads()
    if is_gguf(directory):
        model = with_adapter(load_gguf(directory, quantized), adapter)
        return model.to(device) if device is not None else model
    if Path(directory).is_file():
        raise CheckpointError(f"{directory} is a file; pass a checkpoint directory or a .gguf file")
    d = resolve_dir(directory)
    loader, _ = LOADERS[model_type_of(d)]
    model = loader(d)
    if model.tokenizer is not None and model.tokenizer.vocab_size > model.cfg.vocab_size:
        raise CheckpointError(f"{d}: tokenizer has {model.tokenizer.vocab_size} tokens but the model only "
                              f"{model.cfg.vocab_size}; the tokenizer belongs to another model")
    if quantized and not is_quantized(model):
        quantize_model(model, bits=8)
    model.generation_defaults = from_generation_config(d)
    model = with_adapter(model, adapter)
    return model.to(device).eval() if device is not None else model.eval()


def with_adapter(model, adapter: str | Path | None):
    """``model`` with the LoRA adapter in ``adapter`` put on (none: unchanged)."""
    if adapter is None:
        return model
    from .adapters import load_adapter
    return load_adapter(model, adapter)
