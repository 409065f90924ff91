"""`qkv evaluate DIR [--data FILE]`: score a fine-tuned checkpoint on a task's eval file.

    qkv evaluate runs/sst2 --data ../shared/data/sst2/test.tsv
    qkv evaluate runs/squad                        # the run's own eval data (squad: its held-out articles)

The task comes from the checkpoint (``qkv finetune`` saves it; --task names it for other checkpoints).
Prints the metrics and writes OUT/eval.json and OUT/predictions.json(l) (OUT defaults to DIR/evaluate).

    qkv evaluate runs/mnist-vit                    # an image classifier: its run's held-out test images

An image classifier is scored on the test split of its training run (the images no step trained on), or
on --data DIR's MNIST test images (all 10,000, for a model trained elsewhere); it prints the accuracy and
the confusion matrix, and writes OUT/eval.json and OUT/confusion.png.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..family import Family
from ..tasks import TASKS
from .flags import path_arg, positive_int


def add_arguments(p) -> None:
    p.add_argument("checkpoint", type=path_arg, metavar="DIR", help="a `qkv finetune` run directory")
    p.add_argument("--data", type=path_arg, metavar="FILE",
                   help="eval file in the task's format (default: the run's eval "
                        "data); image classifiers: the MNIST folder")
    p.add_argument("--task", choices=list(TASKS), help="the task, for checkpoints saved without one")
    p.add_argument("--out-dir", type=path_arg, metavar="OUT",
                   help="where eval.json and the predictions go (default DIR/evaluate)")
    p.add_argument("--batch-size", type=positive_int("--batch-size"),
                   help="inputs per forward pass (default: the run's eval batch size; images 256)")


def run(args) -> int:
    import dataclasses

    from ..rundir import claim_report_dir
    from ..train.finetune import evaluate, load_finetuned, write_outputs
    from ._common import report_summary, require_family, require_task_metrics
    from ..runtime.inference import for_inference

    out = claim_report_dir(Path(args.out_dir) if args.out_dir else Path(args.checkpoint) / "evaluate")
    found = require_family(args.checkpoint, "evaluate", Family.FINETUNED_ENCODER, Family.IMAGE_CLASSIFIER)
    if found == Family.IMAGE_CLASSIFIER:
        return _images(args, out)
    model, fcfg = load_finetuned(args.checkpoint, args.task, args.data)
    model = for_inference(model)
    require_task_metrics(fcfg.task, f"qkv evaluate of a {fcfg.task} model")
    if args.batch_size is not None:
        fcfg = dataclasses.replace(fcfg, eval_batch_size=args.batch_size)
    report, predictions = evaluate(model, fcfg, args.data or fcfg.eval_data)
    report["checkpoint"] = str(args.checkpoint)
    write_outputs(out, fcfg, report, predictions)
    print(report_summary(report, out))
    return 0


def _images(args, out: Path) -> int:
    from ..checkpoint import read_config
    from ..loading import load
    from ..data.images import ImageDataConfig, mnist_splits, read_mnist_test
    from ..errors import ConfigError, InputError
    from ..runtime.inference import for_inference
    from ..train.images import confusion_text, evaluate_images, image_data_config, write_report

    if args.task:
        raise ConfigError("--task names a text task; an image classifier is scored on images (drop --task)")
    config = read_config(args.checkpoint)
    if args.data is None and "images" not in config:
        raise InputError(f"{args.checkpoint} was not trained here, so it has no held-out split: pass --data DIR "
                         f"(an MNIST folder; all its test images are scored)")
    model = for_inference(load(args.checkpoint))
    v = model.vision
    if (v.image_size, v.channels) != (28, 1):
        raise InputError(f"this model takes {v.image_size}x{v.image_size} images with {v.channels} channels; qkv "
                         f"evaluate scores MNIST (28x28 grayscale): use qkv predict --image for other images")
    if args.data is None:
        dcfg = image_data_config(args.checkpoint)
        images, labels = mnist_splits(config["images"]["data"], dcfg)["test"]
        split = f"test images {dcfg.test_in_train + dcfg.val_images}..9999 of the run's split (never trained on)"
    else:
        images, labels = read_mnist_test(Path(args.data))
        images, split = images[:, None], f"all {len(labels):,} test images in {args.data}"
        if "images" in config:
            n = ImageDataConfig(**{k: v for k, v in config["images"].items() if k != "data"}).test_in_train
            if n:
                print(f"note: this model trained on test images 0..{n - 1}; scores on --data include them",
                      file=sys.stderr)
    report = evaluate_images(model, images, labels, 256 if args.batch_size is None else args.batch_size)
    report.update(split=split, eval_data=split, checkpoint=str(args.checkpoint))
    written = write_report(out, report)
    print(f"accuracy {report['accuracy']:.4f} on {report['examples']:,} images ({split})")
    print(confusion_text(report))
    print(f"{written} in {out}")
    return 0
