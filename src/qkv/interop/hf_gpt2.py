"""Hugging Face GPT-2 checkpoints in and out (Radford et al., 2019), without transformers installed.

A directory written by ``GPT2LMHeadModel.save_pretrained`` holds config.json, the weights
(model.safetensors, a sharded model.safetensors.index.json, or the older pytorch_model.bin) and usually
tokenizer files. GPT-2 is exactly our GPT with learned positions, pre-norm LayerNorm, a GELU-tanh FFN,
biases everywhere and a tied head, so loading is renaming keys:

    Hugging Face (``transformer.`` prefix optional)     qkv
    wte.weight                  (V, C)                  tok.weight              (head.weight is tied to it)
    wpe.weight                  (P, C)                  pos.table.weight
    h.{i}.ln_1 / ln_2           (C,)                    blocks.{i}.norm1 / norm2
    h.{i}.attn.c_attn           (C, 3C)  [q | k | v]    blocks.{i}.attn.wq  (rows q)  +  attn.wkv (rows [k ; v])
    h.{i}.attn.c_proj           (C, C)                  blocks.{i}.attn.wo
    h.{i}.mlp.c_fc / c_proj     (C, F) / (F, C)         blocks.{i}.mlp.up / mlp.down
    ln_f                        (C,)                    norm_f
    lm_head.weight              (V, C)                  head.weight             (only when untied)

HF's ``Conv1D`` stores its weight as (in, out), the transpose of ``nn.Linear``'s (out, in), so every
projection is transposed on the way in and out. Old checkpoints also carry the causal-mask buffers
``attn.bias`` / ``attn.masked_bias``; they are not weights and are dropped.

Safety: safetensors first; a .bin is read with ``torch.load(weights_only=True)``, which refuses to run
pickled code. Saving writes a temp directory next to the target and renames it into place.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..rundir import atomic_dir
from ..config import ModelConfig
from ..errors import CheckpointError, QkvError
from ..models.decoder import GPT
from ..tokenizers import Tokenizer
from ..weights import model_from_state
from .hf_files import check_shapes, read_hf_json, read_weights

# HF activation_function -> our mlp. gelu_new, gelu_fast and both gelu_*_tanh are the same tanh formula.
ACTIVATIONS_IN = {"gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                  "gelu_python_tanh": "gelu_tanh", "gelu": "gelu", "gelu_python": "gelu", "relu": "relu"}
ACTIVATIONS_OUT = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}

# Options that change the math in ways our GPT does not implement: name -> the only value we accept.
# (reorder_and_upcast_attn is absent on purpose: it only upcasts the eager softmax to float32, the same
# math, and HF's own SDPA path ignores it.)
REQUIRED_OPTIONS = {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                    "add_cross_attention": False}

# Our config fields GPT-2 has no way to express: name -> the value GPT-2 hard-codes.
GPT2_FIXED_FIELDS = {"pos": "learned", "norm": "layernorm", "norm_placement": "pre", "mask": "causal",
                     "window": None, "bias": True}

BUFFERS = (".attn.bias", ".attn.masked_bias")     # causal-mask buffers some checkpoints saved


# ---- config.json ---------------------------------------------------------------------------------------
def config_from_hf(hf: dict, where: str = "config.json") -> ModelConfig:
    """ModelConfig for a GPT-2 config.json; missing keys take GPT2Config's defaults, as transformers does."""
    if hf.get("model_type") != "gpt2":
        raise CheckpointError(f"{where} has model_type={hf.get('model_type')!r}; load_gpt2 reads 'gpt2' only")
    for name, want in REQUIRED_OPTIONS.items():
        if hf.get(name, want) != want:
            raise CheckpointError(f"{where} sets {name}={hf[name]!r}, which qkv's GPT does not implement; "
                                  f"only {name}={want!r} checkpoints can be loaded")
    act = hf.get("activation_function", "gelu_new")
    if act not in ACTIVATIONS_IN:
        raise CheckpointError(f"{where} sets activation_function={act!r}, which qkv does not implement; "
                              f"supported: {sorted(ACTIVATIONS_IN)}")
    try:
        return ModelConfig(
            vocab_size=hf.get("vocab_size", 50257), max_len=hf.get("n_positions", 1024),
            n_layers=hf.get("n_layer", 12), d_model=hf.get("n_embd", 768), n_heads=hf.get("n_head", 12),
            d_ff=hf.get("n_inner"), norm="layernorm", norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            norm_placement="pre", mlp=ACTIVATIONS_IN[act], pos="learned", mask="causal", bias=True,
            tie_embeddings=hf.get("tie_word_embeddings", True),
            dropout=hf.get("resid_pdrop", 0.1))    # only matters for fine-tuning; the model loads in eval
    except (QkvError, TypeError) as e:
        raise CheckpointError(f"{where} describes an invalid model ({e}); fix config.json") from None


