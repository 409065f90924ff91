"""Weight-only quantized Linear layers for CPU decoding: int8 per output channel, 4-bit per group.

Legend: N rows (a layer's input's leading dimensions, flattened), I input features, O output features,
Q groups per row (I / g), B L an embedding's ids; x is (..., in_features).

At batch 1 a decode step reads every weight once and does one multiply-add with it, so its speed is the
memory bandwidth divided by the bytes of weights: 4 bytes a weight in float32, 1 in int8, ~0.56 in 4-bit
with a 32-wide group. The activations stay in floating point ("weight-only"); PyTorch's own CPU kernels
multiply them with the packed weights without ever writing a float copy of the matrix:

    Int8Linear   W[o, k] = q[o, k] * s[o]                     q in [-127, 127]   aten._weight_int8pack_mm
    Int4Linear   W[o, k] = (q[o, k] - 8) * s[o, g] + z[o, g]  q in [0, 15]       aten._weight_int4pack_mm_for_cpu

``z`` is the weight value of code 8 (the kernel's convention), so GGUF's Q4_0 (w = d (q - 8)) is s = d,
z = 0 and Q4_1 (w = d q + m) is s = d, z = m + 8 d: those files load code for code. Both kernels are fast
only for bfloat16 activations (float32 ones take a scalar reference path, far slower: bench/README.md),
so x is rounded to bfloat16 on the way in, the scales are stored in bfloat16, and the
output comes back as float32. Quantizing rounds the scales to bfloat16 first and then picks the codes for
those scales, so the rounding of a scale costs nothing; GGUF scales (float16) lose 3 bits (<= 0.2%).

The idea is gpt-fast's: a module swap after loading (``quantize_model``), nothing else in the model changes.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import native
from ..errors import ConfigError

SCALE_DTYPE = torch.bfloat16             # the kernels' fast path wants scales in the activations' dtype
# PyTorch's AVX-512 _weight_int8pack_mm reads past a row whose length is not a multiple of 16 and crashes the
# process (K = 8, 24, 40, 56 under ATEN_CPU_CAPABILITY=avx512; its AVX2 and scalar kernels do not). Such layers
# take the plain product on every CPU, so that one CPU kind never computes differently from another.
INT8_KERNEL_MULTIPLE = 16
GROUP_SIZES = (32, 64, 128)
INT4_BLOCK_N = 64                        # output rows a 4-bit layer comes in (see int4_fits)
_replaced = [0]                          # how many times some layer's codes or scales were replaced


def codes_version() -> int:
    """A number that changes whenever a quantized layer's codes or scales are replaced (``set_codes``,
    ``load_state_dict``): what caches built from them elsewhere (qkv.native.fused) compare."""
    return _replaced[0]


def _codes_replaced() -> None:
    _replaced[0] += 1


class Int8Linear(nn.Module):
    """y = x (q * s)^T + b, q int8 (O, I), s (O,) per output channel."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scales", torch.empty(out_features, dtype=SCALE_DTYPE))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @classmethod
    def from_float(cls, weight_OI: torch.Tensor, bias_O: torch.Tensor | None = None) -> "Int8Linear":
        """Symmetric per-row quantization: s = max|w| / 127 (rounded to bfloat16 first), q = round(w / s)."""
        O, I = weight_OI.shape
        module = cls(I, O, bias_O is not None)
        w_OI = weight_OI.detach().float().contiguous()      # the kernel needs row-major q (decode_layout)
        scales_O = (w_OI.abs().amax(dim=1) / 127).clamp(min=1e-12).to(SCALE_DTYPE)
        module.weight = (w_OI / scales_O.float()[:, None]).round().clamp(-127, 127).to(torch.int8)
        module.scales = scales_O
        if bias_O is not None:
            module.bias = nn.Parameter(bias_O.detach().float().clone())
        return module

    def dequantize(self) -> torch.Tensor:
        return self.weight.float() * self.scales.float()[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x_NI = x.reshape(-1, self.in_features)
        if native.usable(x_NI):                         # qkv's integer-dot kernels (decode-sized batches)
            y_NO = native.q8_matmul(x_NI, self.weight, self.scales)
        elif x_NI.device.type == "cpu" and self.in_features % INT8_KERNEL_MULTIPLE == 0:
            y_NO = torch.ops.aten._weight_int8pack_mm(x_NI.to(SCALE_DTYPE), self.weight, self.scales).float()
        else:                                           # no packed kernel for this device or width
            y_NO = x_NI.float() @ self.dequantize().t()
        if self.bias is not None:
            y_NO = y_NO + self.bias
        return y_NO.view(*lead, self.out_features)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        _codes_replaced()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per channel"


class Int4Linear(nn.Module):
    """y = x W^T + b with W[o, k] = (q[o, k] - 8) * s[o, k // g] + z[o, k // g], q 4-bit.

    The source of truth is a portable form, the same in memory and in the state dict: ``weight`` uint8
    (O, I/2) with column 2j in the low nibble and 2j+1 in the high one, ``scales`` and ``zeros`` (O, Q).
    PyTorch's kernel wants its own packing, which differs between its AVX-512, AVX2 and scalar paths
    (64- or 32-row blocks, or none), so that packing is a cache made on first use for the kernels this
    process runs (``ATEN_CPU_CAPABILITY`` picks them) and never read back: a checkpoint written on any CPU
    loads on any other with the same codes.
    """

    def __init__(self, in_features: int, out_features: int, group_size: int = 32, bias: bool = False):
        super().__init__()
        if not int4_fits(in_features, out_features, group_size):
            raise ConfigError(f"a 4-bit layer needs in_features ({in_features}) divisible by the group size "
                              f"({group_size}) and out_features ({out_features}) by {INT4_BLOCK_N}")
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        Q = in_features // group_size
        self.register_buffer("weight", torch.empty(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("scales", torch.empty(out_features, Q, dtype=SCALE_DTYPE))
        self.register_buffer("zeros", torch.empty(out_features, Q, dtype=SCALE_DTYPE))
        # the kernel's packed codes and its (Q, O, 2) scale-and-zero tensor, built by _pack on first use
        self.register_buffer("packed", None, persistent=False)
        self.register_buffer("scales_zeros", None, persistent=False)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @classmethod
    def from_codes(cls, codes_OI: torch.Tensor, scales_OQ: torch.Tensor, zeros_OQ: torch.Tensor,
                   bias_O: torch.Tensor | None = None) -> "Int4Linear":
        """From integer codes in [0, 15] and each group's scale and code-8 value."""
        O, I = codes_OI.shape
        module = cls(I, O, I // scales_OQ.shape[1], bias_O is not None)
        module.set_codes(codes_OI, scales_OQ, zeros_OQ)
        if bias_O is not None:
            module.bias = nn.Parameter(bias_O.detach().float().clone())
        return module

    @classmethod
    def from_float(cls, weight_OI: torch.Tensor, bias_O: torch.Tensor | None = None,
                   group_size: int = 32) -> "Int4Linear":
        """Asymmetric min/max quantization per group of ``group_size`` inputs (16 levels span [min, max])."""
        O, I = weight_OI.shape
        w_OQg = weight_OI.detach().float().reshape(O, I // group_size, group_size)
        lo_OQ, hi_OQ = w_OQg.amin(dim=-1), w_OQg.amax(dim=-1)
        scales_OQ = ((hi_OQ - lo_OQ) / 15).clamp(min=1e-12).to(SCALE_DTYPE).float()
        zeros_OQ = (lo_OQ + 8 * scales_OQ).to(SCALE_DTYPE).float()
        codes_OQg = ((w_OQg - zeros_OQ[..., None]) / scales_OQ[..., None] + 8).round().clamp(0, 15)
        return cls.from_codes(codes_OQg.reshape(O, I).int(), scales_OQ, zeros_OQ, bias_O)

    def set_codes(self, codes_OI: torch.Tensor, scales_OQ: torch.Tensor, zeros_OQ: torch.Tensor) -> None:
        codes_OI = codes_OI.to(torch.uint8)
        self.weight = (codes_OI[:, 0::2] | (codes_OI[:, 1::2] << 4)).contiguous()
        self.scales = scales_OQ.to(SCALE_DTYPE).contiguous()
        self.zeros = zeros_OQ.to(SCALE_DTYPE).contiguous()
        self.packed = self.scales_zeros = None
        _codes_replaced()

    def codes(self) -> torch.Tensor:
        """The integer codes (O, I) in [0, 15]."""
        nibbles_OI2 = self.weight.to(torch.int32)
        return torch.stack([nibbles_OI2 & 15, nibbles_OI2 >> 4], dim=-1).reshape(self.out_features, -1)

    def dequantize(self) -> torch.Tensor:
        O, I, g = self.out_features, self.in_features, self.group_size
        scales_OQ1, zeros_OQ1 = self.scales.float()[..., None], self.zeros.float()[..., None]
        return ((self.codes().float().view(O, I // g, g) - 8) * scales_OQ1 + zeros_OQ1).view(O, I)

    def _pack(self) -> None:
        """The kernel's layout for this process's CPU kernels, from the portable codes (one way only)."""
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(self.codes().contiguous(), 1)
        self.scales_zeros = torch.stack([self.scales.t(), self.zeros.t()], dim=-1).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x_NI = x.reshape(-1, self.in_features)
        if native.usable(x_NI):                         # qkv's integer-dot kernels (decode-sized batches)
            y_NO = native.q4_matmul(x_NI, self.weight, self.scales, self.zeros, self.group_size)
        elif x_NI.device.type == "cpu":
            if self.packed is None or self.packed.device != self.weight.device:
                self._pack()
            y_NO = torch.ops.aten._weight_int4pack_mm_for_cpu(x_NI.to(SCALE_DTYPE), self.packed,
                                                              self.group_size, self.scales_zeros).float()
        else:                                           # no packed kernel here: the plain product
            y_NO = x_NI.float() @ self.dequantize().t()
        if self.bias is not None:
            y_NO = y_NO + self.bias
        return y_NO.view(*lead, self.out_features)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self.packed = self.scales_zeros = None          # new codes: the cache is stale
        _codes_replaced()

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, 4-bit, "
                f"group_size={self.group_size}")


def int4_fits(in_features: int, out_features: int, group_size: int) -> bool:
    """Whether a 4-bit layer of this shape packs on every CPU: the AVX-512 kernel packs 64 output rows
    together (AVX2 32), so the rule is the strictest one, or a file's layout would depend on its CPU."""
    return in_features % group_size == 0 and out_features % INT4_BLOCK_N == 0


class QuantEmbedding(nn.Module):
    """Token embedding read from a tied int8 head: row i is q[i] * s[i] (nothing stored twice)."""

    def __init__(self, head: Int8Linear):
        super().__init__()
        object.__setattr__(self, "source", head)       # not a submodule: its tensors belong to the head

    def forward(self, ids_BL: torch.Tensor) -> torch.Tensor:
        head = self.source
        return head.weight[ids_BL].float() * head.scales[ids_BL].float()[..., None]

    @property
    def weight(self) -> torch.Tensor:                  # for code that asks for the table's shape
        return self.source.weight


def quantize_linear(linear: nn.Module, bits: int, group_size: int = 32) -> nn.Module:
    """The quantized counterpart of one ``nn.Linear`` (int8 where a 4-bit layout does not fit its shape)."""
    w_OI, bias = linear.weight, linear.bias
    if bits == 4 and int4_fits(w_OI.shape[1], w_OI.shape[0], group_size):
        return Int4Linear.from_float(w_OI, bias, group_size)
    return Int8Linear.from_float(w_OI, bias)
