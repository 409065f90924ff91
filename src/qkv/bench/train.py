"""Training speed: tokens/s of one forward + backward + AdamW step, qkv's GPT against Hugging Face's
GPT2LMHeadModel of the same shape, timed in the same process.

The shape is the "baby GPT" of the well-known minimal GPT: 6 layers, 6 heads, d_model 384, context 256,
batch 8, a 65-symbol vocabulary, dropout 0. qkv runs twice: in fp32, and in the precision ``--precision
auto`` picks on this machine (bf16 autocast where the CPU has AVX-512 BF16 or AMX, else fp32 again); both
are compared with Hugging Face in fp32, timed in the same rounds. qkv's model is ``ModelConfig``'s defaults at that
shape, which is GPT-2's architecture (learned positions, pre-norm LayerNorm, GELU, biases, tied head), so
both sides do the same arithmetic. A step is what a training loop does per batch:

    loss = model(ids, targets).loss;  loss.backward();  opt.step();  opt.zero_grad(set_to_none=True)

Both sides use the trainer's optimizer (``qkv.train.optim.make_optimizer``: AdamW with decay groups,
``fused=True``, which is also what Hugging Face's Trainer picks by default for torch >= 2.8), so only the
models differ. Hugging Face runs as its users get it: eager, ``attn_implementation="sdpa"``, with
``use_cache=False`` (its cache is no use in training and would only cost it time).

Timing: each side runs ``warmup`` untimed steps (the first one compiles when ``compile`` is on), then
``rounds`` rounds of ``steps`` steps, qkv and Hugging Face alternating inside each round (who goes first
alternates too) so that load from other processes falls on both alike. Reported: the median and the best
round of each side, and the median over rounds of the per-round ratio. On a shared machine the spread is
wide; the best round shows what the machine can do, the median ratio is the fair comparison.
``--device cuda`` runs both sides on the GPU (``--precision auto`` is then bf16 from Ampere on).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import time
from typing import Callable

import torch

from ..config import ModelConfig, TrainConfig
from ..models import GPT
from ..train.optim import make_optimizer
from ..train.precision import choose_precision

SHAPE = dict(n_layers=6, n_heads=6, d_model=384, context=256, batch=8, vocab_size=65)
DEFAULTS = TrainConfig()                  # lr, weight decay and betas as the trainer uses them


def _optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    return make_optimizer(model, DEFAULTS.lr, DEFAULTS.weight_decay, (DEFAULTS.beta1, DEFAULTS.beta2))


def _step_fn(loss_of: Callable[[], torch.Tensor], opt: torch.optim.Optimizer) -> Callable[[], float]:
    def step() -> float:
        loss = loss_of()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()        # a real loop reads the loss; this also waits for the step to finish
    return step


def ours(batch: int, context: int, compile: bool, seed: int = 0, bf16: bool = False,
         device: torch.device = torch.device("cpu")) -> tuple[Callable[[], float], dict]:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=SHAPE["vocab_size"], max_len=context, n_layers=SHAPE["n_layers"],
                      d_model=SHAPE["d_model"], n_heads=SHAPE["n_heads"], dropout=0.0)
    model = GPT(cfg).to(device).train()
    opt = _optimizer(model)
    forward = torch.compile(model) if compile else model
    ids_BL = torch.randint(0, cfg.vocab_size, (batch, context), device=device)
    targets_BL = torch.randint(0, cfg.vocab_size, (batch, context), device=device)
    def loss():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):     # as the trainer runs it
            return forward(ids_BL, targets_BL).loss
    step = _step_fn(loss, opt)
    info = dict(model="qkv.GPT", params=model.num_params(), compile=compile, optimizer=_describe(opt),
                precision="bf16" if bf16 else "fp32", config=dataclasses.asdict(cfg))
    return step, info


def huggingface(batch: int, context: int, seed: int = 0,
                device: torch.device = torch.device("cpu")) -> tuple[Callable[[], float], dict]:
    import transformers
    transformers.logging.set_verbosity_error()        # its notes about unused token ids are not ours
    torch.manual_seed(seed)
    hf_cfg = transformers.GPT2Config(vocab_size=SHAPE["vocab_size"], n_positions=context,
                                     n_embd=SHAPE["d_model"], n_layer=SHAPE["n_layers"],
                                     n_head=SHAPE["n_heads"], resid_pdrop=0.0, embd_pdrop=0.0,
                                     attn_pdrop=0.0, bos_token_id=None, eos_token_id=None, use_cache=False,
                                     attn_implementation="sdpa")
    model = transformers.GPT2LMHeadModel(hf_cfg).to(device).train()
    opt = _optimizer(model)
    ids_BL = torch.randint(0, SHAPE["vocab_size"], (batch, context), device=device)
    # The model shifts labels itself; passing the ids as labels is how its users train it.
    step = _step_fn(lambda: model(input_ids=ids_BL, labels=ids_BL).loss, opt)
    info = dict(model="transformers.GPT2LMHeadModel", version=transformers.__version__,
                params=sum(p.numel() for p in model.parameters()), compile=False,
                attn_implementation=model.config._attn_implementation,
                activation=hf_cfg.activation_function, optimizer=_describe(opt))
    return step, info


def _describe(opt: torch.optim.Optimizer) -> str:
    d = opt.defaults
    return (f"AdamW(lr={d['lr']}, betas={tuple(d['betas'])}, weight_decay={opt.param_groups[0]['weight_decay']}"
            f" on matrices, fused={d['fused']})")


def _time(step: Callable[[], float], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        step()                    # loss.item() waits for the step, on a GPU too
    return time.perf_counter() - t0


def run(json_out: bool = False, *, batch: int = SHAPE["batch"], context: int = SHAPE["context"],
        warmup: int = 3, steps: int = 2, rounds: int = 8, compile: bool = False, hf: bool = True,
        threads: int | None = None, device: torch.device = torch.device("cpu")) -> dict:
    """Time both sides and return (and print) the result; with ``json_out`` print exactly one JSON line."""
    if threads is not None:
        torch.set_num_threads(threads)
    auto = choose_precision("auto", device.type)
    sides: dict[str, tuple[Callable[[], float], dict]] = {"qkv": ours(batch, context, compile, device=device)}
    if auto.bf16:                                         # else auto is fp32: the same side again
        sides["qkv_auto"] = ours(batch, context, compile, bf16=True, device=device)
    if hf:
        try:
            sides["hf"] = huggingface(batch, context, device=device)
        except ImportError:
            pass                                          # transformers is optional: report qkv alone
    warmup_s = {}
    for name, (step, _) in sides.items():
        t0 = time.perf_counter()
        for _ in range(warmup):
            step()
        warmup_s[name] = round(time.perf_counter() - t0, 1)
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(rounds):
        order = list(sides) if r % 2 == 0 else list(sides)[::-1]
        for name in order:
            seconds[name].append(_time(sides[name][0], steps))
    tokens = batch * context * steps
    result = {
        "bench": "train",
        "shape": dict(SHAPE, batch=batch, context=context, dtype="float32"),
        "precision_auto": auto.chosen,
        "precision_auto_why": auto.hardware,
        "timing": dict(warmup=warmup, steps=steps, rounds=rounds),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }
    for name, (_, info) in sides.items():
        rates = [tokens / s for s in seconds[name]]
        result[name] = dict(info, tok_s=round(statistics.median(rates), 1), best_tok_s=round(max(rates), 1),
                            rounds_tok_s=[round(x, 1) for x in rates], warmup_s=warmup_s[name])
    auto_side = "qkv_auto" if "qkv_auto" in sides else "qkv"
    result["tokens_per_s"] = result["qkv"]["tok_s"]                  # the headline figures, at the top level
    result["tokens_per_s_auto"] = result[auto_side]["tok_s"]
    if "hf" in sides:
        for suffix, side in (("", "qkv"), ("_auto", auto_side)):
            ratios = [h / q for q, h in zip(seconds[side], seconds["hf"])]     # same round, same load
            result["ratio" + suffix] = round(statistics.median(ratios), 3)
            result["ratio_best" + suffix] = round(result[side]["best_tok_s"] / result["hf"]["best_tok_s"], 3)
    if json_out:
        print(json.dumps(result))
    else:
        _print_table(result)
    return result


def _print_table(result: dict) -> None:
    s = result["shape"]
    print(f"train step on {result['device']}: {s['n_layers']} layers, d_model {s['d_model']}, {s['n_heads']} heads, "
          f"batch {s['batch']} x context {s['context']}, {s['dtype']}, {result['threads']} threads "
          f"(load {result['load_avg_1m']} on {result['cpus']} cpus)")
    for name in ("qkv", "qkv_auto", "hf"):
        if name in result:
            r = result[name]
            label = f"{r['model']} {r.get('precision', 'fp32')}"
            print(f"  {label:<35} median {r['tok_s']:>7.0f} tok/s   best {r['best_tok_s']:>7.0f}   "
                  f"compile={r['compile']}")
    if "ratio" in result:
        print(f"  qkv fp32 / hf fp32: {result['ratio']:.2f}x (median of per-round ratios), "
              f"{result['ratio_best']:.2f}x (best rounds)")
        print(f"  qkv auto ({result['precision_auto']}) / hf fp32: {result['ratio_auto']:.2f}x (median), "
              f"{result['ratio_best_auto']:.2f}x (best)")
