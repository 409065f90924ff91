"""Inference on CPUs with AVX-512: every Linear through oneDNN, with the FFN's activation fused into its GEMM.

Legend: N any leading dimensions (B, L, ...), I input features, O output features.

PyTorch runs a float32 ``nn.Linear`` on the CPU with MKL's sgemm. MKL picks its AVX-512 kernels only on
Intel processors; on AMD's (Zen 4 has AVX-512) it runs AVX2 code, while oneDNN, PyTorch's other CPU
library, JIT-compiles AVX-512 kernels for any processor that has the instructions. On an AMD EPYC (Zen 4)
oneDNN ran the BERT-base GEMMs faster than MKL (bench/README.md, ``qkv bench encoder``, per GEMM shape); on
AVX2-only processors it was slower than MKL, so ``use_onednn`` changes nothing there.

The arithmetic is the same float32 products and sums (results differ from MKL's by rounding only,
~1e-6), so this is a speed switch, not an approximation. It is for inference: with autograd recording
(training) the swapped module runs the plain ``F.linear`` path, so gradients and weight updates are exactly
those of ``nn.Linear``; the weights are the same Parameters (same state-dict keys, ties kept), so there
is nothing to go stale.

    >>> model = use_onednn(qkv.load("runs/sst2").eval())          # doctest: +SKIP
    >>> with torch.inference_mode(): logits = model(ids_BL).logits  # doctest: +SKIP
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..nn.mlp import FFN


def _post_op(act: nn.Module) -> tuple[str, str] | None:
    """oneDNN's post-op (name, algorithm) for an activation module, fused into the GEMM that feeds it."""
    if isinstance(act, nn.GELU):
        return "gelu", act.approximate              # "none" (erf) or "tanh"
    if isinstance(act, nn.ReLU):
        return "relu", ""
    return None


def onednn_pays() -> bool:
    """True where oneDNN has AVX-512 kernels and the swap was measured to pay (see the module docstring)."""
    return torch.backends.mkldnn.is_available() and torch.backends.cpu.get_cpu_capability().startswith("AVX512")


class OneDNNLinear(nn.Module):
    """``act(x W^T + b)`` by oneDNN under no-grad on CPU float32, else by ``F.linear``; act may be None."""

    def __init__(self, linear: nn.Linear, act: nn.Module | None = None):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias          # the same Parameters, not copies
        self.act = act if act is not None else nn.Identity()
        self.post, self.algorithm = _post_op(act) if act is not None else ("none", "")

    def forward(self, x_NI: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x_NI.device.type != "cpu" or x_NI.dtype != torch.float32:
            return self.act(F.linear(x_NI, self.weight, self.bias))
        return torch.ops.mkldnn._linear_pointwise(x_NI, self.weight, self.bias, self.post, [], self.algorithm)

    def extra_repr(self) -> str:
        return f"in_features={self.weight.shape[1]}, out_features={self.weight.shape[0]}, post_op={self.post}"


def use_onednn(model: nn.Module, force: bool = False) -> nn.Module:
    """Swap ``model``'s Linears for ``OneDNNLinear`` in place (FFN activations fused) where it pays.

    Returns the model. Without ``force`` nothing changes unless ``onednn_pays()``. A FFN whose activation
    oneDNN cannot fuse (SwiGLU's product of two GEMMs) still gets its Linears swapped, unfused.
    """
    if not (force or onednn_pays()) or not torch.backends.mkldnn.is_available():
        return model
    for module in list(model.modules()):
        if isinstance(module, FFN) and isinstance(module.up, nn.Linear) and _post_op(module.act) is not None:
            module.up, module.act = OneDNNLinear(module.up, module.act), nn.Identity()
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                setattr(module, name, OneDNNLinear(child))
    return model
