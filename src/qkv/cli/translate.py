"""`qkv translate DIR`: translate (or summarize) with an encoder-decoder checkpoint, and score the result.

    qkv translate runs/multi30k --text "Ein Hund läuft im Schnee."
    qkv translate runs/multi30k --file test.de --ref test.en --output hyp.en        # + sacrebleu BLEU
    qkv translate runs/scitldr --jsonl test.jsonl --truncate                         # + ROUGE, all references

Outputs are detokenized text, one per input line, in input order. With references, BLEU comes from
sacrebleu (with its signature) and ROUGE-1/2/L from rouge-score; ``--metrics-json`` writes them to a file.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ..family import Family
from .flags import add_overwrite_argument, path_arg, positive_int, value_parser


def add_arguments(p) -> None:
    p.add_argument("directory", type=path_arg, metavar="DIR",
                   help="an encoder-decoder checkpoint (qkv train --task translate)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", action="append", help="a source sentence (repeat for several)")
    src.add_argument("--file", type=path_arg, metavar="FILE", help="source sentences, one per line (- for stdin)")
    src.add_argument("--jsonl", type=path_arg, metavar="FILE", help="SciTLDR-style JSON lines: 'source' sentences and "
                                                     "'target' references (scored with ROUGE)")
    p.add_argument("--ref", type=path_arg, metavar="FILE",
                   help="reference translations for --file, one per line (BLEU)")
    p.add_argument("--beam", type=value_parser(int, "--beam"), default=4, help="beam size; 1 = greedy (default 4)")
    p.add_argument("--length-penalty", type=value_parser(float, "--length-penalty"), default=1.0,
                   help="score / length ** penalty (default 1.0)")
    p.add_argument("--max-new-tokens", type=value_parser(int, "--max-new-tokens"), default=None,
                   help="longest output in tokens (default: the model's positions)")
    p.add_argument("--no-early-stopping", dest="early_stopping", action="store_false",
                   help="keep searching after beam-size hypotheses finished")
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=32, help="sources per batch (default 32)")
    p.add_argument("--truncate", action="store_true", help="cut sources longer than the model's positions")
    p.add_argument("--output", type=path_arg, metavar="FILE", help="write outputs here instead of stdout")
    p.add_argument("--metrics-json", type=path_arg, metavar="FILE", help="write the scores as JSON")
    add_overwrite_argument(p, "--output and --metrics-json")
    p.add_argument("--threads", type=positive_int("--threads"), default=None,
                   help="torch threads (default torch's own)")


def run(args) -> int:
    import torch

    from ..loading import load
    from ..data.pairs import read_parallel, read_summaries
    from ..data.text import read_lines
    from ..errors import InputError
    from ..runtime.inference import for_inference
    from ..metrics import bleu, require_metric, rouge
    from ..rundir import claim_out_file, write_text_atomic
    from ..translate import SearchConfig, translate
    from ._common import require_family

    cfg = SearchConfig(beam_size=args.beam, max_new_tokens=args.max_new_tokens,
                       length_penalty=args.length_penalty, early_stopping=args.early_stopping)
    if args.ref and not args.file:
        raise InputError("--ref scores a --file of sources; give the sources with --file")
    if args.metrics_json and not (args.ref or args.jsonl):
        raise InputError("--metrics-json writes BLEU or ROUGE, which need references: add --ref FILE (with "
                         "--file) or use --jsonl")
    inputs = (args.file, args.ref, args.jsonl)
    outputs = {flag: path for flag, path in (("--output", args.output), ("--metrics-json", args.metrics_json)) if path}
    if args.overwrite and not outputs:
        raise InputError("--overwrite lets --output or --metrics-json replace a file; neither is given: drop it")
    if len(outputs) == 2 and Path(args.output).resolve() == Path(args.metrics_json).resolve():
        raise InputError("--output and --metrics-json name the same file; give each its own")
    for flag, path in outputs.items():
        claim_out_file(path, args.overwrite, flag, reads=inputs)
    if args.ref or args.jsonl:                        # scored at the end: the package is asked for now
        require_metric("rouge" if args.jsonl else "bleu", f"qkv translate {'--jsonl' if args.jsonl else '--ref'}")
    require_family(args.directory, "translate", Family.ENCODER_DECODER)
    if args.threads:
        torch.set_num_threads(args.threads)
    references = None
    if args.file and args.ref:
        pairs = read_parallel(args.file, args.ref)
        sources, references = [s for s, _ in pairs], [[t] for _, t in pairs]
    elif args.file:
        sources = [line for line in read_lines(args.file) if line.strip()]
    elif args.jsonl:
        docs = read_summaries(args.jsonl)
        sources, references = [d for d, _ in docs], [refs for _, refs in docs]
    else:
        sources = args.text
    if not sources or not all(s.strip() for s in sources):
        raise InputError("nothing to translate: the input is empty (or a --text is blank)")
    model = for_inference(load(args.directory))
    start = time.perf_counter()
    outputs = translate(model, sources, cfg, args.batch_size, args.truncate)
    seconds = time.perf_counter() - start
    text = "".join(o + "\n" for o in outputs)
    if args.output:
        write_text_atomic(args.output, text)
    else:
        sys.stdout.write(text)
    if references is None:
        return 0
    metrics = {"sentences": len(sources), "seconds": round(seconds, 2), "beam": args.beam}
    if args.jsonl:
        metrics.update({k: round(v, 2) for k, v in rouge(outputs, references).items()})
        summary = " | ".join(f"{k} {metrics[k]:.2f}" for k in ("rouge1", "rouge2", "rougeL"))
    else:
        score = bleu(outputs, references)
        metrics.update(bleu=round(score.score, 2), signature=score.signature)
        summary = f"BLEU {score.score:.2f} ({score.signature})"
    print(f"{summary} | {len(sources)} sentences in {seconds:.1f}s", file=sys.stderr)
    if args.metrics_json:
        write_text_atomic(args.metrics_json, json.dumps(metrics, indent=2) + "\n")
    return 0
