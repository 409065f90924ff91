"""Vision inference speed: images/s of a ViT-Base/16 forward at 224 x 224, qkv's ``ViT`` against Hugging
Face's ``ViTForImageClassification`` of the same shape, timed in the same process.

The shape is ViT-Base/16: 12 layers, 12 heads, d_model 768, FFN 3072, GELU, pre-norm LayerNorm (eps 1e-12),
16 x 16 patches of a 224 x 224 RGB image (196 patches + [CLS] = 197 tokens), a 1000-class head; random
weights, float32. A call classifies a batch of 32 images (already preprocessed pixels), eval mode under
``torch.inference_mode``, logits returned. Both sides do the same arithmetic:

    qkv     ViT (the encoder's Stack: wq + fused wkv projections, SDPA without a mask), with ``use_onednn`` as
            ``qkv predict`` / ``evaluate`` run it: on AVX-512 CPUs every Linear through oneDNN, GELU fused into
            the FFN's first GEMM (``--no-onednn``: plain MKL)
    hf      ViTForImageClassification(attn_implementation="sdpa"), as its users get it

Timing as in ``qkv.bench.encoder``: warmup calls, then rounds alternating the sides and their order;
reported: median and best images/s per side and the median of the per-round ratios. The GEMMs are ~95% of
the FLOPs (the patch convolution is one more GEMM, < 2%), so the lever is the same as for BERT: oneDNN's
AVX-512 GEMMs where MKL runs AVX2 code (AMD processors).
"""

from __future__ import annotations

import json
from typing import Callable

import torch

from ..config import ModelConfig, VisionConfig
from ..models.vision import ViT
from ..runtime.onednn import OneDNNLinear, use_onednn
from .encoder import against_hf, machine

SHAPE = dict(n_layers=12, d_model=768, n_heads=12, d_ff=3072, image_size=224, patch_size=16, channels=3, classes=1000)


def _pixels(batch: int, size: int) -> torch.Tensor:
    return torch.randn(batch, SHAPE["channels"], size, size, generator=torch.Generator().manual_seed(0))


def ours(batch: int, size: int, layers: int, onednn: bool = True) -> tuple[Callable[[], torch.Tensor], dict]:
    torch.manual_seed(0)
    vision = VisionConfig(image_size=size, patch_size=SHAPE["patch_size"], channels=SHAPE["channels"], pool="cls",
                          image_mean="0.5", image_std="0.5")
    cfg = ModelConfig(max_len=(size // SHAPE["patch_size"]) ** 2 + 1, n_layers=layers, d_model=SHAPE["d_model"],
                      n_heads=SHAPE["n_heads"], d_ff=SHAPE["d_ff"], norm="layernorm", norm_eps=1e-12,
                      norm_placement="pre", mlp="gelu", pos="learned", mask="bidirectional", dropout=0.0)
    model = ViT(cfg, vision, [str(k) for k in range(SHAPE["classes"])]).eval()
    if onednn:
        use_onednn(model)
    pixels = _pixels(batch, size)

    def call() -> torch.Tensor:
        with torch.inference_mode():
            return model(pixels).logits
    linear = "oneDNN" if any(isinstance(m, OneDNNLinear) for m in model.modules()) else "MKL (nn.Linear)"
    return call, dict(model="qkv.models.ViT", params=model.num_params(), linear=linear,
                      cpu_capability=torch.backends.cpu.get_cpu_capability())


def huggingface(batch: int, size: int, layers: int) -> tuple[Callable[[], torch.Tensor], dict]:
    import transformers
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(image_size=size, patch_size=SHAPE["patch_size"], num_channels=SHAPE["channels"],
                                 hidden_size=SHAPE["d_model"], num_hidden_layers=layers,
                                 num_attention_heads=SHAPE["n_heads"], intermediate_size=SHAPE["d_ff"],
                                 num_labels=SHAPE["classes"], attn_implementation="sdpa")
    model = transformers.ViTForImageClassification(cfg).eval()
    pixels = _pixels(batch, size)

    def call() -> torch.Tensor:
        with torch.inference_mode():
            return model(pixel_values=pixels).logits
    info = dict(model="transformers.ViTForImageClassification", version=transformers.__version__,
                params=sum(p.numel() for p in model.parameters()),
                attn_implementation=model.config._attn_implementation)
    return call, info


def run(json_out: bool = False, *, layers: int = SHAPE["n_layers"], batch: int = 32, image_size: int = 224,
        warmup: int = 1, rounds: int = 5, hf: bool = True, threads: int | None = None, onednn: bool = True) -> dict:
    """Time both sides and return (and print) the result; with ``json_out`` print exactly one JSON line."""
    if threads is not None:
        torch.set_num_threads(threads)
    result = {
        "bench": "vision",
        "shape": dict(SHAPE, n_layers=layers, image_size=image_size, batch=batch, dtype="float32"),
        "timing": dict(warmup=warmup, rounds=rounds, statistic="median over rounds of one forward per side"),
        **machine(),
        **against_hf(ours(batch, image_size, layers, onednn=onednn),
                     (lambda: huggingface(batch, image_size, layers)) if hf else None,
                     "images", batch, warmup, rounds),
    }
    note = result.get("note")
    if json_out:
        print(json.dumps(result))
    else:
        s = result["shape"]
        print(f"ViT forward: {s['n_layers']} layers, d_model {s['d_model']}, {s['n_heads']} heads, FFN {s['d_ff']}, "
              f"{s['image_size']}^2 images in {s['patch_size']}^2 patches, batch {s['batch']}, {s['dtype']}, "
              f"{result['threads']} threads (load {result['load_avg_1m']} on {result['cpus']} cpus)")
        for name in ("qkv", "hf"):
            if name in result:
                r = result[name]
                label = r["model"] + (f" ({r['linear']})" if "linear" in r else "")
                print(f"  {label:<44} median {r['images_per_s']:>8.2f} images/s   best {r['best_images_per_s']:>8.2f}")
        if "ratio" in result:
            print(f"  qkv / hf: {result['ratio']:.2f}x (median of per-round ratios), "
                  f"{result['ratio_best']:.2f}x (best rounds)")
        if note:
            print(f"  note: {note}")
    return result
