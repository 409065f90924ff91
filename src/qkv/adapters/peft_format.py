"""LoRA adapters in PEFT's files, so ``peft.PeftModel.from_pretrained(transformers_model, DIR)`` reads what
``qkv finetune --lora`` trained, and qkv reads adapters PEFT trained.

    DIR/adapter_config.json        peft_type LORA, r, lora_alpha, lora_dropout, target_modules, ...
    DIR/adapter_model.safetensors  base_model.model.<Hugging Face module>.lora_A.weight  (R, I)
                                   base_model.model.<Hugging Face module>.lora_B.weight  (O, R)

qkv's modules carry Hugging Face's names through two tables, one per layout qkv loads and PEFT knows:

    qkv (blocks.{i}.)   Llama (model.layers.{i}.)         BERT (encoder.layer.{i}.)
    attn.wq             self_attn.q_proj                   attention.self.query
    attn.wkv [k ; v]    self_attn.k_proj, self_attn.v_proj attention.self.key, attention.self.value
    attn.wo             self_attn.o_proj                   attention.output.dense
    mlp.gate            mlp.gate_proj                      -
    mlp.up              mlp.up_proj                        intermediate.dense
    mlp.down            mlp.down_proj                      output.dense

A decoder with a SwiGLU FFN is Llama's layout (Llama, Mistral, Qwen2, SmolLM2's GGUF), an encoder BERT's;
GPT-2's fused Conv1D c_attn has no such split and is refused. A target name selects every module whose
name ends with it (PEFT's rule: "dense" is all three of BERT's), and the saved ``target_modules`` is a
pattern of exactly the modules adapted. A task head (a classifier) is trained whole; it is not an adapter
and is not in these files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..errors import CheckpointError
from .lora import LoRAConfig, adapt, adapted, key, pass_gradients_through_quantized
from .names import all_parts, layout

CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
KEY = re.compile(r"^(?:.*\.)?(model\.layers|encoder\.layer)\.(\d+)\.(.+)\.lora_([AB])(?:\.default)?\.weight$")


def save_adapter(model, directory: str | Path, base: str | None = None) -> Path:
    """DIR/adapter_config.json + DIR/adapter_model.safetensors (written into an existing directory)."""
    from safetensors.torch import save_file
    cfg: LoRAConfig = model.lora_config
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors, names = {}, []
    for _, module in adapted(model):
        for full, _, _ in module.lora.parts:
            names.append(full)
            tensors[f"base_model.model.{full}.lora_A.weight"] = module.lora.A[key(full)].detach().float().contiguous()
            tensors[f"base_model.model.{full}.lora_B.weight"] = module.lora.B[key(full)].detach().float().contiguous()
    kind = layout(model)
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM" if kind == "llama" else None, "r": cfg.rank,
              "lora_alpha": cfg.alpha, "lora_dropout": cfg.dropout, "bias": "none", "fan_in_fan_out": False,
              "target_modules": "|".join(r"(.*\.)?" + re.escape(n) for n in sorted(names)),
              "base_model_name_or_path": base, "inference_mode": True, "init_lora_weights": True,
              "use_rslora": False, "use_dora": False, "modules_to_save": None}
    (d / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    save_file(tensors, str(d / WEIGHTS_FILE), metadata={"format": "pt"})
    return d


def _read(directory: Path) -> tuple[dict, dict]:
    from safetensors.torch import load_file
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise CheckpointError(f"{directory} has no {name}; pass a LoRA adapter directory (as qkv finetune --lora "
                                  f"or PEFT's save_pretrained writes it)")
    try:
        config = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
        return config, load_file(str(directory / WEIGHTS_FILE))
    except Exception as e:  # malformed JSON or safetensors
        raise CheckpointError(f"{directory} holds an unreadable adapter ({e}); re-save it") from None


def load_adapter(model, directory: str | Path):
    """Put the adapter in ``directory`` on ``model`` (frozen base, as add_lora leaves it). Returns the model.
    An adapter whose modules or shapes this model lacks was trained on another base: an error says so."""
    d = Path(directory)
    config, tensors = _read(d)
    if config.get("peft_type") != "LORA" or config.get("use_dora") or config.get("use_rslora") \
            or config.get("rank_pattern") or config.get("alpha_pattern"):
        raise CheckpointError(f"{d} is not a plain LoRA adapter (peft_type {config.get('peft_type')!r}, DoRA, rsLoRA "
                              f"or per-module ranks); qkv reads LoRA with one rank and alpha")
    cfg = LoRAConfig(rank=int(config["r"]), alpha=float(config["lora_alpha"]),
                     dropout=float(config.get("lora_dropout") or 0.0))
    by_hf = {full: (module, (full, start, stop)) for module, ps in all_parts(model).items() for full, start, stop in ps}
    weights: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        match = KEY.match(name)
        full = f"{match.group(1)}.{match.group(2)}.{match.group(3)}" if match else None
        if full not in by_hf:
            raise CheckpointError(f"{d}: adapter tensor {name} names no module of this model; the adapter was "
                                  f"trained on another base (load it on that one)")
        weights.setdefault(full, {})[match.group(4)] = tensor
    chosen: dict[str, list] = {}
    for full in sorted(weights):
        module, part = by_hf[full]
        chosen.setdefault(module, []).append(part)
    for p in model.parameters():
        p.requires_grad_(False)
    for module_name, parts in chosen.items():
        module = model.get_submodule(module_name)
        parts.sort(key=lambda p: p[1])
        adapt(module, parts, cfg)
        for full, start, stop in parts:
            a, b = weights[full].get("A"), weights[full].get("B")
            in_features = module.lora.A[key(full)].shape[1]
            if a is None or b is None or tuple(a.shape) != (cfg.rank, in_features) or \
                    tuple(b.shape) != (stop - start, cfg.rank):
                raise CheckpointError(f"{d}: {full}'s adapter is {None if a is None else tuple(a.shape)} / "
                                      f"{None if b is None else tuple(b.shape)} but this model needs ({cfg.rank}, "
                                      f"{in_features}) / ({stop - start}, {cfg.rank}); the adapter was trained on "
                                      f"another base (load it on that one)")
            with torch.no_grad():
                module.lora.A[key(full)].copy_(a)
                module.lora.B[key(full)].copy_(b)
    pass_gradients_through_quantized(model)
    model.lora_config = cfg
    return model
