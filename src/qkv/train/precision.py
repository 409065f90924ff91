"""Which precision a training run computes in: ``--precision auto`` picks bf16 where the hardware has it.

bf16 autocast (matrix products in bf16, losses, norms and softmax in fp32; weights and AdamW moments stay
fp32) pays only where bf16 arithmetic is native:

    CPU   AVX-512 BF16 (VDPBF16PS: Cooper Lake, Sapphire Rapids, Zen 4 and later) or AMX (AMX-BF16 tiles)
    CUDA  compute capability 8.0 and later (Ampere, Hopper): torch.cuda.is_bf16_supported()

Elsewhere bf16 is emulated (each product converts to fp32 and back) and runs slower than fp32, so ``auto``
keeps fp32 there; ``bf16`` forced on such a machine still runs, with a warning that names the slowdown
measured on the bench shape (bench/README.md, "--precision auto next to fp32").
The decision is made once per run, printed first and stored in the run's config.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Precision:
    requested: str          # what the run asked for: auto, fp32 or bf16
    chosen: str             # what it computes in: fp32 or bf16
    hardware: str           # what the device offers, in words
    warning: str | None = None    # bf16 forced where it is emulated: what it costs

    @property
    def bf16(self) -> bool:
        return self.chosen == "bf16"

    def describe(self) -> str:
        how = "auto: " if self.requested == "auto" else "forced; "
        return f"precision {self.chosen} ({how}{self.hardware})"

    def as_config(self) -> dict:
        return {"requested": self.requested, "chosen": self.chosen, "hardware": self.hardware}


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:                                # not Linux: torch's own probe below decides
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def native_bf16(device: str) -> tuple[bool, str]:
    """(bf16 is native on ``device``, what was found). The CPU probe asks torch's CPUID reader first and
    falls back to /proc/cpuinfo's flags."""
    import torch

    if device == "cuda":
        name = torch.cuda.get_device_name()
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return True, f"{name} computes bf16 natively"
        return False, f"{name} has no native bf16 (it needs compute capability 8.0+)"
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    flags = _cpu_flags()
    if (amx is not None and amx()) or "amx_bf16" in flags:
        return True, "this CPU has AMX-BF16"
    if (probe is not None and probe()) or "avx512_bf16" in flags:
        return True, "this CPU has AVX-512 BF16"
    return False, f"this CPU has no AVX-512 BF16 or AMX ({torch.backends.cpu.get_cpu_capability()}): bf16 is emulated"


def choose_precision(requested: str, device: str) -> Precision:
    """fp32 and bf16 are taken as given; auto becomes bf16 exactly where bf16 is native.
    Forcing bf16 on emulated hardware carries a warning (it trains, several times slower than fp32), never fails."""
    native, hardware = native_bf16(device)
    if requested == "auto":
        return Precision("auto", "bf16" if native else "fp32", hardware)
    warning = None
    if requested == "bf16" and not native:
        warning = (f"--precision bf16 on hardware without native bf16 ({hardware}): every product converts to "
                   f"fp32 and back: measured 4x slower than fp32 on AVX-512 without BF16 and 15-35x on AVX2; "
                   f"use --precision auto or fp32")
    return Precision(requested, requested, hardware, warning)
