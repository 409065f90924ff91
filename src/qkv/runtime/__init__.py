"""How a model runs on this machine: CPU threads and ``--device`` (here), and ``for_inference``
(``qkv.runtime.inference``), the one step every inference command takes after loading, with the CPU swaps
it makes (``layout``: column-major wide matrices; ``onednn``: oneDNN's AVX-512 GEMMs).

How many CPU threads decoding and training use, decided at run time from the machine they run on.

Batch-1 decoding is a long chain of small operations (a few hundred per token), each split across the
threads with a barrier at its end. A barrier costs little when every thread owns a core; when another
process holds one of them, the others wait for it at every operation. On the project's 2-vCPU machines,
shared with other jobs, two threads decoded SmolLM2 slower than one (bench/README.md has the figures),
as the issue observed for llama.cpp. So the default is: as many threads as there are cores left idle by
other processes (the 1-minute load average), at least 1 and at most 8 (beyond that a 135M-1B model's
matrices are too small to split usefully). ``--threads`` overrides it. Training follows the same rule
without the cap (its larger matrices split well, though on cores other jobs share torch's default two
threads trained far slower than one: bench/README.md), and a resumed run keeps the count its first part
used, so that the resume stays bit for bit.
"""

from __future__ import annotations

import os

import torch

from ..errors import InputError

MAX_DECODE_THREADS = 8
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")       # a user's own choice of threads
_TORCH_DEFAULT_THREADS = torch.get_num_threads()                 # read when qkv is imported, before any change
_python_api_threads_chosen = False


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                       # not Linux
        return os.cpu_count() or 1


def idle_cores() -> int:
    """Cores not busy with other processes (at least 1): this process's cores less the 1-minute load."""
    cores = available_cores()
    try:
        idle = cores - os.getloadavg()[0]
    except OSError:                              # no load average on this platform: assume the cores are free
        idle = cores
    return max(1, min(cores, int(idle + 0.5)))


def decode_threads() -> int:
    """Cores not busy with other processes, between 1 and MAX_DECODE_THREADS."""
    return min(idle_cores(), MAX_DECODE_THREADS)


def choose_python_api_threads() -> None:
    """The Python API (``qkv.load``, ``qkv.generate``, ``qkv.chat``, ``ChatSession``) gets the CLI's thread
    policy once per process, unless the user chose a count: torch.set_num_threads called since qkv was
    imported, or OMP_NUM_THREADS / MKL_NUM_THREADS set."""
    global _python_api_threads_chosen
    if _python_api_threads_chosen:
        return
    _python_api_threads_chosen = True
    if any(v in os.environ for v in THREAD_VARIABLES) or torch.get_num_threads() != _TORCH_DEFAULT_THREADS:
        return
    torch.set_num_threads(decode_threads())


def set_decode_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads to ``threads`` (or ``decode_threads()``); returns the number set."""
    global _python_api_threads_chosen
    if threads is not None and threads < 1:
        raise InputError(f"--threads {threads} must be >= 1")
    n = threads or decode_threads()
    torch.set_num_threads(n)
    _python_api_threads_chosen = True                # a command chose: the Python API's default stays out
    return n


def inference_device(name: str | None) -> torch.device:
    """The ``--device`` a command runs on: ``cpu`` (the default), ``cuda`` or ``cuda:N``, checked against
    what this torch can see so that a missing GPU is one line, not a CUDA traceback mid-way."""
    if name is None or name == "cpu":
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type != "cuda":
        raise InputError(f"--device {name!r}: qkv runs on cpu or cuda")
    if not torch.cuda.is_available():
        raise InputError(f"--device {name}: this torch sees no CUDA GPU (torch {torch.__version__}); use --device cpu")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"--device {name}: there are {torch.cuda.device_count()} CUDA devices (cuda:0 ...)")
    return device


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a timer on a GPU would otherwise stop before the work does)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
