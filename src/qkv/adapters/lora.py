"""LoRA: low-rank adapters on frozen linear layers (Hu et al., 2021, "LoRA", eq. 3).

Legend: N any leading dims, I in features, O out features, R rank.

    y_NO = base(x_NI)  +  (alpha / R) * B_OR @ A_RI @ dropout(x_NI)       base frozen; A, B trained
                          A: Kaiming-uniform, B: zeros, so training starts from the base model exactly

The delta is a forward hook on the base module, and A, B live in a child ``lora`` of it: the base
weights keep their names (a checkpoint's keys are unchanged, plus ``....lora.*``), and a quantized base
(``qkv.quant``: int8 / 4-bit, its kernels have no backward) works as QLoRA: its output is passed on with a
backward through the dequantized weights, so the gradient reaches the adapters of the layers below.

A Hugging Face module can be a slice of a qkv one: qkv fuses k and v into one ``wkv`` (rows [k ; v]), so an
adapter on ``k_proj`` is a delta on wkv's first G*D rows. ``LoRADelta`` holds one (A, B) per such part.
Which parts a module has, and their Hugging Face names, is ``qkv.adapters.peft_format``'s table.

    >>> add_lora(model, LoRAConfig(rank=8, alpha=16, targets=("q_proj", "v_proj")))   # doctest: +SKIP
    >>> merge_lora(model)                    # folds B @ A into the weights; the hooks are gone  # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from ..validation import check_fields
from .names import select_parts


@dataclass(frozen=True)
class LoRAConfig:
    rank: int = 8                               # R: the adapters' inner width
    alpha: float = 16.0                         # the delta is scaled by alpha / rank
    dropout: float = 0.0                        # on the adapters' input only (PEFT's lora_dropout)
    targets: tuple[str, ...] = ()               # module names, PEFT's: q_proj, k_proj, ..., or query, key, ...
                                                # (a name selects every module it ends; empty: attention + FFN)

    def __post_init__(self):
        if self.rank <= 0:
            raise ConfigError(f"lora rank={self.rank} must be a positive integer (e.g. --lora-rank 8)")
        check_fields(self, {"alpha": "(0, inf)", "dropout": "[0, 1)"})

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def key(name: str) -> str:
    """A part's Hugging Face name as a parameter key ("self_attn.k_proj" -> "self_attn__k_proj")."""
    return name.replace(".", "__")


class LoRADelta(nn.Module):
    """(alpha / R) B @ A x for each part (a row range of the base's outputs); parts not adapted add zeros."""

    def __init__(self, in_features: int, parts: list[tuple[str, int, int]], cfg: LoRAConfig):
        super().__init__()
        self.parts, self.scale = parts, cfg.scale
        self.A = nn.ParameterDict({key(name): nn.Parameter(torch.empty(cfg.rank, in_features))
                                   for name, _, _ in parts})
        self.B = nn.ParameterDict({key(name): nn.Parameter(torch.zeros(stop - start, cfg.rank))
                                   for name, start, stop in parts})
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout else nn.Identity()     # p=0 would still copy x
        for a_RI in self.A.values():
            nn.init.kaiming_uniform_(a_RI, a=math.sqrt(5))        # nn.Linear's init, as PEFT's

    def weight_delta(self, out_features: int) -> torch.Tensor:
        """delta_OI: the matrix the adapters add to the base weight (for merging)."""
        a_RI = next(iter(self.A.values()))
        delta_OI = a_RI.new_zeros(out_features, a_RI.shape[1])
        for name, start, stop in self.parts:
            delta_OI[start:stop] += self.scale * (self.B[key(name)] @ self.A[key(name)])
        return delta_OI

    def forward(self, x_NI: torch.Tensor, y_NO: torch.Tensor) -> torch.Tensor:
        x_NI = self.drop(x_NI)
        pieces, at = [], 0
        for name, start, stop in self.parts:
            if start > at:
                pieces.append(y_NO.new_zeros(*y_NO.shape[:-1], start - at))
            a_RI, b_OR = self.A[key(name)].to(x_NI.dtype), self.B[key(name)].to(x_NI.dtype)
            pieces.append(self.scale * ((x_NI @ a_RI.t()) @ b_OR.t()))
            at = stop
        if at < y_NO.shape[-1]:
            pieces.append(y_NO.new_zeros(*y_NO.shape[:-1], y_NO.shape[-1] - at))
        return y_NO + torch.cat(pieces, dim=-1).to(y_NO.dtype)


