"""A state dict into a model: the one way every loader (qkv checkpoints, Hugging Face, GGUF) builds one.

    model = model_from_state(lambda: GPT(cfg), state, "the weights in DIR")

The model is built on the meta device (shapes only: no memory, no random init, which for a 100M model
costs seconds) and the loaded tensors are assigned in place of the empty ones, each cast to the dtype the
module declares (float32 for float layers; int8 codes and bfloat16 scales for quantized ones). Tied
parameters (one Parameter under two names: an embedding and the head that reads it) are saved once
(safetensors refuses shared storage); ``with_aliases`` fills the second name from the first and, after
the assignment made them two, ``model_from_state`` ties them again. Nothing here knows a file format.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn

from .errors import CheckpointError


def tied_aliases(model: nn.Module) -> dict[str, str]:
    """{alias: canonical} for parameters registered under several names (tied embeddings and heads)."""
    first: dict[int, str] = {}
    aliases = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            aliases[name] = first[id(p)]
        else:
            first[id(p)] = name
    return aliases


def with_aliases(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with each tied alias of ``model`` filled from its canonical name (a new dict)."""
    state = dict(state)
    for alias, canonical in tied_aliases(model).items():
        if canonical in state:
            state.setdefault(alias, state[canonical])
    return state


class _SkipInit(torch.overrides.TorchFunctionMode):
    """``nn.init`` calls return their tensor untouched. Under ``meta_device`` there are no values to fill,
    and torch's meta ``normal_`` is a Python decomposition whose first call imports torch._dynamo: 1.3 s of
    every load of a model built this way."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


@contextlib.contextmanager
def meta_device():
    """Modules built inside hold meta tensors: shapes only, no memory, no random init."""
    with torch.device("meta"), _SkipInit():
        yield


def _fit(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` as ``dtype``, copied when its integer codes sit at an address that is not 64-byte aligned:
    safetensors' tensors may (one of torch's int8 kernels, ``_weight_int8pack_mm``, crashed reading such a
    weight); float kernels take any address, so float tensors are kept as they are, with no copy."""
    t = t.to(dtype)
    return t.clone() if not t.is_floating_point() and t.data_ptr() % 64 else t


def model_from_state(build: Callable[[], nn.Module], sd: dict[str, torch.Tensor], where: str,
                     check: Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], None] | None = None
                     ) -> nn.Module:
    """The model ``build()`` makes, holding ``sd``, without its random init.

    Buffers are computed at construction rather than loaded: a model that can recompute them
    (``rebuild_buffers``, the position tables of ``Stack``) does so after the assignment; any other is
    built for real and ``sd`` copied in. ``check(expected, sd)``, given, sees the model's (meta) state
    dict and ``sd`` with its aliases filled before anything is assigned: a loader's own messages for
    missing or mis-shaped tensors. ``where`` names the tensors in the message of a mismatch left over.
    """
    with meta_device():
        model = build()
    assign = not any(True for _ in model.buffers()) or hasattr(model, "rebuild_buffers")
    if not assign:
        model = build()
    aliases = tied_aliases(model)
    sd = with_aliases(model, sd)
    expected = model.state_dict()
    if check is not None:
        check(expected, sd)
    sd = {k: _fit(v, expected[k].dtype) if k in expected else v for k, v in sd.items()}
    try:
        model.load_state_dict(sd, strict=True, assign=assign)
    except RuntimeError as e:   # the loaders' shape checks make this unreachable; keep it readable regardless
        raise CheckpointError(f"{where} do not fit the model ({e}); re-save the checkpoint") from None
    if assign:                  # assign made one Parameter per name: point each alias at the canonical one
        for alias, canonical in aliases.items():
            *path, name = alias.split(".")
            setattr(model.get_submodule(".".join(path)), name, model.get_parameter(canonical))
        if any(b.is_meta for b in model.buffers()):
            model.rebuild_buffers()
    return model
