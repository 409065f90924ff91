"""Reading a Hugging Face ``save_pretrained`` directory, whatever the model: config.json, weight files
(one safetensors file, shards named by an index, or the older pytorch_model.bin), tensor-shape checks,
and building a qkv model around the loaded tensors without a wasted random init.

    DIR/config.json                         {"model_type": ..., sizes and options}
    DIR/model.safetensors                   one file
    DIR/model.safetensors.index.json        {"weight_map": {tensor name: shard file}} + the shards
    DIR/pytorch_model.bin (+ .index.json)   torch.save'd dict, read with weights_only=True

Each model module (hf_gpt2, hf_bert) maps names and layouts; everything here is shared by all of them.
Safety: safetensors first; a .bin is read with ``torch.load(weights_only=True)``, which refuses to run
pickled code; shard names must be plain file names in the same directory.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from ..errors import CheckpointError
from ..rundir import read_json

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json",
                "pytorch_model.bin", "pytorch_model.bin.index.json")


def read_hf_json(path: Path) -> dict:
    return read_json(path, f"{path} does not exist; pass a directory written by save_pretrained")


def _read_one(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            tensors = load_file(str(path))
        else:   # weights_only: plain tensors only; a pickle that wants to run code is refused
            tensors = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist; copy it next to config.json") from None
    except Exception as e:  # safetensors and torch.load raise many types for bad bytes
        raise CheckpointError(f"{path} could not be read ({type(e).__name__}: {e}); it is truncated, corrupt "
                              f"or not a weights file: download or save it again") from None
    if not isinstance(tensors, dict) or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise CheckpointError(f"{path} does not hold a flat dict of tensors; re-save it with save_pretrained")
    return tensors


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of a save_pretrained directory, from one file or the shards an index names."""
    name = next((n for n in WEIGHT_FILES if (directory / n).is_file()), None)
    if name is None:
        raise CheckpointError(f"no weights in {directory}: expected one of {list(WEIGHT_FILES)}; "
                              f"copy the weights next to config.json")
    if not name.endswith(".index.json"):
        return _read_one(directory / name)
    weight_map = read_hf_json(directory / name).get("weight_map")
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{directory / name} has no 'weight_map' object; re-save the checkpoint")
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        if not isinstance(shard, str) or Path(shard).name != shard:   # never read outside the directory
            raise CheckpointError(f"{directory / name} names shard {shard!r}, which is not a plain file "
                                  f"name in the same directory; re-save the checkpoint")
        tensors.update(_read_one(directory / shard))
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
        raise CheckpointError(f"{directory / name} lists {missing[:3]} but no shard holds them; "
                              f"a shard is stale or missing: download or save the checkpoint again")
    return tensors


def check_shapes(tensors: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], where: str,
                 sizes: str, what: str, extra_fix: str) -> None:
    """Name the first missing or mis-shaped tensor, then any extra ones.

    sizes: the config.json sizes the shapes come from, quoted in every message;
    what: the model the file should hold ("a GPT-2 LM"); extra_fix: what to do about extra tensors.
    """
    for key, shape in expected.items():
        if key not in tensors:
            raise CheckpointError(f"{where} has no tensor {key!r} (expected shape {shape} from config.json: "
                                  f"{sizes}); the weights and config.json do not match: re-save both")
        if tuple(tensors[key].shape) != shape:
            raise CheckpointError(f"{where}: tensor {key!r} has shape {tuple(tensors[key].shape)} but "
                                  f"config.json ({sizes}) expects {shape}; fix config.json to match the weights "
                                  f"or re-save both together")
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise CheckpointError(f"{where} has tensors {what} with config.json ({sizes}) does not: "
                              f"{extra[:5]}{' ...' if len(extra) > 5 else ''}; {extra_fix}")
