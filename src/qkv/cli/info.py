"""`qkv info DIR`: what a checkpoint is and how it was made.

    qkv info runs/shakespeare-char
    qkv info path/to/hf-gpt2 --json

Prints the family and model type, the architecture, the parameter count, the tokenizer, the training run
(steps, time, tokens, the last and best losses from metrics.jsonl, the data and the budget), and for a
fine-tuned run its task and last evaluation. ``--json`` prints the same as one JSON object.
"""

from __future__ import annotations

import dataclasses
import json

from .flags import path_arg


def add_arguments(p) -> None:
    p.add_argument("checkpoint", type=path_arg, metavar="DIR",
                   help="a qkv run or model directory, a Hugging Face directory, or a .gguf file")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args) -> int:
    from pathlib import Path

    from .. import load
    from ..checkpoint import read_config
    from ..interop import is_gguf
    from ..loading import family_of, model_type_of
    from ..quant import Int4Linear, Int8Linear
    from ..rundir import resolve_dir

    kind, model_type = family_of(args.checkpoint), model_type_of(args.checkpoint)
    vision = None
    if is_gguf(args.checkpoint):                  # a GGUF file: its metadata stands in for config.json
        d, (cfg, tok, parameters, config) = Path(args.checkpoint), _gguf_facts(args.checkpoint)
    else:
        d = resolve_dir(args.checkpoint)
        config = read_config(d)
        model = load(d)
        cfg, tok, vision = model.cfg, model.tokenizer, getattr(model, "vision", None)
        quantized = sum(m.in_features * m.out_features for m in model.modules()
                        if isinstance(m, (Int8Linear, Int4Linear)))
        parameters = sum(p.numel() for p in model.parameters()) + quantized
    info = {"checkpoint": str(args.checkpoint), "family": kind, "model_type": model_type,
            "qkv_version": config.get("qkv_version"), "parameters": parameters,
            "model": {k: v for k, v in dataclasses.asdict(cfg).items() if v is not None},
            "tokenizer": None if tok is None else {
                "kind": tok.kind, "vocab_size": tok.vocab_size,
                "special": {name: tok.backend.id_to_token(i)
                            for name in ("bos", "eos", "pad", "cls", "sep", "mask", "unk")
                            if (i := getattr(tok, f"{name}_id")) is not None}}}
    if tok is not None and tok.chat_template is not None:
        info["tokenizer"]["chat_template"] = True
    if vision is not None:                                 # an image classifier: what it reads and names
        info["vision"] = {**dataclasses.asdict(vision), "classes": len(model.labels)}
    if "quantization" in config:
        layout = config["quantization"]
        info["quantization"] = {kind: sum(v == kind for v in layout.values()) for kind in sorted(set(layout.values()))}
    if "quantization" in config or is_gguf(args.checkpoint):   # where its quantized layers compute
        from .. import native
        info["quantized_kernels"] = native.variant()
    for key in ("train", "finetune", "labels", "best", "gguf", "precision", "world"):
        if key in config:
            info[key] = config[key]
    metrics = _metrics(d / "metrics.jsonl")
    if metrics:
        last = metrics[-1]
        best = min(metrics, key=lambda m: m["val_loss"])
        info["training"] = {"steps": last["step"], "elapsed_s": last["elapsed_s"], "tokens": last["tokens"],
                            "train_loss": last["train_loss"], "val_loss": last["val_loss"],
                            "best_val_loss": best["val_loss"], "best_step": best["step"], "evaluations": len(metrics)}
    report = d / "eval.json"
    if report.is_file():
        info["evaluation"] = json.loads(report.read_text(encoding="utf-8"))
    print(json.dumps(info, indent=2) if args.json else _text(info))
    return 0


def _gguf_facts(path):
    """(model config, tokenizer, parameter count, the config.json stand-in) of a GGUF file from its
    metadata and tensor list alone: reading the weights would take most of a second for nothing."""
    from ..interop.gguf import open_gguf
    from ..interop.gguf_tokenizer import tokenizer_from_gguf
    f, cfg = open_gguf(path)
    types: dict[str, int] = {}
    for t in f.tensors.values():
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    config = {"gguf": {"name": f.get("general.name"), "architecture": f.get("general.architecture"),
                       "tensor_types": types}}
    return cfg, tokenizer_from_gguf(f, f.arch), sum(t.n_elements for t in f.tensors.values()), config