class _FrozenBackward(torch.autograd.Function):
    """A quantized module's output, with the input gradient grad_NO @ W_OI (its kernels have none)."""

    @staticmethod
    def forward(ctx, x_NI, y_NO, module):
        ctx.module = module
        return y_NO

    @staticmethod
    def backward(ctx, grad_NO):
        w_OI = ctx.module.dequantize().to(grad_NO.dtype)
        return grad_NO @ w_OI, None, None


def _hook(module: nn.Module, inputs: tuple, y_NO: torch.Tensor) -> torch.Tensor:
    x_NI = inputs[0]
    if not isinstance(module, nn.Linear) and x_NI.requires_grad:
        y_NO = _FrozenBackward.apply(x_NI, y_NO.detach(), module)
    lora = getattr(module, "lora", None)
    return y_NO if lora is None else lora(x_NI, y_NO)


def _hooked(module: nn.Module) -> None:
    if getattr(module, "_lora_handle", None) is None:
        module._lora_handle = module.register_forward_hook(_hook)


def pass_gradients_through_quantized(model: nn.Module) -> None:
    """Every qkv.quant layer of ``model`` passes the input gradient on (adapted or not): QLoRA's backward."""
    for module in model.modules():
        if not isinstance(module, nn.Linear) and hasattr(module, "dequantize"):
            _hooked(module)


def adapt(module: nn.Module, parts: list[tuple[str, int, int]], cfg: LoRAConfig) -> None:
    """Put a LoRADelta on ``module`` (an nn.Linear or a qkv.quant layer) over ``parts`` of its outputs."""
    weight = getattr(module, "weight")
    in_features = getattr(module, "in_features", weight.shape[1])
    module.lora = LoRADelta(in_features, parts, cfg).to(device=weight.device)
    _hooked(module)


def adapted(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(getattr(m, "lora", None), LoRADelta)]


def add_lora(model: nn.Module, cfg: LoRAConfig) -> list[str]:
    """Freeze ``model`` and put adapters on the modules ``cfg.targets`` name. Returns the Hugging Face names
    of the adapted parts (the targets' full names). A name that matches nothing is an error naming those
    there are. New heads a fine-tuning task adds stay trainable (``trainable_head``)."""
    chosen = select_parts(model, cfg.targets)
    for p in model.parameters():
        p.requires_grad_(False)
    for module_name, parts in chosen.items():
        adapt(model.get_submodule(module_name), parts, cfg)
    pass_gradients_through_quantized(model)
    model.lora_config = cfg
    return sorted(name for parts in chosen.values() for name, _, _ in parts)


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (float bases only) and remove it: a plain model again."""
    for name, module in adapted(model):
        if not isinstance(module, nn.Linear):
            raise ConfigError(f"{name} is quantized: an adapter cannot be folded into int8/4-bit codes; merge on "
                              f"the float base, then quantize")
    fold_for_inference(model)
    if hasattr(model, "lora_config"):
        del model.lora_config
    return model


def fold_for_inference(model: nn.Module) -> bool:
    """Fold the adapters on float layers into their weights (inference swaps replace or bypass Linears, and
    would drop a hook); True when none is left. Adapters on quantized layers stay: False."""
    with torch.no_grad():
        for _, module in adapted(model):
            if isinstance(module, nn.Linear):
                module.weight += module.lora.weight_delta(module.out_features).to(module.weight.dtype)
                module._lora_handle.remove()
                del module.lora, module._lora_handle
    return not adapted(model)
