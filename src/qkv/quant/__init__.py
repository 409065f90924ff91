"""Weight-only quantization for CPU decoding: int8 per channel or 4-bit per group, as a module swap.

    >>> layout = quantize_model(model, bits=4, group_size=32)      # doctest: +SKIP
    >>> qkv.save(model, "runs/q4")        # config.json records the layout; qkv.load rebuilds it

``layout`` maps each swapped module's name to "int8" or "int4/<group size>"; it is all a checkpoint needs
to rebuild the empty modules before loading their tensors (``apply_layout``). A tied head (the token
embedding) is int8 whatever ``bits`` says, because the embedding reads its rows (``QuantEmbedding``).
"""

from __future__ import annotations

from torch import nn

from ..errors import ConfigError
from .linear import GROUP_SIZES, Int4Linear, Int8Linear, QuantEmbedding, int4_fits, quantize_linear

BITS = (8, 4)


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, (Int8Linear, Int4Linear)) for m in model.modules())


def layout_of(model: nn.Module) -> dict[str, str]:
    """{module name: "int8" | "int4/<group size>"} for every quantized module of ``model``."""
    return {name: "int8" if isinstance(m, Int8Linear) else f"int4/{m.group_size}"
            for name, m in model.named_modules() if isinstance(m, (Int8Linear, Int4Linear))}


def check_bits(bits: int, group_size: int = 32) -> None:
    if bits not in BITS:
        raise ConfigError(f"--bits {bits} is not supported; choose 8 (int8 per channel) or 4 (4-bit per group)")
    if group_size not in GROUP_SIZES:
        raise ConfigError(f"--group-size {group_size} is not supported; choose one of {list(GROUP_SIZES)}")


def _tied(model: nn.Module) -> bool:
    return getattr(getattr(model, "cfg", None), "tie_embeddings", False) and hasattr(model, "head")


def quantize_model(model: nn.Module, bits: int = 8, group_size: int = 32) -> dict[str, str]:
    """Swap every ``nn.Linear`` of ``model`` for its quantized counterpart, in place. Returns the layout."""
    check_bits(bits, group_size)
    if is_quantized(model):
        raise ConfigError("this model is already quantized; quantize the float checkpoint it came from")
    tied = _tied(model)
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and not (tied and module is model and child_name == "head"):
                setattr(module, child_name, quantize_linear(child, bits, group_size))
    if tied:
        model.head = Int8Linear.from_float(model.tok.weight)
        model.tok = QuantEmbedding(model.head)
    return layout_of(model)


def apply_layout(model: nn.Module, layout: dict[str, str]) -> None:
    """Replace the modules ``layout`` names with empty quantized ones of the same shape (to load into)."""
    for name, kind in layout.items():
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        old = getattr(parent, child_name, None)
        if not isinstance(old, nn.Linear):
            raise ConfigError(f"the quantization layout names {name!r}, which is not a Linear layer of this model")
        has_bias = old.bias is not None
        if kind == "int8":
            new = Int8Linear(old.in_features, old.out_features, has_bias)
        elif kind.startswith("int4/") and kind[5:].isdigit():
            new = Int4Linear(old.in_features, old.out_features, int(kind[5:]), has_bias)
        else:
            raise ConfigError(f"unknown quantization {kind!r} for {name!r}; expected 'int8' or 'int4/<group>'")
        setattr(parent, child_name, new)
    if _tied(model) and isinstance(getattr(model, "head", None), Int8Linear):
        model.tok = QuantEmbedding(model.head)


__all__ = ["Int8Linear", "Int4Linear", "QuantEmbedding", "quantize_model", "apply_layout", "layout_of",
           "is_quantized", "check_bits", "int4_fits", "BITS", "GROUP_SIZES"]