def _metrics(path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue                                  # a damaged line does not hide the others
        if isinstance(row, dict) and {"step", "val_loss", "train_loss", "elapsed_s", "tokens"} <= set(row):
            rows.append(row)
    return rows


def _text(info: dict) -> str:
    cfg = info["model"]
    lines = [f"{info['checkpoint']}: {info['family']} ({info['model_type']}), {info['parameters']:,} parameters",
             f"  architecture: {cfg.get('n_layers')} layers x d_model {cfg.get('d_model')}, {cfg.get('n_heads')} heads"
             f" ({cfg.get('kv_heads', cfg.get('n_kv_heads') or cfg.get('n_heads'))} kv), context {cfg.get('max_len')}, "
             f"vocab {cfg.get('vocab_size')}; {cfg.get('norm')} {cfg.get('norm_placement')}-norm, {cfg.get('mlp')}, "
             f"{cfg.get('pos')} positions, {cfg.get('mask')} mask"]
    if "vision" in info:
        v = info["vision"]
        lines[-1] = (f"  architecture: {v['model']}, {cfg.get('n_layers')} layers x d_model {cfg.get('d_model')}, "
                     f"{cfg.get('n_heads')} heads; {v['image_size']}x{v['image_size']} images, "
                     f"{v['channels']} channel(s), "
                     f"{v['patch_size']}x{v['patch_size']} patches; {v['classes']} classes; normalized by mean "
                     f"{v['image_mean']}, std {v['image_std']}, resized {v['resample']}")
    tok = info["tokenizer"]
    lines.append("  tokenizer: none" if tok is None else
                 f"  tokenizer: {tok['kind']}, {tok['vocab_size']:,} tokens, special "
                 f"{', '.join(f'{k}={v}' for k, v in tok['special'].items()) or 'none'}")
    if tok is not None and tok.get("chat_template"):
        lines[-1] += "; chat template"
    if "quantization" in info:
        lines.append("  quantized: " + ", ".join(f"{n} Linear layers {k}" for k, n in info["quantization"].items()))
    if "gguf" in info:
        g = info["gguf"]
        lines.append(f"  GGUF: {g['name']} ({g['architecture']}); tensors "
                     + ", ".join(f"{n} {k}" for k, n in sorted(g["tensor_types"].items())))
    if "quantized_kernels" in info:
        lines.append(f"  quantized layers compute on: {info['quantized_kernels']} kernels "
                     f"(qkv.native; QKV_KERNELS overrides)")
    if "train" in info:
        t = info["train"]
        what = t.get("task") if t.get("task") != "lm" else f"lm ({t.get('objective')})"
        # a fine-tuning run keeps TrainConfig for its optimizer and budget only: its task and data are on the
        # "fine-tuned:" line (the config's pre-training defaults, "lm on the bundled corpus", are not what ran)
        made = "" if "finetune" in info else f", task {what} on {t.get('data') or 'the bundled corpus'}"
        budget = f"max_iters {t.get('max_iters')}" + (f", max_time {t['max_time']:g} s" if t.get("max_time") else "")
        lines.append(f"  made by: qkv {info.get('qkv_version')}{made}"
                     f"; {budget}; lr {t.get('lr')}, batch {t.get('batch_size')}, {_precision(info)}, "
                     f"seed {t.get('seed')}{_processes(info)}")
    if "finetune" in info:
        f = info["finetune"]
        lines.append(f"  fine-tuned: task {f['task']} from {f.get('init') or 'scratch'} on {f['data']}")
    if "training" in info:
        r = info["training"]
        lines.append(f"  trained: {r['steps']:,} steps, {r['elapsed_s']:.0f} s, {r['tokens']:,} tokens; train_loss "
                     f"{r['train_loss']:.4f}, val_loss {r['val_loss']:.4f} (best {r['best_val_loss']:.4f} at step "
                     f"{r['best_step']:,})")
    if "evaluation" in info:
        e = info["evaluation"]
        lines.append(f"  evaluated: {e.get('metric')} {e.get('score')} on {e.get('examples')} examples of "
                     f"{e.get('eval_data')}")
    return "\n".join(lines)


def _precision(info: dict) -> str:
    """What the run computed in: the decision stored since --precision auto, else the flag as given."""
    if "precision" in info:
        p = info["precision"]
        return p["chosen"] + (" (auto)" if p["requested"] == "auto" else "")
    return info["train"].get("precision", "fp32")


def _processes(info: dict) -> str:
    world = info.get("world") or {}
    return f", {world['processes']} processes ({world['backend']})" if world.get("processes", 1) > 1 else ""
