"""Hugging Face SwinForImageClassification directories in (Liu et al., 2021), without transformers.

Our ``Swin`` runs the shared ``Block`` on window rows (see ``qkv.models.swin``); loading renames keys
(the ``swin.`` prefix is optional):

    Hugging Face                                                    qkv
    embeddings.patch_embeddings.projection          conv            patch.proj
    embeddings.norm                                                 embed_norm
    encoder.layers.{s}.blocks.{i}.layernorm_before                  stages.{s}.blocks.{i}.norm1
    ....attention.self.query                                        ....attn.wq
    ....attention.self.key / value                                  ....attn.wkv   (rows [key ; value])
    ....attention.self.relative_position_bias_table  ((2w-1)^2, H)  stages.{s}.rel_bias.{i}
    ....attention.output.dense                                      ....attn.wo
    ....layernorm_after / intermediate.dense / output.dense         ....norm2 / mlp.up / mlp.down
    encoder.layers.{s}.downsample.norm / reduction                  stages.{s}.merge.norm / merge.reduce
    layernorm                                                       norm_f
    classifier                                                      head

Refused with a message: absolute position embeddings (``use_absolute_embeddings``) and grids that the
reference pads (a stage whose size is not a multiple of the window, or odd before merging): qkv's Swin
cuts windows exactly. The preprocessing comes from preprocessor_config.json as for ViT.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..config import ModelConfig
from ..errors import CheckpointError, QkvError
from ..models.swin import Swin, stage_config
from ..weights import meta_device, model_from_state
from .hf_files import check_shapes, read_hf_json, read_weights
from .hf_vit import labels_from_hf, mlp_from_hf, vision_from_hf


def _canonical(key: str) -> str:
    return key.removeprefix("swin.")


DEPTHS, HEADS = [2, 2, 6, 2], [3, 6, 12, 24]       # transformers' SwinConfig defaults


def load_swin(directory: str | os.PathLike) -> Swin:
    """A Swin (eval mode) from a Hugging Face SwinForImageClassification directory."""
    d = Path(directory)
    where = str(d / "config.json")
    hf = read_hf_json(d / "config.json")
    if hf.get("use_absolute_embeddings", False):
        raise CheckpointError(f"{where}: use_absolute_embeddings=true is not supported by qkv's Swin (relative "
                              f"position bias only)")
    tensors = {_canonical(k): t for k, t in read_weights(d).items()}
    if "classifier.weight" not in tensors:
        raise CheckpointError(f"{d} has no classifier; qkv loads SwinForImageClassification")
    cfg, vision = _configs(d, hf, where)
    K = tensors["classifier.weight"].shape[0]
    labels = labels_from_hf(hf, K, where)
    depths, heads = hf.get("depths", DEPTHS), hf.get("num_heads", HEADS)
    try:
        stages = [stage_config(cfg, vision, s) for s in range(len(depths))]
        with meta_device():                         # the window and merging checks, before the tensors are read
            Swin(cfg, vision, labels)
    except (QkvError, TypeError, IndexError) as e:
        raise CheckpointError(f"{where}: depths and num_heads do not describe a Swin ({e}); fix config.json") from None
    shapes, sd, wkv = _weight_names(cfg, vision, stages, K)
    sizes = (f"image_size={vision.image_size}, patch_size={vision.patch_size}, embed_dim={cfg.d_model}, "
             f"depths={depths}, num_heads={heads}, window_size={vision.window_size}")
    check_shapes(tensors, shapes, f"the weights in {d}", sizes, what="a SwinForImageClassification",
                 extra_fix="fix depths in config.json or re-save the model with save_pretrained")
    state = {ours: tensors[theirs].contiguous() for ours, theirs in sd.items()}
    state.update({ours: torch.cat([tensors[k], tensors[v]]) for ours, (k, v) in wkv.items()})
    try:
        model = model_from_state(lambda: Swin(cfg, vision, labels), state, f"the weights in {d}")
    except QkvError as e:
        raise CheckpointError(f"{d}: {e}") from None
    model.tokenizer = None
    return model.eval()


def _configs(d: Path, hf: dict, where: str):
    """(ModelConfig, VisionConfig) from config.json (and preprocessor_config.json, as for ViT)."""
    depths, heads = hf.get("depths", DEPTHS), hf.get("num_heads", HEADS)
    vision = vision_from_hf(d, hf, "swin", window_size=hf.get("window_size", 7),
                            depths=tuple(depths), heads=tuple(heads))
    embed_dim = hf.get("embed_dim", 96)
    try:
        cfg = ModelConfig(n_layers=sum(depths), d_model=embed_dim, n_heads=heads[0],
                          d_ff=int(embed_dim * hf.get("mlp_ratio", 4.0)), norm="layernorm",
                          norm_eps=hf.get("layer_norm_eps", 1e-5), norm_placement="pre", mlp=mlp_from_hf(hf, where),
                          mask="bidirectional", bias=True, qkv_bias=hf.get("qkv_bias", True), tie_embeddings=False,
                          dropout=hf.get("hidden_dropout_prob", 0.0))
    except (QkvError, TypeError) as e:
        raise CheckpointError(f"{where} describes an invalid model ({e}); fix config.json") from None
    return cfg, vision


def _weight_names(cfg: ModelConfig, vision, stages: list, K: int) -> tuple[dict, dict, dict]:
    """The checkpoint's tensors as the table above renames them: (their shapes, our key -> theirs, our fused
    wkv key -> their (key, value) pair). K: the classes."""
    C0, P, I = cfg.d_model, vision.patch_size, vision.channels
    shapes = {"embeddings.patch_embeddings.projection.weight": (C0, I, P, P),
              "embeddings.patch_embeddings.projection.bias": (C0,),
              "embeddings.norm.weight": (C0,), "embeddings.norm.bias": (C0,)}
    sd = {"patch.proj.weight": "embeddings.patch_embeddings.projection.weight",
          "patch.proj.bias": "embeddings.patch_embeddings.projection.bias",
          "embed_norm.weight": "embeddings.norm.weight", "embed_norm.bias": "embeddings.norm.bias"}
    wkv = {}
    grid = vision.grid
    for s, (scfg, depth) in enumerate(zip(stages, vision.depths)):
        C, F, H = scfg.d_model, scfg.ffn_dim, scfg.n_heads
        w = min(vision.window_size, grid)
        for i in range(depth):
            e, b = f"encoder.layers.{s}.blocks.{i}.", f"stages.{s}.blocks.{i}."
            layer = {"layernorm_before": ("norm1", (C,)), "attention.self.query": ("attn.wq", (C, C)),
                     "attention.output.dense": ("attn.wo", (C, C)), "layernorm_after": ("norm2", (C,)),
                     "intermediate.dense": ("mlp.up", (F, C)), "output.dense": ("mlp.down", (C, F))}
            for theirs, (ours, shape) in layer.items():
                for p in ("weight", "bias"):
                    if p == "bias" and theirs == "attention.self.query" and not cfg.has_qkv_bias:
                        continue
                    shapes[e + theirs + "." + p] = shape if p == "weight" else (shape[0],)
                    sd[b + ours + "." + p] = e + theirs + "." + p
            for p in ("weight", "bias") if cfg.has_qkv_bias else ("weight",):
                for kv in ("key", "value"):
                    shapes[e + f"attention.self.{kv}.{p}"] = (C, C) if p == "weight" else (C,)
                wkv[b + "attn.wkv." + p] = (e + f"attention.self.key.{p}", e + f"attention.self.value.{p}")
            shapes[e + "attention.self.relative_position_bias_table"] = ((2 * w - 1) ** 2, H)
            sd[f"stages.{s}.rel_bias.{i}"] = e + "attention.self.relative_position_bias_table"
        if s < len(stages) - 1:
            e = f"encoder.layers.{s}.downsample."
            shapes.update({e + "norm.weight": (4 * C,), e + "norm.bias": (4 * C,),
                           e + "reduction.weight": (2 * C, 4 * C)})
            sd.update({f"stages.{s}.merge.norm.weight": e + "norm.weight",
                       f"stages.{s}.merge.norm.bias": e + "norm.bias",
                       f"stages.{s}.merge.reduce.weight": e + "reduction.weight"})
        grid //= 2
    C = stages[-1].d_model
    shapes.update({"layernorm.weight": (C,), "layernorm.bias": (C,), "classifier.weight": (K, C),
                   "classifier.bias": (K,)})
    sd.update({"norm_f.weight": "layernorm.weight", "norm_f.bias": "layernorm.bias",
               "head.weight": "classifier.weight", "head.bias": "classifier.bias"})
    return shapes, sd, wkv
