"""Image classification on the same Trainer as the language models: RunParts of image batches and a model.

    --data DIR (MNIST: IDX test set + CSV training subset) ─> mnist_splits (train / val / test, see
    qkv.data.images) ─> ImageBatches (random shifts on training batches) ─> ViT | Swin | CNN
    ─> Trainer.fit (AdamW, schedule, --max-time, checkpoints, metrics.jsonl, exact resume)
    ─> accuracy and confusion matrix on the test split ─> DIR/eval.json, DIR/confusion.png

The run directory's config.json keeps the ``VisionConfig`` (under "vision", with the labels) and the data
settings (under "images"), so ``qkv train --resume DIR`` and ``qkv evaluate DIR`` know the split.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from ..checkpoint import read_config
from ..config import ModelConfig, TrainConfig, VisionConfig, build
from ..data.images import MNIST_LABELS, ImageBatches, ImageDataConfig, mnist_splits, normalize
from ..errors import CheckpointError, ConfigError, MissingExtraError, require_extra
from ..models import IMAGE_MODELS
from ..rundir import write_text_atomic
from .parts import RunParts
from .trainer import Trainer

REPORT_FILE, CONFUSION_PNG = "eval.json", "confusion.png"


def image_model_config(model_cfg: ModelConfig, vision: VisionConfig) -> ModelConfig:
    """ViT's positions are its tokens: max_len set from the image (patches, + [CLS])."""
    if vision.model == "vit":
        return dataclasses.replace(model_cfg, max_len=vision.grid ** 2 + (vision.pool == "cls"))
    return model_cfg


def build_image_task(model_cfg: ModelConfig, vision: VisionConfig, train_cfg: TrainConfig,
                     dcfg: ImageDataConfig, model=None) -> RunParts:
    """The trainer's RunParts; ``model`` given when resuming (its weights are loaded by the trainer)."""
    if train_cfg.data is None:
        raise ConfigError("task 'image-classification' needs --data DIR (the MNIST folder, ../shared/data/mnist)")
    if train_cfg.label_smoothing:
        raise ConfigError("image classification scores without label smoothing; drop --label-smoothing")
    splits = mnist_splits(train_cfg.data, dcfg)
    if vision.image_size != splits["train"][0].shape[-1] or vision.channels != 1:
        raise ConfigError(f"MNIST images are 28x28 grayscale; set image_size=28 and channels=1 (got "
                          f"{vision.image_size} and {vision.channels})")
    mean, std = vision.mean_std
    data = ImageBatches(splits, mean, std, dcfg.shift, train_cfg.seed)
    if model is None:
        torch.manual_seed(train_cfg.seed)
        model = IMAGE_MODELS[vision.model](image_model_config(model_cfg, vision), vision, MNIST_LABELS)
    config = {"images": {**dataclasses.asdict(dcfg), "data": str(Path(train_cfg.data).resolve())}}
    return RunParts(model.cfg, type(model), None, data, model=model, config=config)


def image_data_config(directory: str | Path) -> ImageDataConfig:
    config = read_config(directory)
    if "images" not in config:
        raise CheckpointError(f"{directory} is not an image-classification run (config.json has no 'images' entry)")
    return build(ImageDataConfig, {k: v for k, v in config["images"].items() if k != "data"},
                 f"{Path(directory) / 'config.json'}")


def resume_images(run_dir: str | Path, train_overrides: dict | None = None) -> Trainer:
    """Continue an image-classification run exactly (weights, optimizer, step, RNG, batch order)."""
    config = read_config(run_dir)
    cls = next((c for c in IMAGE_MODELS.values() if c.model_type == config["model_type"]), None)
    if cls is None:
        raise CheckpointError(f"{run_dir}: model_type {config['model_type']!r} is not an image model")
    cfg = build(ModelConfig, config["model"], f"{Path(run_dir) / 'config.json'}")
    model = cls.from_config(cfg, config)
    train = build(TrainConfig, {**config.get("train", {}), **(train_overrides or {})}, "the resumed run's options")
    task = build_image_task(cfg, model.vision, train, image_data_config(run_dir), model)
    return Trainer.resume(run_dir, train_overrides, parts=task)


