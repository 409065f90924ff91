"""ViT, Swin and the CNN: built from the shared layers, both attention paths equal, windows and shifts exact,
MNIST files read and checked, the split never scores a trained image, and the
evaluate / predict commands (exact resume: tests/test_resume.py)."""

import gzip
import json

import pytest
import torch
from PIL import Image

import qkv
from qkv.cli import main
from qkv.config import ModelConfig, VisionConfig
from qkv.data.images import (IMAGES_MAGIC, LABELS_MAGIC, ImageDataConfig, mnist_splits, random_shift, read_csv_images,
                             read_idx)
from qkv.errors import ConfigError, DataError, InputError
from qkv.models import CNN, Swin, ViT
from qkv.models.stack import Stack
from qkv.models.swin import shifted_window_mask, window_merge, window_partition
from qkv.models.vision import sincos_2d_table
from qkv.nn.block import Block
from vision_fixtures import digit_images, idx_bytes, write_mnist

LABELS = [str(d) for d in range(10)]


def vit(pos="learned", pool="cls", **kw):
    vision = VisionConfig(patch_size=7, pool=pool)
    cfg = ModelConfig(max_len=16 + (pool == "cls"), n_layers=2, d_model=32, n_heads=4, mask="bidirectional", pos=pos,
                      **kw)
    return ViT(cfg, vision, LABELS)


def swin():
    vision = VisionConfig(model="swin", patch_size=2, window_size=7, depths="2,2")
    return Swin(ModelConfig(n_layers=2, d_model=16, n_heads=2, mask="bidirectional"), vision, LABELS)


def cnn():
    return CNN(ModelConfig(n_layers=2, d_model=4), VisionConfig(model="cnn"), LABELS)


def test_vit_is_the_encoder_stack_on_patches():
    model = vit()
    assert isinstance(model, Stack) and all(type(b) is Block for b in model.blocks)
    assert not hasattr(model, "tok")                       # no vocabulary: patches arrive as vectors
    assert model.pos.table.weight.shape == (17, 32)        # 4x4 patches + [CLS]
    assert all(type(b) is Block for stage in swin().stages for b in stage.blocks)


@pytest.mark.parametrize("build", [vit, lambda: vit("sinusoidal", "mean"), swin, cnn])
def test_explicit_attention_path_equals_sdpa_and_a_checkpoint_round_trips(build, tmp_path):
    torch.manual_seed(0)
    model = build().eval()
    x = torch.randn(3, 1, 28, 28)
    fast = model(x).logits
    explicit = model(x, return_attentions=True)
    torch.testing.assert_close(explicit.logits, fast, atol=1e-5, rtol=1e-5)
    qkv.save(model, tmp_path / "m")
    loaded = qkv.load(tmp_path / "m")
    assert type(loaded) is type(model) and loaded.labels == LABELS
    torch.testing.assert_close(loaded(x).logits, fast)


