"""Data-parallel scaling: tokens/s of the trainer's step in 2 processes (gloo DDP) against 1, on this machine,
and what the measured compute and all-reduce times predict for 8 machines on a 10 Gb/s network.

Three runs of the same model and global batch (bench train's shape: 6 x 384, context 256, batch 8), each a
fresh process group:

    1 process   x C/2 threads   the baseline T1: one rank's share of the machine
    1 process   x C threads     the other way to use this machine's C cores: intra-op threads
    2 processes x C/2 threads   torchrun --nproc_per_node 2: each rank takes half of every batch

    scaling efficiency = T(2 processes) / (2 x T1)       1.0 = perfect

Inside the 2-process run each rank also times, separately, its forward + backward without the gradient
exchange (DDP's no_sync) and a bare all-reduce of a buffer the size of the gradients. The prediction for
N machines of this kind (each running the 1-process x C threads step on its own batch of 8; weak scaling):

    compute  c = the measured step of one machine (1 process x C threads)
    wire     w = 2 (N-1)/N x G / (10 Gb/s / 8)        ring all-reduce: each byte of the G gradient bytes
                                                      leaves and arrives twice, less 1/N (Patarasuk & Yuan)
    reduce   r = the measured 2-rank all-reduce here  (gloo's CPU cost of summing G bytes, no network)
    step     c + w + r                                no overlap of the exchange with the backward pass:
                                                      a floor (DDP overlaps bucket all-reduces with backward)
    tokens/s = N x batch x context / step;   efficiency = c / step

bench/README.md and the README's "Training on several processes" section give the figures and the reasoning.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

import torch

from ..runtime import available_cores
from .train import SHAPE

WIRE_GBPS = 10.0
MACHINES = 8


def _worker(batch: int, steps: int, warmup: int, precision: str) -> dict:
    """One rank's measurement (run inside torchrun or alone); rank 0 returns the figures."""
    import torch.distributed as dist

    from ..config import ModelConfig
    from ..models import GPT
    from ..train.distributed import World, parallel, shutdown, sync_gradients
    from ..train.optim import make_optimizer
    from ..train.precision import choose_precision

    world = World.from_env()
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=SHAPE["vocab_size"], max_len=SHAPE["context"], n_layers=SHAPE["n_layers"],
                      d_model=SHAPE["d_model"], n_heads=SHAPE["n_heads"], dropout=0.0)
    model = GPT(cfg).train()
    wrapped = parallel(model, world, fsdp=False)
    opt = make_optimizer(model, 1e-3, 0.1, (0.9, 0.99))
    bf16 = choose_precision(precision, "cpu").bf16
    rows = batch // world.size
    ids_BL = torch.randint(0, cfg.vocab_size, (rows, SHAPE["context"]))

    def forward_backward(sync: bool = True):
        with sync_gradients(wrapped, sync):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = wrapped(ids_BL, ids_BL).loss
            loss.backward()

    def step():
        forward_backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    world.barrier()
    step_s = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        step_s.append(time.perf_counter() - t0)
    compute_s, allreduce_s = [], []
    if world.distributed:
        grads = torch.zeros(sum(p.numel() for p in model.parameters()))
        for _ in range(steps):
            t0 = time.perf_counter()
            forward_backward(sync=False)
            compute_s.append(time.perf_counter() - t0)
            opt.zero_grad(set_to_none=True)
            world.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(grads)
            allreduce_s.append(time.perf_counter() - t0)
    result = dict(processes=world.size, threads=torch.get_num_threads(), step_s=statistics.median(step_s),
                  tok_s=batch * SHAPE["context"] / statistics.median(step_s), params=model.num_params(),
                  grad_bytes=4 * sum(p.numel() for p in model.parameters()), bf16=bf16)
    if allreduce_s:
        result.update(compute_s=statistics.median(compute_s), allreduce_s=statistics.median(allreduce_s))
    shutdown()
    return result if world.is_main else {}


def _launch(processes: int, threads: int, batch: int, steps: int, warmup: int, precision: str) -> dict:
    args = ["-m", "qkv.bench.ddp", str(batch), str(steps), str(warmup), precision]
    if processes > 1:
        args = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] + args
    env = os.environ | {"OMP_NUM_THREADS": str(threads)}
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"the {processes}-process run failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(json_out: bool = False, *, batch: int = SHAPE["batch"], steps: int = 5, warmup: int = 2,
        precision: str = "auto") -> dict:
    cores = available_cores()
    half = max(1, cores // 2)
    runs = {f"1x{half}": _launch(1, half, batch, steps, warmup, precision),
            f"1x{cores}": _launch(1, cores, batch, steps, warmup, precision),
            f"2x{half}": _launch(2, half, batch, steps, warmup, precision)}
    base, machine, two = runs[f"1x{half}"], runs[f"1x{cores}"], runs[f"2x{half}"]
    grad_bytes = two["grad_bytes"]
    wire_s = 2 * (MACHINES - 1) / MACHINES * grad_bytes / (WIRE_GBPS * 1e9 / 8)
    step_s = machine["step_s"] + wire_s + two["allreduce_s"]
    result = {
        "bench": "ddp", "shape": dict(SHAPE, batch=batch), "precision": "bf16" if two["bf16"] else "fp32",
        "cores": cores, "load_avg_1m": round(os.getloadavg()[0], 2), "torch": torch.__version__,
        "runs": runs,
        "tokens_per_s_1_process": round(machine["tok_s"], 1),
        "tokens_per_s_2_processes": round(two["tok_s"], 1),
        "speedup_2_vs_1_process": round(two["tok_s"] / machine["tok_s"], 3),
        "scaling_efficiency": round(two["tok_s"] / (2 * base["tok_s"]), 3),
        "measured": {"compute_s": round(two["compute_s"], 4), "allreduce_s": round(two["allreduce_s"], 4),
                     "grad_mb": round(grad_bytes / 1e6, 2), "machine_step_s": round(machine["step_s"], 4)},
        "prediction": {"machines": MACHINES, "network_gbps": WIRE_GBPS, "wire_s": round(wire_s, 4),
                       "step_s": round(step_s, 4),
                       "tokens_per_s": round(MACHINES * batch * SHAPE["context"] / step_s, 1),
                       "efficiency": round(machine["step_s"] / step_s, 3)},
    }
    if json_out:
        print(json.dumps(result))
    else:
        p = result["prediction"]
        print(f"DDP on {cores} cores ({result['precision']}, batch {batch} x {SHAPE['context']}, load "
              f"{result['load_avg_1m']}): 1 process x {half} thread(s) {base['tok_s']:.0f} tok/s, 1 x {cores} "
              f"{machine['tok_s']:.0f}, 2 x {half} {two['tok_s']:.0f} (efficiency {result['scaling_efficiency']:.2f})")
        print(f"  measured: forward+backward {two['compute_s'] * 1e3:.0f} ms per rank, all-reduce of "
              f"{grad_bytes / 1e6:.0f} MB {two['allreduce_s'] * 1e3:.0f} ms")
        print(f"  {MACHINES} machines on {WIRE_GBPS:g} Gb/s: step {p['step_s']:.2f} s, {p['tokens_per_s']:.0f} tok/s, "
              f"efficiency {p['efficiency']:.2f} (no overlap: a floor)")
    return result


if __name__ == "__main__":                     # one rank of a measurement: `python -m qkv.bench.ddp B STEPS WARMUP P`
    figures = _worker(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    if figures:
        print(json.dumps(figures))
