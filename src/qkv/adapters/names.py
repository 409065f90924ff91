"""qkv's adaptable modules under Hugging Face's names (PEFT's ``target_modules`` match these), one table per
layout qkv loads and PEFT knows (the table is drawn in ``peft_format``'s docstring). Used by ``lora`` to
choose the modules a run adapts and by ``peft_format`` to name their tensors in PEFT's files.
"""

from __future__ import annotations

from ..errors import ConfigError

LAYOUTS = {
    "llama": ("model.layers", {"attn.wq": ("self_attn.q_proj",), "attn.wkv": ("self_attn.k_proj", "self_attn.v_proj"),
                               "attn.wo": ("self_attn.o_proj",), "mlp.gate": ("mlp.gate_proj",),
                               "mlp.up": ("mlp.up_proj",), "mlp.down": ("mlp.down_proj",)}),
    "bert": ("encoder.layer", {"attn.wq": ("attention.self.query",),
                               "attn.wkv": ("attention.self.key", "attention.self.value"),
                               "attn.wo": ("attention.output.dense",), "mlp.up": ("intermediate.dense",),
                               "mlp.down": ("output.dense",)}),
}


def layout(model) -> str:
    from ..models.encoder import Encoder            # layers/models only when called: adapters sit above them
    if isinstance(model, Encoder):
        return "bert"
    if getattr(model.cfg, "mlp", None) == "swiglu" and hasattr(model, "blocks"):
        return "llama"
    raise ConfigError(f"LoRA needs a Llama-layout decoder (SwiGLU FFN: Llama, Mistral, Qwen2, SmolLM2) or a BERT "
                      f"encoder; this {getattr(model, 'model_type', type(model).__name__)} model ("
                      f"{getattr(model.cfg, 'mlp', '?')} FFN) has no PEFT module names")


def all_parts(model) -> dict[str, list[tuple[str, int, int]]]:
    """{qkv module: [(Hugging Face module, first row, end row), ...]} for every adaptable part of ``model``."""
    prefix, table = LAYOUTS[layout(model)]
    out = {}
    for i in range(len(model.blocks)):
        for suffix, names in table.items():
            name = f"blocks.{i}.{suffix}"
            try:
                module = model.get_submodule(name)
            except AttributeError:
                continue
            rows = module.out_features // len(names)
            out[name] = [(f"{prefix}.{i}.{hf}", j * rows, (j + 1) * rows) for j, hf in enumerate(names)]
    return out


def short_name(full: str) -> str:
    """"model.layers.3.self_attn.q_proj" -> "self_attn.q_proj": the name a target is matched against."""
    return full.split(".", 3)[-1]


def select_parts(model, targets: tuple[str, ...]) -> dict[str, list[tuple[str, int, int]]]:
    """The parts ``targets`` name (all of them when empty); a target that selects nothing is an error."""
    parts = all_parts(model)
    if not targets:
        return parts
    names = sorted({short_name(full) for ps in parts.values() for full, _, _ in ps})
    for target in targets:
        if not any(n == target or n.endswith("." + target) for n in names):
            short = sorted({n.rsplit(".", 1)[-1] for n in names} | set(names))
            raise ConfigError(f"LoRA target {target!r} matches no module of this {layout(model)}-layout model; "
                              f"choose from {', '.join(short)}")
    chosen = {}
    for module, ps in parts.items():
        kept = [p for p in ps if any(short_name(p[0]) == t or short_name(p[0]).endswith("." + t) for t in targets)]
        if kept:
            chosen[module] = kept
    return chosen
