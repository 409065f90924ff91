"""`qkv predict DIR --text ...`: run a fine-tuned model on new input.

    qkv predict runs/sst2 --text "a gorgeous , witty film" --text "dull"     # label + probability per text
    qkv predict runs/upos --text "The dogs ran home ."                        # word/TAG pairs
    qkv predict runs/squad --question "Who ran?" --context "The dogs ran home."   # the answer span

Text for tagging is split into words on whitespace. --json prints the prediction records instead.
"""

from __future__ import annotations

import json

from ..tasks import TASKS

from .flags import path_arg


def add_arguments(p) -> None:
    p.add_argument("checkpoint", type=path_arg, metavar="DIR", help="a `qkv finetune` run directory")
    p.add_argument("--text", action="append", default=[], metavar="TEXT", help="input text; repeat for more")
    p.add_argument("--question", help="extractive QA: the question (with --context)")
    p.add_argument("--context", help="extractive QA: the passage holding the answer")
    p.add_argument("--task", choices=list(TASKS), help="the task, for checkpoints saved without one")
    p.add_argument("--json", action="store_true", help="print the prediction records as JSON")


def run(args) -> int:
    from ..errors import InputError
    from ..tasks import get_task
    from ..tasks.batches import item_logits
    from ..train.finetune import _max_len, load_finetuned
    from ._common import require_family, say_truncated

    require_family(args.checkpoint, "predict", "fine-tuned encoder")
    model, fcfg = load_finetuned(args.checkpoint, args.task)
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
    max_len = _max_len(fcfg, model)
    items, notes = spec.encode(examples, model.tokenizer, max_len, labels, fcfg)
    say_truncated(notes.get("truncated", 0), len(examples), max_len)
    predictions = spec.predict(examples, items, item_logits(model, items, model.tokenizer.pad_id or 0),
                               labels, fcfg)
    print(json.dumps(predictions, ensure_ascii=False) if args.json else spec.show(predictions))
    return 0