def config_to_hf(cfg: ModelConfig, eos_id: int | None = None, dtype: torch.dtype = torch.float32) -> dict:
    """The config.json transformers writes for the same model; raises for what GPT-2 cannot express."""
    for name, want in GPT2_FIXED_FIELDS.items():
        if getattr(cfg, name) != want:
            raise CheckpointError(f"GPT-2 cannot express {name}={getattr(cfg, name)!r} (it needs "
                                  f"{name}={want!r}); save this model as a qkv checkpoint instead")
    if cfg.mlp not in ACTIVATIONS_OUT:
        raise CheckpointError(f"GPT-2 cannot express mlp={cfg.mlp!r} (it needs one of "
                              f"{sorted(ACTIVATIONS_OUT)}); save this model as a qkv checkpoint instead")
    if cfg.kv_heads != cfg.n_heads:
        raise CheckpointError(f"GPT-2 cannot express n_kv_heads={cfg.n_kv_heads} (it needs multi-head "
                              f"attention, n_kv_heads=None); save this model as a qkv checkpoint instead")
    return {
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
        "vocab_size": cfg.vocab_size, "n_positions": cfg.max_len, "n_embd": cfg.d_model,
        "n_layer": cfg.n_layers, "n_head": cfg.n_heads, "n_inner": cfg.d_ff,
        "activation_function": ACTIVATIONS_OUT[cfg.mlp], "layer_norm_epsilon": cfg.norm_eps,
        "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False, "add_cross_attention": False,
        "tie_word_embeddings": cfg.tie_embeddings, "initializer_range": 0.02, "use_cache": True,
        "bos_token_id": eos_id, "eos_token_id": eos_id, "dtype": str(dtype).removeprefix("torch."),
    }


