"""ViT and Swin from Hugging Face directories: logits equal transformers' on the same images, the image
preprocessing equal to its image processor's, and clear refusals."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import qkv
from qkv.data.images import image_to_pixels, normalize
from qkv.errors import CheckpointError

transformers = pytest.importorskip("transformers")


def _image(tmp_path, size=(45, 37), seed=0):
    rng = np.random.default_rng(seed)
    path = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def _processor(d, size, **options):
    from transformers import ViTImageProcessor
    processor = ViTImageProcessor(size={"height": size, "width": size}, **options)
    processor.save_pretrained(d)
    return processor


def _ours(model, path):
    v = model.vision
    pixels, _ = image_to_pixels(path, v.image_size, v.channels, v.resample)
    mean, std = v.mean_std
    return normalize(pixels, mean, std)


def _vit(tmp_path, **config):
    from transformers import ViTConfig, ViTForImageClassification
    torch.manual_seed(0)
    cfg = ViTConfig(**{**dict(image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
                              num_attention_heads=4, intermediate_size=64, num_labels=3,
                              id2label={0: "cat", 1: "dog", 2: "fish"}, label2id={"cat": 0, "dog": 1, "fish": 2}),
                       **config})
    hf = ViTForImageClassification(cfg).eval()
    with torch.no_grad():                    # random init leaves the position table and [CLS] near zero
        hf.vit.embeddings.position_embeddings.normal_(std=0.5)
        hf.vit.embeddings.cls_token.normal_(std=0.5)
    d = tmp_path / "vit"
    hf.save_pretrained(d)
    return hf, d


def _swin(tmp_path, **config):
    from transformers import SwinConfig, SwinForImageClassification
    torch.manual_seed(0)
    cfg = SwinConfig(**{**dict(image_size=32, patch_size=2, num_channels=3, embed_dim=16, depths=[2, 2],
                               num_heads=[2, 4], window_size=4, num_labels=4), **config})
    hf = SwinForImageClassification(cfg).eval()
    with torch.no_grad():                    # make the relative position bias matter
        for name, p in hf.named_parameters():
            if name.endswith("relative_position_bias_table"):
                p.normal_(std=1.0)
    d = tmp_path / "swin"
    hf.save_pretrained(d)
    return hf, d


@pytest.mark.parametrize("options", [dict(), dict(resample=3, image_mean=[0.485, 0.456, 0.406],
                                                   image_std=[0.229, 0.224, 0.225])])
def test_vit_logits_and_preprocessing_equal_transformers(tmp_path, options):
    hf, d = _vit(tmp_path)
    processor = _processor(d, 32, **options)
    model = qkv.load(d)
    assert type(model).__name__ == "ViT" and model.labels == ["cat", "dog", "fish"]
    path = _image(tmp_path)                                  # 45x37: resized to 32x32 by both
    theirs = processor(images=Image.open(path).convert("RGB"), return_tensors="pt")["pixel_values"]
    ours = _ours(model, path)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    batch = torch.cat([theirs, torch.randn(3, 3, 32, 32)])
    with torch.no_grad():
        expected = hf(pixel_values=batch).logits
        got = model(batch).logits
    assert (got - expected).abs().max() <= 1e-4, (got - expected).abs().max()


def test_swin_logits_equal_transformers_with_shifted_windows(tmp_path):
    hf, d = _swin(tmp_path)
    processor = _processor(d, 32, resample=3, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    model = qkv.load(d)
    stage0 = model.stages[0]
    assert stage0.shift == 2 and stage0.window == 4            # 16x16 grid, 4x4 windows: the shift is used
    path = _image(tmp_path, size=(40, 40), seed=1)
    theirs = processor(images=Image.open(path).convert("RGB"), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(_ours(model, path), theirs, atol=1e-5, rtol=0)
    batch = torch.cat([theirs, torch.randn(2, 3, 32, 32)])
    with torch.no_grad():
        expected = hf(pixel_values=batch).logits
        got = model(batch).logits
    assert (got - expected).abs().max() <= 1e-4, (got - expected).abs().max()
    # the shifted-window mask matters: without it the hidden states move (the random head's logits are tiny)
    with torch.no_grad():
        masked = model(batch).hidden
        saved = stage0.allowed_W1LL.clone()
        stage0.allowed_W1LL.fill_(True)
        unmasked = model(batch).hidden
        stage0.allowed_W1LL.copy_(saved)
    assert (unmasked - masked).abs().max() > 1e-2


@pytest.mark.parametrize("kind, options", [
    ("vit", dict(layer_norm_eps=1e-3, qkv_bias=False, hidden_act="gelu_new", num_channels=1)),
    ("swin", dict(layer_norm_eps=1e-3, qkv_bias=False, hidden_act="relu", mlp_ratio=2.5, num_channels=2)),
])
def test_options_off_the_defaults_equal_transformers(tmp_path, kind, options):
    """eps, q/k/v biases, the activation, the FFN ratio and the channels are read from config.json."""
    hf, d = (_vit if kind == "vit" else _swin)(tmp_path, **options)
    with torch.no_grad():                    # a wide head, so that the features' errors reach the logits
        hf.classifier.weight.normal_(std=2.0)
    hf.save_pretrained(d)
    model = qkv.load(d)
    assert model.vision.channels == options["num_channels"]
    batch = torch.randn(3, options["num_channels"], 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = hf(pixel_values=batch).logits
        got = model(batch).logits
    assert expected.std() > 0.5
    assert (got - expected).abs().max() <= 1e-4, (got - expected).abs().max()


def test_swin_attention_maps_are_per_window(tmp_path):
    _, d = _swin(tmp_path)
    model = qkv.load(d)
    out = model(torch.randn(2, 3, 32, 32), return_attentions=True)
    first, last = out.attentions[0], out.attentions[-1]
    assert first.shape == (2 * 16, 2, 16, 16)           # 2 images x 16 windows, 2 heads, 4x4 patches per window
    assert last.shape == (2 * 4, 4, 16, 16)             # stage 2: the 8x8 grid in four 4x4 windows, 4 heads
    torch.testing.assert_close(first.sum(-1), torch.ones(32, 2, 16))
    shifted = out.attentions[1]                         # the shifted block: a corner window mixes 4 regions
    assert (shifted[15] == 0).any() and not (first[15] == 0).any()


def test_refusals_name_the_problem(tmp_path):
    _, d = _swin(tmp_path)
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, "use_absolute_embeddings": True}))
    with pytest.raises(CheckpointError, match="use_absolute_embeddings"):
        qkv.load(d)
    (d / "config.json").write_text(json.dumps({**config, "window_size": 3}))
    with pytest.raises(CheckpointError, match="cannot be cut into 3x3 windows"):
        qkv.load(d)
    _, v = _vit(tmp_path)
    _processor(v, 48)
    with pytest.raises(CheckpointError, match="resizes to"):
        qkv.load(v)
    pre = json.loads((v / "preprocessor_config.json").read_text())
    (v / "preprocessor_config.json").write_text(json.dumps({**pre, "size": {"height": 32, "width": 32},
                                                            "do_center_crop": True}))
    with pytest.raises(CheckpointError, match="do_center_crop is not supported"):
        qkv.load(v)