@torch.inference_mode()
def predict_pixels(model, pixels_NIYX: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """probs_NK of uint8 images (normalized with the model's own mean and std)."""
    mean, std = model.vision.mean_std
    was_training = model.training
    model.eval()
    try:
        chunks = [model(normalize(pixels_NIYX[i:i + batch_size], mean, std)).logits.float().softmax(-1)
                  for i in range(0, len(pixels_NIYX), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(chunks) if chunks else torch.empty(0, len(model.labels))


def evaluate_images(model, images_NIYX: torch.Tensor, labels_N: torch.Tensor, batch_size: int = 256) -> dict:
    """Accuracy and the confusion matrix (rows: true class, columns: predicted) of ``model``."""
    start = time.perf_counter()
    predicted_N = predict_pixels(model, images_NIYX, batch_size).argmax(-1)
    K = len(model.labels)
    confusion_KK = torch.zeros(K, K, dtype=torch.long)
    confusion_KK.index_put_((labels_N.long(), predicted_N), torch.ones_like(predicted_N), accumulate=True)
    accuracy = round(float((predicted_N == labels_N).float().mean()), 6)
    return {"task": "image-classification", "metric": "accuracy", "score": accuracy,
            "accuracy": accuracy, "examples": len(labels_N),
            "labels": model.labels, "confusion": confusion_KK.tolist(),
            "eval_s": round(time.perf_counter() - start, 3)}


def confusion_text(report: dict) -> str:
    """The confusion matrix as a table: one row per true class, one column per predicted class."""
    labels, rows = report["labels"], report["confusion"]
    width = max(5, *(len(str(v)) for row in rows for v in row), *(len(x) for x in labels)) + 1
    lines = ["true \\ predicted".ljust(16) + "".join(x.rjust(width) for x in labels)]
    lines += [labels[i].ljust(16) + "".join(str(v).rjust(width) for v in row) for i, row in enumerate(rows)]
    return "\n".join(lines)


def confusion_png(report: dict, path: Path) -> None:
    matplotlib = require_extra("matplotlib", "plots", CONFUSION_PNG)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, counts = report["labels"], torch.tensor(report["confusion"])
    fig, ax = plt.subplots(figsize=(1 + 0.5 * len(labels), 1 + 0.45 * len(labels)))
    shade = counts.float().log1p()                                     # log: the errors stay visible
    ax.imshow(shade.numpy(), cmap="Blues")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=7,
                    color="white" if shade[i, j] > shade.max() / 2 else "black")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"accuracy {report['accuracy']:.4f} on {report['examples']:,} images")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(directory: Path, report: dict) -> str:
    """Write eval.json and confusion.png into ``directory``; return what it wrote ("eval.json and
    confusion.png"). Without matplotlib only eval.json, and a note naming the plots extra: the matrix is in
    eval.json and printed, the PNG only draws it, so a base install's run still ends with its report."""
    directory.mkdir(parents=True, exist_ok=True)
    write_text_atomic(directory / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    try:
        confusion_png(report, directory / CONFUSION_PNG)
    except MissingExtraError as e:
        print(f"note: {e}; {REPORT_FILE} holds the matrix", file=sys.stderr)
        return REPORT_FILE
    return f"{REPORT_FILE} and {CONFUSION_PNG}"


def finish(trainer: Trainer) -> tuple[dict, str]:
    """Score the trained model on the held-out test split; write eval.json and confusion.png into the run.
    Returns the report and what was written (see ``write_report``)."""
    images, labels = trainer.data.splits["test"], trainer.data.labels["test"]
    report = evaluate_images(trainer.model, images, labels)
    report.update(split="test", eval_data=f"{trainer.task_config['images']['data']} (held-out test split)",
                  step=trainer.step, train_s=round(trainer.elapsed, 3))
    return report, write_report(trainer.out_dir, report)