# ---- tensors: HF layout <-> qkv layout -----------------------------------------------------------------
def hf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a GPT-2 checkpoint for ``cfg`` must hold, in HF naming without the prefix."""
    V, P, C, F = cfg.vocab_size, cfg.max_len, cfg.d_model, cfg.ffn_dim
    shapes = {"wte.weight": (V, C), "wpe.weight": (P, C), "ln_f.weight": (C,), "ln_f.bias": (C,)}
    for i in range(cfg.n_layers):
        h = f"h.{i}."
        shapes.update({h + "ln_1.weight": (C,), h + "ln_1.bias": (C,), h + "ln_2.weight": (C,),
                       h + "ln_2.bias": (C,), h + "attn.c_attn.weight": (C, 3 * C),
                       h + "attn.c_attn.bias": (3 * C,), h + "attn.c_proj.weight": (C, C),
                       h + "attn.c_proj.bias": (C,), h + "mlp.c_fc.weight": (C, F),
                       h + "mlp.c_fc.bias": (F,), h + "mlp.c_proj.weight": (F, C), h + "mlp.c_proj.bias": (C,)})
    if not cfg.tie_embeddings:
        shapes["lm_head.weight"] = (V, C)
    return shapes


def check_tensors(hf: dict[str, torch.Tensor], cfg: ModelConfig, where: str) -> dict[str, torch.Tensor]:
    """Strip the prefix, drop buffers, and name the first missing, extra or mis-shaped tensor."""
    hf = {k.removeprefix("transformer."): t for k, t in hf.items() if not k.endswith(BUFFERS)}
    if cfg.tie_embeddings:
        hf.pop("lm_head.weight", None)    # a tied head is wte itself; transformers re-ties it the same way
    expected = hf_shapes(cfg)
    sizes = (f"vocab_size={cfg.vocab_size}, n_positions={cfg.max_len}, n_embd={cfg.d_model}, "
             f"n_layer={cfg.n_layers}, n_inner={cfg.ffn_dim}")
    check_shapes(hf, expected, where, sizes, what="a GPT-2 LM",
                 extra_fix="fix n_layer in config.json, or this checkpoint is not a plain GPT-2 language model")
    return hf


def state_from_hf(hf: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """HF tensors (checked, prefix stripped) -> our state dict: Conv1D weights transposed, all contiguous."""
    C = cfg.d_model
    sd = {"tok.weight": hf["wte.weight"], "pos.table.weight": hf["wpe.weight"],
          "norm_f.weight": hf["ln_f.weight"], "norm_f.bias": hf["ln_f.bias"],
          "head.weight": hf["wte.weight"] if cfg.tie_embeddings else hf["lm_head.weight"]}
    for i in range(cfg.n_layers):
        h, b = f"h.{i}.", f"blocks.{i}."
        for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
            sd[b + ours + ".weight"], sd[b + ours + ".bias"] = hf[h + theirs + ".weight"], hf[h + theirs + ".bias"]
        # c_attn's output columns are [q | k | v], each C wide; our wkv rows are [k ; v] (G*D = C each).
        qkv_weight = hf[h + "attn.c_attn.weight"].t()
        sd[b + "attn.wq.weight"], sd[b + "attn.wkv.weight"] = qkv_weight[:C], qkv_weight[C:]
        sd[b + "attn.wq.bias"], sd[b + "attn.wkv.bias"] = hf[h + "attn.c_attn.bias"].split([C, 2 * C])
        for ours, theirs in (("attn.wo", "attn.c_proj"), ("mlp.up", "mlp.c_fc"), ("mlp.down", "mlp.c_proj")):
            sd[b + ours + ".weight"] = hf[h + theirs + ".weight"].t()
            sd[b + ours + ".bias"] = hf[h + theirs + ".bias"]
    return {k: t.contiguous() for k, t in sd.items()}


def state_to_hf(model: GPT) -> dict[str, torch.Tensor]:
    """Our weights -> the keys and layouts GPT2LMHeadModel saves (contiguous, CPU, no shared storage)."""
    sd = {k: t.detach() for k, t in model.state_dict().items()}
    hf = {"wte.weight": sd["tok.weight"], "wpe.weight": sd["pos.table.weight"],
          "ln_f.weight": sd["norm_f.weight"], "ln_f.bias": sd["norm_f.bias"]}
    for i in range(model.cfg.n_layers):
        h, b = f"h.{i}.", f"blocks.{i}."
        for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
            hf[h + theirs + ".weight"], hf[h + theirs + ".bias"] = sd[b + ours + ".weight"], sd[b + ours + ".bias"]
        hf[h + "attn.c_attn.weight"] = torch.cat([sd[b + "attn.wq.weight"], sd[b + "attn.wkv.weight"]]).t()
        hf[h + "attn.c_attn.bias"] = torch.cat([sd[b + "attn.wq.bias"], sd[b + "attn.wkv.bias"]])
        for ours, theirs in (("attn.wo", "attn.c_proj"), ("mlp.up", "mlp.c_fc"), ("mlp.down", "mlp.c_proj")):
            hf[h + theirs + ".weight"] = sd[b + ours + ".weight"].t()
            hf[h + theirs + ".bias"] = sd[b + ours + ".bias"]
    out = {"transformer." + k: t.cpu().contiguous().clone() for k, t in hf.items()}
    if not model.cfg.tie_embeddings:
        out["lm_head.weight"] = sd["head.weight"].cpu().contiguous().clone()
    return out


# ---- public API ----------------------------------------------------------------------------------------
def load_gpt2(directory: str | os.PathLike) -> GPT:
    """A GPT (eval mode) from a Hugging Face GPT-2 directory, with ``.tokenizer`` (None without files).

    >>> model = load_gpt2("path/to/gpt2")                        # doctest: +SKIP
    >>> model(torch.tensor([[15496, 995]])).logits.shape          # doctest: +SKIP
    torch.Size([1, 2, 50257])
    """
    d = Path(directory)
    if not d.is_dir():
        raise CheckpointError(f"{d} is not a directory; pass the folder that holds config.json and the weights")
    cfg = config_from_hf(read_hf_json(d / "config.json"), where=str(d / "config.json"))
    hf = check_tensors(read_weights(d), cfg, where=f"the weights in {d}")
    model = gpt_from_state(cfg, state_from_hf(hf, cfg), where=f"the weights in {d}")
    model.tokenizer = Tokenizer.from_dir(d)
    return model.eval()


def gpt_from_state(cfg: ModelConfig, sd: dict[str, torch.Tensor], where: str) -> GPT:
    """A float32 GPT holding ``sd``, built without its random init (see ``qkv.weights.model_from_state``)."""
    return model_from_state(lambda: GPT(cfg), sd, where)


def save_gpt2(model: GPT, directory: str | os.PathLike, tokenizer: Tokenizer | None = None) -> Path:
    """Write ``model`` as a directory ``GPT2LMHeadModel.from_pretrained`` reads; returns its path.

    The tokenizer (default: ``model.tokenizer``) goes to tokenizer.json. An existing model directory at
    ``directory`` is replaced as a whole.
    """
    if not isinstance(model, GPT):
        raise CheckpointError(f"save_gpt2 takes a qkv GPT, got {type(model).__name__}")
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    eos_id = tokenizer.eos_id if tokenizer is not None else None
    config = config_to_hf(model.cfg, eos_id, model.tok.weight.dtype)
    target = Path(directory)
    is_model_dir = (target / "config.json").is_file() or (target.is_dir() and not any(target.iterdir()))
    if target.exists() and not is_model_dir:
        raise CheckpointError(f"{target} exists and is not a model directory, and saving replaces it as a "
                              f"whole; choose a new or empty directory")
    with atomic_dir(target) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        save_file(state_to_hf(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save(tmp / "tokenizer.json")
            # A generic class, so transformers reads tokenizer.json as written (char-level included).
            eos = tokenizer.backend.id_to_token(eos_id) if eos_id is not None else None
            tok_cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model.cfg.max_len,
                       "bos_token": eos, "eos_token": eos}
            (tmp / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n", encoding="utf-8")
    return target
