"""Hugging Face ViTForImageClassification directories in (Dosovitskiy et al., 2021), without transformers.

ViT is our ``ViT`` with learned positions, a [CLS] readout, pre-norm blocks and biases, so loading is
renaming keys (the ``vit.`` prefix is optional):

    Hugging Face                                          qkv
    embeddings.cls_token                  (1, 1, C)       cls
    embeddings.position_embeddings        (1, L, C)       pos.table.weight   (L, C)
    embeddings.patch_embeddings.projection  conv          patch.proj
    encoder.layer.{i}.layernorm_before                    blocks.{i}.norm1
    encoder.layer.{i}.attention.attention.query           blocks.{i}.attn.wq
    encoder.layer.{i}.attention.attention.key / value     blocks.{i}.attn.wkv   (rows [key ; value])
    encoder.layer.{i}.attention.output.dense              blocks.{i}.attn.wo
    encoder.layer.{i}.layernorm_after                     blocks.{i}.norm2
    encoder.layer.{i}.intermediate.dense / output.dense   blocks.{i}.mlp.up / mlp.down
    layernorm                                             norm_f
    classifier                                            head

The image preprocessing comes from preprocessor_config.json (the image processor's settings: resize to
``size`` with ``resample``, scale by 1/255, normalize by ``image_mean`` / ``image_std``) into the model's
``VisionConfig``, so ``qkv predict --image`` feeds the model what transformers' processor would.
Shared with ``hf_swin``: the preprocessing and the label names (``id2label``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..config import ModelConfig, VisionConfig
from ..errors import CheckpointError, QkvError
from ..models.vision import ViT
from .hf_bert import ACTIVATIONS_IN
from ..weights import model_from_state
from .hf_files import check_shapes, read_hf_json, read_weights

PREPROCESSOR_FILE = "preprocessor_config.json"
RESAMPLE_NAMES = {0: "nearest", 2: "bilinear", 3: "bicubic"}        # PIL's numbers, as the processor saves them


def vision_from_hf(d: Path, hf: dict, model: str, **extra) -> VisionConfig:
    """The VisionConfig of a HF directory: sizes from config.json, preprocessing from preprocessor_config.json
    (transformers' ViTImageProcessor defaults where the file is absent: mean = std = 0.5, bilinear)."""
    pre = read_hf_json(d / PREPROCESSOR_FILE) if (d / PREPROCESSOR_FILE).is_file() else {}
    where = d / PREPROCESSOR_FILE
    size = pre.get("size", {}) if pre.get("do_resize", True) else {}
    image_size = hf.get("image_size", 224)
    if isinstance(size, dict) and size and (size.get("height"), size.get("width")) != (image_size, image_size):
        raise CheckpointError(f"{where} resizes to {size} but config.json's image_size is {image_size}; qkv resizes "
                              f"to the model's square input: make them agree")
    if abs(pre.get("rescale_factor", 1 / 255) - 1 / 255) > 1e-9 or not pre.get("do_rescale", True):
        raise CheckpointError(f"{where}: qkv scales pixels by 1/255 (do_rescale with rescale_factor 1/255); "
                              f"this processor does otherwise")
    if pre.get("do_center_crop"):
        raise CheckpointError(f"{where}: do_center_crop is not supported (qkv resizes the whole image to the model's "
                              f"input); set it to false if the model takes the resized image")
    normalize = pre.get("do_normalize", True)
    mean = pre.get("image_mean", [0.5]) if normalize else [0.0]       # one value: any number of channels
    std = pre.get("image_std", [0.5]) if normalize else [1.0]
    resample = RESAMPLE_NAMES.get(pre.get("resample", 2))
    if resample is None:
        raise CheckpointError(f"{where}: resample={pre.get('resample')} is not supported; qkv resizes with "
                              f"{sorted(RESAMPLE_NAMES)} (nearest, bilinear, bicubic)")
    try:
        return VisionConfig(model=model, image_size=image_size, channels=hf.get("num_channels", 3),
                            patch_size=hf.get("patch_size", 16), image_mean=tuple(mean),
                            image_std=tuple(std), resample=resample, **extra)
    except (QkvError, TypeError) as e:
        raise CheckpointError(f"{d} describes an image model qkv cannot build ({e}); fix config.json") from None


def labels_from_hf(hf: dict, n: int, where: str) -> list[str]:
    """Class names in index order from ``id2label`` (LABEL_i when absent)."""
    id2label = hf.get("id2label") or {str(i): f"LABEL_{i}" for i in range(n)}
    try:
        labels = [str(id2label[str(i)]) for i in range(len(id2label))]
    except KeyError:
        raise CheckpointError(f"{where}: id2label must map 0..{len(id2label) - 1} to names; fix config.json") from None
    if len(labels) != n:
        raise CheckpointError(f"{where}: id2label names {len(labels)} classes but the classifier has {n}")
    return labels


def mlp_from_hf(hf: dict, where: str) -> str:
    act = hf.get("hidden_act", "gelu")
    if act not in ACTIVATIONS_IN:
        raise CheckpointError(f"{where}: hidden_act {act!r} is not supported; supported: {sorted(ACTIVATIONS_IN)}")
    return ACTIVATIONS_IN[act]


def _canonical(key: str) -> str:
    return key.removeprefix("vit.")


def load_vit(directory: str | os.PathLike) -> ViT:
    """A ViT (eval mode) from a Hugging Face ViTForImageClassification directory."""
    d = Path(directory)
    where = str(d / "config.json")
    hf = read_hf_json(d / "config.json")
    tensors = {_canonical(k): t for k, t in read_weights(d).items()}
    if "classifier.weight" not in tensors:
        raise CheckpointError(f"{d} has no classifier; qkv loads ViTForImageClassification (a bare ViTModel has no "
                              f"head to classify with)")
    tensors = {k: t for k, t in tensors.items() if not k.startswith("pooler.")}   # ViTModel's pooler: unused
    vision = vision_from_hf(d, hf, "vit", pool="cls")
    n_tokens = vision.grid ** 2 + 1
    try:
        cfg = ModelConfig(max_len=n_tokens, n_layers=hf.get("num_hidden_layers", 12),
                          d_model=hf.get("hidden_size", 768),
                          n_heads=hf.get("num_attention_heads", 12), d_ff=hf.get("intermediate_size", 3072),
                          norm="layernorm", norm_eps=hf.get("layer_norm_eps", 1e-12), norm_placement="pre",
                          mlp=mlp_from_hf(hf, where), pos="learned", mask="bidirectional", bias=True,
                          qkv_bias=hf.get("qkv_bias", True), tie_embeddings=False,
                          dropout=hf.get("hidden_dropout_prob", 0.0))
    except (QkvError, TypeError) as e:
        raise CheckpointError(f"{where} describes an invalid model ({e}); fix config.json") from None
    K = tensors["classifier.weight"].shape[0]
    labels = labels_from_hf(hf, K, where)
    C, F, P, I = cfg.d_model, cfg.ffn_dim, vision.patch_size, vision.channels
    shapes = {"embeddings.cls_token": (1, 1, C), "embeddings.position_embeddings": (1, n_tokens, C),
              "embeddings.patch_embeddings.projection.weight": (C, I, P, P),
              "embeddings.patch_embeddings.projection.bias": (C,),
              "layernorm.weight": (C,), "layernorm.bias": (C,), "classifier.weight": (K, C), "classifier.bias": (K,)}
    layer = {"attention.attention.query": (C, C), "attention.attention.key": (C, C),
             "attention.attention.value": (C, C), "attention.output.dense": (C, C),
             "intermediate.dense": (F, C), "output.dense": (C, F), "layernorm_before": None, "layernorm_after": None}
    for i in range(cfg.n_layers):
        for name, shape in layer.items():
            e = f"encoder.layer.{i}.{name}."
            biased = cfg.has_qkv_bias or not name.startswith("attention.attention")
            if shape is None:
                shapes[e + "weight"], shapes[e + "bias"] = (C,), (C,)
            else:
                shapes[e + "weight"] = shape
                if biased:
                    shapes[e + "bias"] = (shape[0],)
    sizes = (f"image_size={vision.image_size}, patch_size={P}, num_channels={I}, hidden_size={C}, "
             f"num_hidden_layers={cfg.n_layers}, intermediate_size={F}")
    check_shapes(tensors, shapes, f"the weights in {d}", sizes, what="a ViTForImageClassification",
                 extra_fix="fix num_hidden_layers in config.json or re-save the model with save_pretrained")
    emb = "embeddings."
    sd = {"cls": tensors[emb + "cls_token"], "pos.table.weight": tensors[emb + "position_embeddings"][0],
          "patch.proj.weight": tensors[emb + "patch_embeddings.projection.weight"],
          "patch.proj.bias": tensors[emb + "patch_embeddings.projection.bias"],
          "norm_f.weight": tensors["layernorm.weight"], "norm_f.bias": tensors["layernorm.bias"],
          "head.weight": tensors["classifier.weight"], "head.bias": tensors["classifier.bias"]}
    names = {"layernorm_before": "norm1", "attention.attention.query": "attn.wq", "attention.output.dense": "attn.wo",
             "layernorm_after": "norm2", "intermediate.dense": "mlp.up", "output.dense": "mlp.down"}
    for i in range(cfg.n_layers):
        e, b = f"encoder.layer.{i}.", f"blocks.{i}."
        for theirs, ours in names.items():
            for p in ("weight", "bias"):
                if e + theirs + "." + p in tensors:
                    sd[b + ours + "." + p] = tensors[e + theirs + "." + p]
        for p in ("weight", "bias") if cfg.has_qkv_bias else ("weight",):
            sd[b + "attn.wkv." + p] = torch.cat([tensors[e + "attention.attention.key." + p],
                                                 tensors[e + "attention.attention.value." + p]])
    model = model_from_state(lambda: ViT(cfg, vision, labels), {k: t.contiguous() for k, t in sd.items()},
                             f"the weights in {d}")
    model.tokenizer = None
    return model.eval()
