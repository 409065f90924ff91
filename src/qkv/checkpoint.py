"""The checkpoint directory: save and load a model (and its tokenizer) safely.

    DIR/config.json         {"model_type": "qkv-gpt", "qkv_version": ..., "model": {...}, "train": {...}}
    DIR/model.safetensors   weights (no pickle)
    DIR/tokenizer.json      the tokenizer, in the `tokenizers` library's format
    DIR/trainer_state.pt    training runs only: optimizer, step, RNG and data position (weights_only load)
    DIR/metrics.jsonl       training runs only: one JSON object per evaluation

Writes are atomic (``qkv.rundir.atomic_dir``): everything goes to a fresh temp directory beside DIR, which
then replaces DIR in one rename; a kill at any moment leaves either the old or the new checkpoint in place,
never a mix, and files that qkv did not write are kept.
``load`` also reads Hugging Face directories of supported model types and GGUF files (see ``qkv.interop``);
a checkpoint whose config.json has a ``quantization`` layout holds int8 / 4-bit Linear layers (``qkv.quant``).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from .config import ModelConfig, build
from .errors import CheckpointError, ConfigError
from .models import MODEL_TYPES
from .models.encoder import HEADS, Encoder, LabelledEncoder
from .generation_defaults import from_generation_config
from .quant import apply_layout, is_quantized, layout_of, quantize_model
from .rundir import atomic_dir, resolve_dir
from .runtime import choose_python_api_threads
from .tokenizers import Tokenizer

SRC_TOKENIZER_FILE = "tokenizer_src.json"
# Hugging Face config.json "model_type" -> (module, loader, the family of the model it gives)
HF_MODEL_TYPES = {"gpt2": ("qkv.interop.hf_gpt2", "load_gpt2", "decoder"),
                  "bert": ("qkv.interop.hf_bert", "load_bert", "encoder"),
                  "vit": ("qkv.interop.hf_vit", "load_vit", "image classifier"),
                  "swin": ("qkv.interop.hf_swin", "load_swin", "image classifier"),
                  **{t: ("qkv.interop.hf_llama", "load_llama", "decoder") for t in ("llama", "mistral", "qwen2")}}


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


def tied_aliases(model) -> dict[str, str]:
    """{alias: canonical} for parameters registered under several names (tied embeddings and heads)."""
    first: dict[int, str] = {}
    aliases = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            aliases[name] = first[id(p)]
        else:
            first[id(p)] = name
    return aliases


def save(model, directory: str | Path, tokenizer: Tokenizer | None = None) -> Path:
    """Save a model (and tokenizer) as a qkv checkpoint directory, atomically."""
    with atomic_dir(directory) as tmp:
        write_model_files(tmp, model, tokenizer)
    return Path(directory)


def read_json(path: Path, missing: str) -> dict:
    """The JSON object in ``path``; ``missing`` is the error message (with its fix) when the file is absent."""
    if not path.is_file():
        raise CheckpointError(missing)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); the file is corrupt, fix or re-save it") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object; fix or re-save it")
    return data


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


def family(directory: str | Path) -> tuple[str, str]:
    """(family, model_type) of a checkpoint from its config.json alone, without reading the weights:
    family is "decoder", "encoder", "fine-tuned encoder" or "encoder-decoder" (each class's ``family``)."""
    if is_gguf(directory):
        return "decoder", "gguf"
    d = resolve_dir(directory)
    model_type = read_config(d)["model_type"]
    if model_type in HF_MODEL_TYPES:
        return HF_MODEL_TYPES[model_type][2], model_type
    if model_type in MODEL_TYPES:
        return MODEL_TYPES[model_type].family, model_type
    raise _unsupported(model_type, d)


def _unsupported(model_type: str, d: Path) -> CheckpointError:
    return CheckpointError(f"model_type {model_type!r} in {d / 'config.json'} is not supported; qkv loads "
                           f"{sorted(MODEL_TYPES) + sorted(HF_MODEL_TYPES)}")


def load_weights(model, path: Path) -> None:
    """Load safetensors weights into ``model``, turning every failure into a CheckpointError."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; the checkpoint is incomplete (re-run training or re-save)")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is truncated or corrupt ({e}); restore it or re-save the model") from None
    for alias, canonical in tied_aliases(model).items():
        if canonical in state:
            state.setdefault(alias, state[canonical])
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path} does not match config.json: missing {missing[:5]}, unexpected "
                              f"{unexpected[:5]}; the config and weights come from different models")
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise CheckpointError(f"{path}: {k} has shape {tuple(v.shape)} but config.json implies "
                                  f"{tuple(expected[k].shape)}; the config and weights do not match")
    model.load_state_dict(state)


def is_gguf(path: str | Path) -> bool:
    """A .gguf name, or a file that starts with GGUF's magic."""
    p = Path(path)
    if p.suffix == ".gguf":
        return True
    if not p.is_file():
        return False
    with open(p, "rb") as fh:
        return fh.read(4) == b"GGUF"


def load(directory: str | Path, device: str | torch.device | None = None, quantized: bool = False,
         adapter: str | Path | None = None):
    """Load a qkv checkpoint, a supported Hugging Face directory or a GGUF file. Returns the model in eval
    mode, with ``model.tokenizer`` set (None when there are no tokenizer files), as its files hold it: the
    speed swaps for running it are ``qkv.for_inference``'s, which every inference command calls after this.

    quantized: a GGUF file keeps its Q8_0 / Q4_x weights in int8 / 4-bit modules (``qkv.quant``) instead of
    dequantizing them to float32; any other float checkpoint is quantized to int8 on load. A checkpoint
    written by ``qkv quantize`` loads quantized either way.

    adapter: a LoRA adapter directory in PEFT's format (``qkv.adapters``) put on the loaded base (frozen).

    The threads are qkv.runtime's choice for the Python API (unless the program chose): dequantizing a
    GGUF with torch's default two threads while another process held a core took 12-14 s, with one 2-3 s.
    """
    choose_python_api_threads()
    if is_gguf(directory):
        from .interop.gguf import load_gguf
        model = with_adapter(load_gguf(directory, quantized), adapter)
        return model.to(device) if device is not None else model
    if Path(directory).is_file():
        raise CheckpointError(f"{directory} is a file; pass a checkpoint directory or a .gguf file")
    d = resolve_dir(directory)
    config = read_config(d)
    model_type = config["model_type"]
    if model_type in HF_MODEL_TYPES:
        import importlib
        module, fn, _ = HF_MODEL_TYPES[model_type]
        model = getattr(importlib.import_module(module), fn)(d)
    elif model_type in MODEL_TYPES:
        try:
            cfg = build(ModelConfig, config.get("model", {}), f"{d / 'config.json'}")
        except (ConfigError, TypeError) as e:
            raise CheckpointError(f"{d / 'config.json'} holds an invalid model config: {e}") from None
        cls = MODEL_TYPES[model_type]
        model = cls.from_config(cfg, config) if hasattr(cls, "from_config") else cls(cfg)
        if "quantization" in config:
            try:
                apply_layout(model, config["quantization"])
            except (ConfigError, AttributeError, TypeError) as e:
                raise CheckpointError(f"{d / 'config.json'} has an invalid quantization layout ({e}); "
                                      f"re-run qkv quantize") from None
        if "lora" in config:                      # a `qkv finetune --lora` run: its adapters hold weights too
            add_saved_lora(model, config["lora"])
        load_weights(model, d / "model.safetensors")
        model.tokenizer = Tokenizer.from_dir(d)
        if (d / SRC_TOKENIZER_FILE).is_file():
            model.src_tokenizer = Tokenizer.from_file(d / SRC_TOKENIZER_FILE)
    else:
        raise _unsupported(model_type, d)
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


def add_saved_lora(model, saved: dict) -> None:
    """The adapters a LoRA run's config.json describes, before its weights (which hold theirs) load."""
    from .adapters import LoRAConfig, add_lora
    add_lora(model, build(LoRAConfig, {**saved, "targets": tuple(saved.get("targets", ()))}, "config.json 'lora'"))


def from_pretrained_encoder(source: str | Path | Encoder, head: str, labels: Sequence[str] | None = None,
                            tokenizer=None) -> Encoder:
    """A ``HEADS[head]`` model (train mode) with the encoder weights of ``source`` and a new head.

    source: a checkpoint directory (qkv encoder or Hugging Face BERT) or a loaded ``Encoder``.
    labels: the label names, for "classify" and "tag". tokenizer: default, the checkpoint's own.
    """
    if head not in HEADS:
        raise ConfigError(f"unknown head {head!r}; choose one of {sorted(HEADS)}")
    if isinstance(source, Encoder):
        encoder = source
    else:
        encoder = load(source)
        if not isinstance(encoder, Encoder):
            raise CheckpointError(f"{source} holds a {encoder.model_type!r} model, not an encoder; fine-tune "
                                  f"from a qkv-bert* checkpoint or a Hugging Face BERT directory")
    tokenizer = tokenizer if tokenizer is not None else getattr(encoder, "tokenizer", None)
    if tokenizer is None:
        raise CheckpointError(f"{source} has no tokenizer (tokenizer.json or vocab.txt); fine-tuning needs the "
                              f"one the encoder was trained with: copy it into the directory or pass tokenizer=")
    if tokenizer.vocab_size > encoder.cfg.vocab_size:
        raise CheckpointError(f"the tokenizer has {tokenizer.vocab_size} tokens but the encoder only "
                              f"{encoder.cfg.vocab_size}; use the tokenizer saved with this encoder")
    cls = HEADS[head]
    if issubclass(cls, LabelledEncoder):
        model = cls(encoder.cfg, labels if labels is not None else [])
    elif labels is not None:
        raise ConfigError(f"head {head!r} takes no labels; pass labels only for 'classify' and 'tag'")
    else:
        model = cls(encoder.cfg)
    trunk = {k: v for k, v in encoder.state_dict().items() if not k.startswith("head.")}
    missing, unexpected = model.load_state_dict(trunk, strict=False)
    assert not unexpected and all(k.startswith("head.") for k in missing), (missing, unexpected)
    model.tokenizer = tokenizer
    return model.train()
