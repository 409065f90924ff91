"""`qkv predict DIR --text ...`: run a fine-tuned model on new input.

    qkv predict runs/sst2 --text "a gorgeous , witty film" --text "dull"     # label + probability per text
    qkv predict runs/upos --text "The dogs ran home ."                        # word/TAG pairs
    qkv predict runs/squad --question "Who ran?" --context "The dogs ran home."   # the answer span

    qkv predict runs/mnist-vit --image digit.png                             # an image classifier: class + probability

Text for tagging is split into words on whitespace. --json prints the prediction records instead.
An image is converted to the model's channels and resized to its input size (a note says so); MNIST
models expect a light digit on a dark background (--invert for a dark digit on white paper).
"""

from __future__ import annotations

import json

from ..family import Family
from ..tasks import TASKS

from .flags import path_arg, positive_int


def add_arguments(p) -> None:
    p.add_argument("checkpoint", type=path_arg, metavar="DIR", help="a `qkv finetune` run directory")
    p.add_argument("--text", action="append", default=[], metavar="TEXT", help="input text; repeat for more")
    p.add_argument("--question", help="extractive QA: the question (with --context)")
    p.add_argument("--context", help="extractive QA: the passage holding the answer")
    p.add_argument("--task", choices=list(TASKS), help="the task, for checkpoints saved without one")
    p.add_argument("--image", action="append", default=[], type=path_arg, metavar="FILE",
                   help="an image classifier's input (PNG, JPEG, ...; Pillow); repeat for more")
    p.add_argument("--invert", action="store_true", help="invert the image's pixels first (a dark digit on white paper "
                                                         "for an MNIST model)")
    p.add_argument("--top", type=positive_int("--top"), default=None, help="image classifiers: classes shown per "
                                                                        "image (default 3)")
    p.add_argument("--json", action="store_true", help="print the prediction records as JSON")


def run(args) -> int:
    from ..errors import InputError
    from ..checkpoint import read_config
    from ..tasks import get_task
    from ..tasks.batches import item_logits
    from ..runtime.inference import for_inference
    from ..train.finetune import input_length, load_finetuned
    from ._common import require_family, say_truncated

    found = require_family(args.checkpoint, "predict", Family.FINETUNED_ENCODER, Family.IMAGE_CLASSIFIER)
    if found == Family.IMAGE_CLASSIFIER:
        return _images(args)
    if args.image or args.invert or args.top is not None:
        raise InputError("a text model reads --text TEXT; --image, --invert and --top are for image classifiers")
    model, fcfg = load_finetuned(args.checkpoint, args.task)
    model = for_inference(model)
    spec = get_task(fcfg.task)
    if fcfg.task == "squad":
        if not args.question or not args.context or args.text:
            raise InputError("a QA model answers --question Q about --context C (and takes no --text)")
        inputs = [(args.question, args.context)]
    else:
        if not args.text or args.question or args.context:
            raise InputError(f"a {fcfg.task} model reads --text TEXT (repeatable); --question/--context are for QA")
        inputs = args.text
    if not all(text.strip() for x in inputs for text in ((x,) if isinstance(x, str) else x)):
        raise InputError("an input is empty; give some text (--text, or --question and --context)")
    labels = getattr(model, "labels", None)
    examples = spec.from_input(inputs)
    max_len = input_length(fcfg, model)
    items, notes = spec.encode(examples, model.tokenizer, max_len, labels, fcfg)
    say_truncated(notes.get("truncated", 0), len(examples), max_len)
    predictions = spec.predict(examples, items, item_logits(model, items, model.tokenizer.pad_id or 0),
                               labels, fcfg)
    # what the class labels mean: stored by the run, else (a run from before they were) the dataset's own
    names = read_config(args.checkpoint).get("label_names") or spec.label_meanings(labels or [])
    for r in predictions if names else ():              # classification records: one label each
        if r["prediction"] in names:
            r["name"] = names[r["prediction"]]
    print(json.dumps(predictions, ensure_ascii=False) if args.json else spec.show(predictions))
    return 0


def _images(args) -> int:
    import sys

    import torch

    from ..loading import load
    from ..data.images import background_note, image_to_pixels, normalize, require_pillow
    from ..errors import InputError
    from ..runtime.inference import for_inference

    if not args.image or args.text or args.question or args.context:
        raise InputError("an image classifier reads --image FILE (repeatable); --text/--question/--context are for "
                         "text models")
    if args.task:
        raise InputError("--task names a text task; an image classifier's classes are its own: drop --task")
    require_pillow()                                     # before the model loads
    model = for_inference(load(args.checkpoint))
    v = model.vision
    mean, std = v.mean_std
    records = []
    for path in args.image:
        pixels, note = image_to_pixels(path, v.image_size, v.channels, v.resample, args.invert)
        note = "; ".join(n for n in (note, background_note(pixels, mean, args.invert)) if n)
        if note:
            print(f"note: {path}: {note}", file=sys.stderr)
        with torch.inference_mode():
            probs_K = model(normalize(pixels, mean, std)).logits[0].float().softmax(-1)
        top = probs_K.topk(min(args.top or 3, len(model.labels)))
        records.append({"image": str(path), "label": model.labels[int(top.indices[0])],
                        "top": [{"label": model.labels[int(i)], "probability": round(float(p), 6)}
                                for p, i in zip(top.values, top.indices)]})
    if args.json:
        print(json.dumps(records, ensure_ascii=False))
    else:
        for r in records:
            others = ", ".join(f"{t['label']} {t['probability']:.3f}" for t in r["top"])
            print(f"{r['image']}: {r['label']}  ({others})")
    return 0
