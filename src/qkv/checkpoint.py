"""The qkv checkpoint directory: write one (atomically) and read one back.

    DIR/config.json         {"model_type": "qkv-gpt", "qkv_version": ..., "model": {...}, "train": {...}}
    DIR/model.safetensors   weights (no pickle)
    DIR/tokenizer.json      the tokenizer, in the `tokenizers` library's format
    DIR/trainer_state.pt    training runs only: optimizer, step, RNG and data position (weights_only load)
    DIR/metrics.jsonl       training runs only: one JSON object per evaluation

Writes are atomic (``qkv.rundir.atomic_dir``): everything goes to a fresh temp directory beside DIR, which
then replaces DIR in one rename; a kill at any moment leaves either the old or the new checkpoint in place,
never a mix, and files that qkv did not write are kept. A checkpoint whose config.json has a
``quantization`` layout holds int8 / 4-bit Linear layers (``qkv.quant``).

``load_checkpoint`` is this format's loader (``LOADERS``, one row per qkv model type); ``qkv.load``
(``qkv.loading``) picks it, a Hugging Face loader or the GGUF one. ``load_weights`` reads the weights into
a model that exists already (a resumed run's, whose optimizer holds its parameters).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import ModelConfig, build
from .errors import CheckpointError, ConfigError
from .models import MODEL_TYPES
from .quant import apply_layout, is_quantized, layout_of
from .rundir import atomic_dir, read_json, resolve_dir
from .tokenizers import Tokenizer
from .version import __version__
from .weights import model_from_state, tied_aliases, with_aliases

SRC_TOKENIZER_FILE = "tokenizer_src.json"


def write_model_files(directory: Path, model, tokenizer: Tokenizer | None, extra_config: dict | None = None,
                      state: dict | None = None):
    """Write config.json, model.safetensors and tokenizer.json into an existing (temp) directory.
    ``state``: the weights when ``model`` does not hold them whole (FSDP2's shards gathered by the trainer)."""
    # Models with more than a ModelConfig (task heads and their labels) add a JSON-able ``extra_config()``;
    # ``MODEL_TYPES[type].from_config(cfg, config)`` rebuilds them from it.
    own = model.extra_config() if hasattr(model, "extra_config") else {}
    if is_quantized(model):                          # which Linear layers hold int8 / 4-bit weights
        own["quantization"] = layout_of(model)
    config = {"model_type": model.model_type, "qkv_version": __version__,
              "model": dataclasses.asdict(model.cfg), **own, **(extra_config or {})}
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    aliases = tied_aliases(model)                    # safetensors refuses shared storage; re-tied on load
    state = {k: v.detach().cpu().contiguous() for k, v in (model.state_dict() if state is None else state).items()
             if k not in aliases}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save(directory / "tokenizer.json")
    if getattr(model, "src_tokenizer", None) is not None:    # encoder-decoders with a separate source vocab
        model.src_tokenizer.save(directory / SRC_TOKENIZER_FILE)


def save(model, directory: str | Path, tokenizer: Tokenizer | None = None) -> Path:
    """Save a model (and tokenizer) as a qkv checkpoint directory, atomically."""
    with atomic_dir(directory) as tmp:
        write_model_files(tmp, model, tokenizer)
    return Path(directory)


def read_config(directory: str | Path) -> dict:
    d = resolve_dir(directory)
    if not d.is_dir():
        raise CheckpointError(_not_found(Path(directory)))
    path = d / "config.json"
    config = read_json(path, f"{d} has no config.json; it is not a checkpoint (point at the run directory)")
    if "model_type" not in config:
        raise CheckpointError(f"{path} has no 'model_type'; expected a qkv or Hugging Face config.json")
    return config


def _not_found(path: Path) -> str:
    """Why there is no checkpoint at ``path``, and what to do. A name such as ``gpt2``,
    ``HuggingFaceTB/SmolLM2-135M-Instruct`` or ``smollm2:135m`` whose first part is no folder here is taken
    for a model hub's name: qkv never downloads (DESIGN.md), so say how to get a local copy."""
    text = str(path)
    if path.exists():
        return (f"{text} is a file, not a checkpoint directory; point at the folder holding config.json "
                f"(or a .gguf file)")
    hub = re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?(:[\w.-]+)?", text) and not Path(path.parts[0]).exists()
    if hub and ":" in text:
        return (f"no checkpoint at {text}; qkv never downloads models, and {text} looks like an Ollama tag: pass "
                f"the path of the model's .gguf file instead")
    if hub:
        return (f"no checkpoint at {text}; qkv never downloads models: if {text} is a Hugging Face model, get a "
                f"local copy with `huggingface-cli download {text} --local-dir DIR` and pass DIR (or pass a .gguf "
                f"file), or train one with `qkv train`")
    return f"no checkpoint directory at {text}; check the path, or train one with `qkv train`"


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint's model.safetensors, every failure a CheckpointError."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; the checkpoint is incomplete (re-run training or re-save)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is truncated or corrupt ({e}); restore it or re-save the model") from None


def check_state(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], path: Path) -> None:
    """``state`` (tied aliases filled) has exactly the names and shapes of the model's ``expected``."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path} does not match config.json: missing {missing[:5]}, unexpected "
                              f"{unexpected[:5]}; the config and weights come from different models")
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise CheckpointError(f"{path}: {k} has shape {tuple(v.shape)} but config.json implies "
                                  f"{tuple(expected[k].shape)}; the config and weights do not match")


def load_weights(model, path: Path) -> None:
    """Copy the safetensors weights at ``path`` into ``model``, which exists already (a resumed run's)."""
    state = with_aliases(model, read_state(path))
    check_state(model.state_dict(), state, path)
    model.load_state_dict(state)


def load_checkpoint(directory: str | Path):
    """The model of a qkv checkpoint directory (train mode), with ``.tokenizer`` (None without the files)."""
    d = resolve_dir(directory)
    config = read_config(d)
    try:
        cfg = build(ModelConfig, config.get("model", {}), f"{d / 'config.json'}")
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{d / 'config.json'} holds an invalid model config: {e}") from None
    cls = MODEL_TYPES[config["model_type"]]

    def new_model():
        model = cls.from_config(cfg, config) if hasattr(cls, "from_config") else cls(cfg)
        if "quantization" in config:
            try:
                apply_layout(model, config["quantization"])
            except (ConfigError, AttributeError, TypeError) as e:
                raise CheckpointError(f"{d / 'config.json'} has an invalid quantization layout ({e}); "
                                      f"re-run qkv quantize") from None
        if "lora" in config:                      # a `qkv finetune --lora` run: its adapters hold weights too
            add_saved_lora(model, config["lora"])
        return model

    weights = d / "model.safetensors"
    model = model_from_state(new_model, read_state(weights), f"the weights in {weights}",
                             check=lambda expected, state: check_state(expected, state, weights))
    model.tokenizer = Tokenizer.from_dir(d)
    if (d / SRC_TOKENIZER_FILE).is_file():
        model.src_tokenizer = Tokenizer.from_file(d / SRC_TOKENIZER_FILE)
    return model


def add_saved_lora(model, saved: dict) -> None:
    """The adapters a LoRA run's config.json describes, before its weights (which hold theirs) load."""
    from .adapters import LoRAConfig, add_lora
    add_lora(model, build(LoRAConfig, {**saved, "targets": tuple(saved.get("targets", ()))}, "config.json 'lora'"))


# config.json "model_type" -> (the loader, the class of the model it gives) for qkv's own checkpoints
LOADERS = {model_type: (load_checkpoint, cls) for model_type, cls in MODEL_TYPES.items()}
