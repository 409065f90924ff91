"""Data parallelism under torchrun: one process per core group or GPU, PyTorch's own engine.

    torchrun --nproc_per_node N -m qkv train ...       # N processes on this machine
    torchrun --nnodes M --node-rank R --rdzv-endpoint HOST:PORT --nproc_per_node N -m qkv train ...

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE; ``World.from_env`` reads them and joins the
process group: NCCL when the process has a CUDA device, gloo on CPU (chosen from the device, never fixed).
Without torchrun the world is one process and nothing below communicates.

How a batch is split (the same for every task, so every objective works the same way):

    global batch (--batch-size rows, drawn from ONE data stream that every rank advances identically)
        rows [0, b)      -> rank 0          b = batch_size / world_size
        rows [b, 2b)     -> rank 1
        ...
    each rank: forward + backward on its b rows; DDP averages the gradients (or FSDP2 reduce-scatters them)

Every rank draws the whole global batch and keeps its slice, so the batch order is a property of the run,
not of the number of processes: N processes x b rows give the losses of 1 process x N*b rows, and a run
resumed with another world size continues the same stream of batches (the data generator is saved once and
restored on every rank). Drawing the rows the others train on is cheap next to a forward pass (a gather of
token windows). Dropout: rank 0 draws from the run's global RNG, which is saved and restored as before;
rank r > 0 reseeds from (seed, r, step) when it starts or resumes, so its masks differ from rank 0's and a
resume is reproducible for every world size. Only rank 0 writes (checkpoints, metrics.jsonl, the progress
bar and the log); the other ranks' stdout goes to /dev/null.

``--fsdp`` (FSDP2, ``torch.distributed.fsdp.fully_shard``) is for CUDA: on CPU it would only add traffic,
so it is refused there; the environment variable QKV_FSDP_ON_CPU=1 lets the tests run its code path on gloo.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import ConfigError
from ..runtime import idle_cores


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_size: int = 1                  # processes on this machine (they share its cores)
    device: torch.device = torch.device("cpu")
    backend: str | None = None           # None: a single process, no process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @classmethod
    def from_env(cls) -> "World":
        """The world torchrun describes (joined once per process), or a single process."""
        size = launched_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
        if size == 1:
            return cls(device=torch.device("cuda") if device.type == "cuda" else device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        if not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group(backend)
            if dist.get_rank() != 0:                   # one log, one progress bar: rank 0's
                sys.stdout = open(os.devnull, "w")
        rank = dist.get_rank()
        return cls(rank, dist.get_world_size(), int(os.environ.get("LOCAL_WORLD_SIZE", "1")), device, backend)

    def threads(self, requested: int | None) -> int | None:
        """Intra-op threads per process: --threads, else the cores other processes leave idle
        (``qkv.runtime``), split between this machine's processes (N processes with torch's default of
        one thread per core would each spin on every core). None on a GPU: torch's default."""
        if requested is not None or self.device.type == "cuda":
            return requested
        return max(1, idle_cores() // self.local_size)

    def shard(self, batch: dict) -> dict:
        """This rank's rows of a global batch (every entry's first dimension is the batch)."""
        if not self.distributed:
            return {k: v.to(self.device) for k, v in batch.items()}
        n = len(next(iter(batch.values())))
        b = n // self.size
        return {k: v[self.rank * b:(self.rank + 1) * b].to(self.device) for k, v in batch.items()}

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over the ranks (one small all-reduce)."""
        if not self.distributed:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def main_tokenizer(self, train):
        """``train()``'s tokenizer, trained on rank 0 alone and sent to the others (the tokenizers library's
        trainers are not deterministic across processes: WordPiece's vocabulary order can differ)."""
        if not self.distributed:
            return train()
        from tokenizers import Tokenizer as Backend

        from ..tokenizers import Tokenizer
        message = [train().backend.to_str() if self.is_main else None]
        dist.broadcast_object_list(message, src=0)
        return Tokenizer(Backend.from_str(message[0]))

    def same_everywhere(self, text: str, what: str) -> None:
        """Fail on every rank when ``text`` differs between ranks (a check: cheap, one hash per rank)."""
        if not self.distributed:
            return
        digests: list[str | None] = [None] * self.size
        dist.all_gather_object(digests, hashlib.sha256(text.encode()).hexdigest())
        if len(set(digests)) > 1:
            raise ConfigError(f"the ranks built different {what}; give every rank the same data and options")

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def launched_world_size() -> int:
    """The world size torchrun announces (1 without torchrun), readable before joining the group."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_launch(batch_size: int, fsdp: bool, resumed: bool = False, world_size: int | None = None) -> None:
    """Refuse, before any rendezvous or work, a launch that cannot run: a global batch that does not split
    into the ranks' slices, or --fsdp without CUDA."""
    size = world_size or launched_world_size()
    if fsdp and not torch.cuda.is_available() and not os.environ.get("QKV_FSDP_ON_CPU"):
        raise ConfigError("--fsdp shards the model over GPUs and needs CUDA, which this machine lacks; drop "
                          "--fsdp (under torchrun on CPU the run uses DDP)")
    if batch_size % size == 0:
        return
    multiple = batch_size + size - batch_size % size
    if resumed:
        divisors = [n for n in range(1, batch_size + 1) if batch_size % n == 0]
        raise ConfigError(f"the resumed run's batch_size {batch_size} does not split over {size} processes; resume "
                          f"with a world size (--nproc_per_node x --nnodes) in {divisors}, or pass --batch-size "
                          f"{multiple} (a multiple of {size}; the batches then differ from the saved run's)")
    if batch_size < size:
        raise ConfigError(f"{size} processes but --batch-size {batch_size}: each process needs at least one row "
                          f"of the batch; pass --batch-size {size} or more (a multiple of {size}), or start "
                          f"fewer processes")
    raise ConfigError(f"--batch-size {batch_size} does not split over {size} processes; pass a multiple of {size} "
                      f"(e.g. {multiple})")


def parallel(model: torch.nn.Module, world: World, fsdp: bool) -> torch.nn.Module:
    """The module the training loop calls: ``model`` itself (one process), DDP around it (its parameters and
    gradients replicated; one all-reduce of the gradients per step), or ``model`` sharded in place by FSDP2
    (each block's parameters, gradients and AdamW moments split over the ranks; gathered per block for its
    forward and backward). Build the optimizer after this: FSDP2 replaces the parameters with shards."""
    model.to(world.device)
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        from ..nn.block import Block
        for module in model.modules():
            if isinstance(module, Block):              # one all-gather per block: only one block is whole at a time
                fully_shard(module)
        fully_shard(model)
        return model
    if not world.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(model, device_ids=[world.device] if world.device.type == "cuda" else None)


def sync_gradients(module: torch.nn.Module, sync: bool):
    """Accumulation micro-batches before the last skip the gradient exchange (DDP's no_sync, FSDP2's
    set_requires_gradient_sync); the last one exchanges the sum."""
    if hasattr(module, "set_requires_gradient_sync"):
        module.set_requires_gradient_sync(sync)
    elif hasattr(module, "no_sync") and not sync:
        return module.no_sync()
    return contextlib.nullcontext()


def is_sharded(model: torch.nn.Module) -> bool:
    return hasattr(model, "set_requires_gradient_sync")


def full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> tuple[dict, dict | None]:
    """(model state, optimizer state) as one process holds them: FSDP2's shards gathered to rank 0 (every rank
    must call this; the others get empty dicts), or the plain state dicts."""
    if not is_sharded(model):
        return model.state_dict(), optimizer.state_dict() if optimizer is not None else None
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    opt = get_optimizer_state_dict(model, optimizer, options=options) if optimizer is not None else None
    return get_model_state_dict(model, options=options), opt


def load_full_state(model: torch.nn.Module, state: dict, optimizer: torch.optim.Optimizer | None = None,
                    optimizer_state: dict | None = None) -> None:
    """The inverse of ``full_state`` (every rank passes the whole state it read from the checkpoint)."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, state, options=options)
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)


def dropout_seed(seed: int, rank: int, step: int) -> int:
    """The dropout stream of rank > 0 from a start at ``step`` (rank 0's is the saved global RNG)."""
    return (seed * 1_000_003 + rank * 7919 + step) % (2 ** 63)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