def test_vision_lists_are_tuples_from_flags_lists_and_old_comma_strings(tmp_path):
    """VisionConfig's lists are tuples: a comma list on the command line, a JSON list in config.json, and the
    comma string older config.json files hold (such a checkpoint still loads, and computes the same)."""
    from qkv.cli import build_parser
    from qkv.cli.flags import collect
    args = build_parser().parse_args(["train", "--depths", "1,3", "--heads", "2,4", "--image-std", "0.5,0.25,0.5"])
    assert collect(args, VisionConfig) == {"depths": (1, 3), "heads": (2, 4), "image_std": (0.5, 0.25, 0.5)}
    assert VisionConfig(depths=[3, 1], image_mean=[0.5]) == VisionConfig(depths="3,1", image_mean="0.5") == \
        VisionConfig(depths=(3, 1), image_mean=(0.5,))
    assert VisionConfig(heads="").heads is None and VisionConfig(channels=3).mean_std == ((0.1307,) * 3, (0.3081,) * 3)
    with pytest.raises(ConfigError, match="depths='2.5' must be positive integers"):
        VisionConfig(depths="2.5")
    torch.manual_seed(0)
    model = Swin(ModelConfig(n_layers=2, d_model=16, n_heads=2, mask="bidirectional"),
                 VisionConfig(model="swin", patch_size=2, window_size=7, depths=(1, 1), heads=(2, 4),
                              image_mean=(0.25,), image_std=(0.5,)), LABELS).eval()
    qkv.save(model, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["vision"]["depths"] == [1, 1] and config["vision"]["image_std"] == [0.5]
    config["vision"].update(depths="1,1", heads="2,4", image_mean="0.25", image_std="0.5")   # as older runs wrote
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    old = qkv.load(tmp_path / "m")
    assert old.vision == model.vision
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(old(x).logits, model(x).logits)


def test_sincos_2d_positions_depend_on_row_and_column_alone():
    table = sincos_2d_table(4, 16, cls=True)
    assert torch.equal(table[0], torch.zeros(16))                       # [CLS] has no place on the grid
    grid = table[1:].view(4, 4, 16)
    assert torch.equal(grid[1, 0, :8], grid[1, 3, :8]) and torch.equal(grid[0, 2, 8:], grid[3, 2, 8:])
    assert not torch.equal(grid[1, 0, :8], grid[2, 0, :8])


def test_windows_round_trip_and_the_shift_mask_keeps_old_neighbours_apart():
    x = torch.randn(2, 8, 8, 3)
    assert torch.equal(window_merge(window_partition(x, 4), 4, 8, 8), x)
    allowed = shifted_window_mask(8, 8, 4, 2)                           # 4 windows of 16 patches
    assert allowed.shape == (4, 16, 16) and bool(allowed[0].all())     # the first window never wraps
    # brute force: after rolling by -2, patch (y, x) of the grid came from ((y + 2) % 8, (x + 2) % 8); two patches
    # of a window may attend iff neither axis wrapped for one and not the other
    origin = [((y + 2) % 8 < 2, (x + 2) % 8 < 2) for y in range(8) for x in range(8)]
    tokens = window_partition(torch.arange(64).view(1, 8, 8, 1), 4)[..., 0]
    for w in range(4):
        for t in range(16):
            for u in range(16):
                a, b = origin[int(tokens[w, t])], origin[int(tokens[w, u])]
                assert bool(allowed[w, t, u]) == (a == b)


def test_wrong_images_and_labels_are_refused():
    model = vit()
    with pytest.raises(InputError, match=r"\(batch, 1, 28, 28\)"):
        model(torch.randn(2, 3, 28, 28))
    with pytest.raises(InputError, match="normalized floats"):
        model(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(InputError, match=r"labels must lie in \[0, 10\)"):
        model(torch.randn(2, 1, 28, 28), torch.tensor([3, 10]))
    with pytest.raises(ConfigError, match="max_len=50 must equal the 17 tokens"):
        ViT(ModelConfig(max_len=50, mask="bidirectional"), VisionConfig(patch_size=7), LABELS)
    with pytest.raises(ConfigError, match="cannot be cut into 5x5 windows"):
        Swin(ModelConfig(mask="bidirectional"), VisionConfig(model="swin", patch_size=2, window_size=5), LABELS)


# ---- data ---------------------------------------------------------------------------------------------
def test_idx_and_csv_are_read_and_bad_files_named(tmp_path):
    images, labels = digit_images(5, seed=3)
    (tmp_path / "img").write_bytes(idx_bytes(images, IMAGES_MAGIC))
    assert torch.equal(read_idx(tmp_path / "img", IMAGES_MAGIC), images)
    with gzip.open(tmp_path / "lab.gz", "wb") as fh:
        fh.write(idx_bytes(labels, LABELS_MAGIC))
    assert torch.equal(read_idx(tmp_path / "lab.gz", LABELS_MAGIC), labels.to(torch.uint8))
    with pytest.raises(DataError, match=r"img is not an IDX label file: expected magic number 0x00000801"):
        read_idx(tmp_path / "img", LABELS_MAGIC)
    (tmp_path / "cut").write_bytes(idx_bytes(images, IMAGES_MAGIC)[:-3])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "cut", IMAGES_MAGIC)
    row = ",".join(["0"] * 784)
    (tmp_path / "a.csv").write_text(f"{row},3\n{row},7\n")
    got, got_labels = read_csv_images(tmp_path / "a.csv")
    assert got.shape == (2, 28, 28) and got_labels.tolist() == [3, 7]
    (tmp_path / "b.csv").write_text(f"{row},3\n{row}\n")
    with pytest.raises(DataError, match="b.csv line 2 has 784 values but a 28x28 image needs 785"):
        read_csv_images(tmp_path / "b.csv")
    (tmp_path / "c.csv").write_text(f"{row},12\n")
    with pytest.raises(DataError, match="line 1 has label 12, outside the 10 classes"):
        read_csv_images(tmp_path / "c.csv")


def test_the_split_never_scores_a_trained_image(tmp_path):
    d = write_mnist(tmp_path / "mnist", n_test=60, n_train=40)
    splits = mnist_splits(d, ImageDataConfig(test_in_train=20, val_images=10))
    assert [len(splits[s][0]) for s in ("train", "val", "test")] == [60, 10, 30]
    train = {bytes(img.flatten().tolist()) for img in splits["train"][0]}
    assert not any(bytes(img.flatten().tolist()) in train for img in splits["test"][0])
    assert not any(bytes(img.flatten().tolist()) in train for img in splits["val"][0])


def test_random_shift_moves_the_image_and_fills_with_zeros():
    img = torch.zeros(1, 1, 6, 6, dtype=torch.uint8)
    img[0, 0, 2, 3] = 200
    seen = {tuple((random_shift(img, 1, torch.Generator().manual_seed(s))[0, 0] == 200).nonzero()[0].tolist())
            for s in range(40)}
    assert seen == {(y, x) for y in (1, 2, 3) for x in (2, 3, 4)}     # every shift of up to 1 pixel, nothing else


# ---- training, evaluate, predict ----------------------------------------------------------------------
def test_cli_trains_evaluates_and_predicts(tmp_path, capsys):
    d = write_mnist(tmp_path / "mnist")
    out = tmp_path / "run"
    assert main(["train", "--task", "image-classification", "--model", "cnn", "--data", str(d), "--test-in-train", "20",
                 "--val-images", "10", "--shift", "0", "--max-iters", "60", "--max-time", "60", "--eval-interval", "30",
                 "--batch-size", "16", "--lr", "3e-3", "--d-model", "4", "--out-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "60 train / 10 val / 30 test images" in printed
    report = json.loads((out / "eval.json").read_text())
    assert report["examples"] == 30 and report["accuracy"] >= 0.9          # ten bright bars: easy
    assert sum(map(sum, report["confusion"])) == 30 and (out / "confusion.png").stat().st_size > 1000
    assert main(["evaluate", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"accuracy {report['accuracy']:.4f} on 30 images" in printed and "true \\ predicted" in printed
    assert json.loads((out / "evaluate" / "eval.json").read_text())["confusion"] == report["confusion"]
    assert main(["info", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "image classifier (qkv-cnn)" in printed and "28x28 images, 1 channel(s)" in printed
    assert f"evaluated: accuracy {report['accuracy']} on 30 examples" in printed
    images, labels = digit_images(60, seed=0)
    Image.fromarray(images[55].numpy()).convert("RGB").resize((56, 56), Image.NEAREST).save(tmp_path / "five.png")
    assert main(["predict", str(out), "--image", str(tmp_path / "five.png"), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)[0]["label"] == str(int(labels[55]))
    assert "resized from 56x56 to the model's 28x28" in captured.err and "converted from RGB to L" in captured.err
    assert "--invert" not in captured.err                                 # light on dark, as trained
    Image.fromarray(255 - images[55].numpy()).save(tmp_path / "paper.png")   # a dark digit on white paper
    assert main(["predict", str(out), "--image", str(tmp_path / "paper.png")]) == 0
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "the image is mostly light (median 0.92) but the model learned on dark " \
        "images (mean 0.13): if it is dark on light, pass --invert" in err
    assert main(["predict", str(out), "--image", str(tmp_path / "paper.png"), "--invert", "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and json.loads(captured.out)[0]["label"] == str(int(labels[55]))


def test_bench_vision_times_both_sides(capsys):
    assert main(["bench", "vision", "--layers", "1", "--batch", "2", "--image-size", "32", "--rounds", "1",
                 "--threads", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["shape"]["image_size"] == 32 and result["qkv"]["params"] == result["hf"]["params"]
    assert result["qkv"]["images_per_s"] > 0 and result["hf"]["images_per_s"] > 0 and result["ratio"] > 0


def test_attention_of_an_image_per_patch_and_per_window(tmp_path, capsys):
    torch.manual_seed(0)
    qkv.save(swin(), tmp_path / "swin")
    qkv.save(vit(), tmp_path / "vit")
    images, _ = digit_images(1, seed=0)
    Image.fromarray(images[0].numpy()).save(tmp_path / "d.png")
    assert main(["attention", str(tmp_path / "vit"), "--image", str(tmp_path / "d.png"), "--out",
                 str(tmp_path / "v.png")]) == 0
    assert "self-attention 2 layers x 4 heads, 17 x 17 tokens" in capsys.readouterr().out
    assert main(["attention", str(tmp_path / "swin"), "--image", str(tmp_path / "d.png"), "--window", "3",
                 "--out", str(tmp_path / "s.html")]) == 0
    assert "stage 0 window 3 of 4 2 layers x 2 heads, 49 x 49 tokens" in capsys.readouterr().out
    from qkv.viz.images import image_attention_maps
    maps = image_attention_maps(qkv.load(tmp_path / "swin"), torch.randn(1, 1, 28, 28), window=3)
    assert [m.name for m in maps] == ["stage 0 window 3 of 4"]          # stage 1 has one window only
    plain, shifted = maps[0].layers
    assert not (plain == 0).any() and (shifted == 0).any()             # the corner window after the shift is masked
    torch.testing.assert_close(shifted.sum(-1), torch.ones(2, 49))
