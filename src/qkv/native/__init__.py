"""qkv's own CPU kernels: integer-dot products of 8-bit activation blocks with the 4-bit and int8 weights of
``qkv.quant`` (the arithmetic is in kernels.c, with the why).

The library is built by ``pip install`` (setup.py, optional: without a compiler the build is skipped) and
loaded with ctypes, which releases the GIL during a call. ``variant()`` says which kernels run:

    QKV_KERNELS unset     the best this CPU reports: avx512 (BW/VL/VNNI), else avx2 (+FMA), else scalar
                          (no better than PyTorch's own choice: ATEN_CPU_CAPABILITY=avx2 gives avx2)
    QKV_KERNELS=scalar    the reference loops     avx2 / avx512   those SIMD kernels (if the CPU has them)
    QKV_KERNELS=torch     PyTorch's own packed kernels (as when the library is not built)

Every variant gives the same bits (each block's integer sum is exact, the float steps run in one order),
so a model's outputs do not depend on which CPU runs it, and a row's output does not depend on its batch.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
import warnings
from pathlib import Path

import torch

from ..errors import ConfigError

VARIANTS = ("scalar", "avx2", "avx512")          # bit i of qkv_supported() is VARIANTS[i]
OVERRIDE = "QKV_KERNELS"
BLOCK = 32                                        # activation block (kernels.c)
MAX_ROWS = 16         # rows (tokens) at or below which a layer uses these kernels: decode steps and the
                      # server's batches. Each weight block is unpacked once for all rows, but the integer
                      # work stays per row: from 4 rows on PyTorch's kernels are faster (bench/README.md,
                      # qkv.native), so longer prompts keep them; up to 16 rows keeps a batch's rows
                      # bit-identical to the same rows alone.


SPLIT_WEIGHTS = 8 << 20   # weights from which a layer's product is split over threads (product_threads)


ABI = 5                                           # kernels.h's QKV_ABI: the entry points' arguments


@functools.lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    """The built kernels, or None where ``pip install`` could not build them (or built them from older
    sources: then a warning says how to rebuild, and the layers run on PyTorch's kernels)."""
    spec = importlib.util.find_spec("qkv.native._kernels")
    if spec is None or spec.origin is None or not Path(spec.origin).is_file():
        return None
    lib = ctypes.CDLL(spec.origin)
    if not hasattr(lib, "qkv_abi") or lib.qkv_abi() != ABI:
        warnings.warn(f"{spec.origin} was built from older sources than qkv.native's; rebuild it (pip install "
                      f"-e . or python setup.py build_ext --inplace). Until then PyTorch's kernels run.")
        return None
    p, i = ctypes.c_void_p, ctypes.c_int
    lib.qkv_q4_linear.argtypes = [i, p, i, p, p, p, i, i, i, p, i]
    lib.qkv_q8_linear.argtypes = [i, p, i, p, p, i, i, p, i]
    lib.qkv_decode.argtypes = [i, p, p, i, p, i]
    lib.qkv_half_to_float.argtypes = lib.qkv_float_to_half.argtypes = [i, p, p, i]     # half.c
    lib.qkv_supported.restype = i
    return lib


def supported() -> tuple[str, ...]:
    """The variants this CPU runs ("scalar" always, once the library is built)."""
    lib = library()
    if lib is None:
        return ()
    bits = lib.qkv_supported()
    return tuple(v for k, v in enumerate(VARIANTS) if bits >> k & 1)


TORCH_KINDS = {"DEFAULT": "scalar", "AVX2": "avx2"}      # ATEN_CPU_CAPABILITY caps the default as well


@functools.lru_cache(maxsize=None)
def _chosen(requested: str | None) -> str:
    runs = supported()
    if requested in (None, ""):
        if not runs:
            return "torch"
        # a process told to run a weaker kind's kernels (ATEN_CPU_CAPABILITY) runs ours of that kind too,
        # so the ISA tests (tests/test_cpu_kinds.py) reach every variant on one machine
        cap = TORCH_KINDS.get(torch.backends.cpu.get_cpu_capability())
        return cap if cap in runs else runs[-1]
    if requested == "torch":
        return "torch"
    if requested not in VARIANTS:
        raise ConfigError(f"{OVERRIDE}={requested!r} is not a kernel variant; use one of "
                          f"{', '.join(VARIANTS + ('torch',))}")
    if not runs:
        raise ConfigError(f"{OVERRIDE}={requested}: qkv's kernels are not built (no compiler at install?); "
                          f"reinstall with gcc present, or unset {OVERRIDE}")
    if requested not in runs:
        raise ConfigError(f"{OVERRIDE}={requested}: this CPU runs {', '.join(runs)}; unset {OVERRIDE} or pick one")
    return requested


def variant() -> str:
    """The kernels quantized layers use now: "avx512", "avx2", "scalar" or "torch"."""
    return _chosen(os.environ.get(OVERRIDE))


def usable(x_NI: torch.Tensor) -> bool:
    """Whether this product goes through qkv's kernels: CPU floats, a decode-sized batch, whole blocks."""
    return (x_NI.device.type == "cpu" and x_NI.shape[0] <= MAX_ROWS and x_NI.shape[1] % BLOCK == 0
            and variant() != "torch")


def threads() -> int:
    """Threads a product splits its output rows over: PyTorch's own count (qkv.runtime's choice, or the
    user's), so that the kernels never ask for more cores than the rest of the program was given. The
    pool (pool.c) is not OpenMP: its workers sleep between tokens instead of spinning against PyTorch's."""
    return torch.get_num_threads()


def product_threads(O: int, I: int) -> int:
    """Threads one layer's product takes when PyTorch ops run between products (the blocks, not the fused
    step): a product of fewer than ``SPLIT_WEIGHTS`` weights runs on the calling thread alone. Handing
    a small product to the pool right after an OpenMP region makes the two kinds of waiting threads take
    turns on the same cores, which costs far more than the product (bench/README.md, "qkv's own kernels":
    SmolLM2's blocks at 2 threads); a big one (a 49k-word head, a 7B model's layers) still splits. The
    bits are the same for every thread count, so this changes speed only."""
    return threads() if O * I >= SPLIT_WEIGHTS else 1


def call(result: int) -> None:
    """Raise for a kernel's failure code (it could not allocate its scratch memory)."""
    if result != 0:
        raise MemoryError("qkv's kernels could not allocate the quantized activations")


def bf16(t: torch.Tensor) -> torch.Tensor:
    """Scales as the kernels read them: the layers' own bfloat16 buffers (a no-op for those)."""
    return t.detach().to(torch.bfloat16).contiguous()


def q4_matmul(x_NI: torch.Tensor, weight_OI2: torch.Tensor, scales_OQ: torch.Tensor, zeros_OQ: torch.Tensor,
              group_size: int) -> torch.Tensor:
    """y_NO = x W^T for Int4Linear's portable form (uint8 nibbles, bfloat16 scales and code-8 values)."""
    x = x_NI.detach().float().contiguous()
    scales_OQ, zeros_OQ = bf16(scales_OQ), bf16(zeros_OQ)
    N, I = x.shape
    O = weight_OI2.shape[0]
    y = torch.empty(N, O, dtype=torch.float32)
    call(library().qkv_q4_linear(VARIANTS.index(variant()), x.data_ptr(), N, weight_OI2.data_ptr(),
                                 scales_OQ.data_ptr(), zeros_OQ.data_ptr(), O, I, group_size, y.data_ptr(),
                                 product_threads(O, I)))
    return y


def q8_matmul(x_NI: torch.Tensor, weight_OI: torch.Tensor, scales_O: torch.Tensor) -> torch.Tensor:
    """y_NO = x W^T for Int8Linear (int8 rows, one bfloat16 scale per row)."""
    x = x_NI.detach().float().contiguous()
    scales_O = bf16(scales_O)
    N, I = x.shape
    O = weight_OI.shape[0]
    y = torch.empty(N, O, dtype=torch.float32)
    call(library().qkv_q8_linear(VARIANTS.index(variant()), x.data_ptr(), N, weight_OI.data_ptr(),
                                 scales_O.data_ptr(), O, I, y.data_ptr(), product_threads(O, I)))
    return y
