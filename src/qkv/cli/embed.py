"""`qkv embed DIR --text A --text B ...`: sentence embeddings from an encoder and their cosine similarities.

    qkv embed runs/bert --text "a cat sat on the mat" --text "the cat is sitting" --text "stock prices fell"
    qkv embed path/to/hf-bert --file sentences.txt --json

DIR is any encoder checkpoint: a qkv-bert* run directory or a Hugging Face BERT directory. Each sentence
becomes the mean of the encoder's last hidden states over its real tokens, L2-normalized
(``Encoder.sentence_embeddings``), so a cosine similarity is a dot product. Prints the similarity matrix;
``--json`` prints one JSON object with the texts, the vectors and the matrix.
"""

from __future__ import annotations

import json

from ..family import Family
from .flags import path_arg, positive_int


def add_arguments(p) -> None:
    p.add_argument("checkpoint", type=path_arg, metavar="DIR",
                   help="an encoder checkpoint (qkv-bert* or Hugging Face BERT)")
    p.add_argument("--text", action="append", default=[], metavar="TEXT", help="a sentence; repeat for more")
    p.add_argument("--file", type=path_arg, metavar="FILE",
                   help="a UTF-8 file with one sentence per line (blank lines skipped; - for stdin)")
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=32,
                   help="sentences per forward pass (default 32)")
    p.add_argument("--json", action="store_true", help="print one JSON object: texts, embeddings, similarity")


def run(args) -> int:
    from ..loading import load
    from ..data.text import read_lines
    from ..errors import CheckpointError, InputError
    from ..runtime.inference import for_inference
    from ._common import require_family, say_truncated

    if any(not t.strip() for t in args.text):
        raise InputError("--text is empty; give a sentence")
    texts = list(args.text)
    if args.file:
        lines = [line.strip() for line in read_lines(args.file) if line.strip()]
        if not lines:
            raise InputError(f"--file {args.file} has no sentences (every line is blank)")
        texts += lines
    if not texts:
        raise InputError("no sentences to embed; pass --text TEXT (repeatable) or --file FILE")
    require_family(args.checkpoint, "embed", Family.ENCODER, Family.FINETUNED_ENCODER)
    model = for_inference(load(args.checkpoint))
    if model.tokenizer is None:
        raise CheckpointError(f"{args.checkpoint} has no tokenizer files; qkv embed needs one to read text")
    encodings = model.tokenizer.encode_batch_for_model(texts, max_len=model.cfg.max_len)
    say_truncated(sum(bool(e.overflowing) for e in encodings), len(texts), model.cfg.max_len)
    emb_NC = model.embed_texts(texts, args.batch_size)
    sim_NN = emb_NC @ emb_NC.T
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), "model_type": model.model_type,
                          "dim": emb_NC.shape[1], "texts": texts, "embeddings": emb_NC.tolist(),
                          "similarity": sim_NN.tolist()}))
        return 0
    print(f"{len(texts)} sentences, {emb_NC.shape[1]}-dim mean-pooled embeddings; cosine similarity:")
    print("      " + "".join(f"{f'[{j}]':>7}" for j in range(len(texts))))
    for i, row in enumerate(sim_NN.tolist()):
        print(f"{f'[{i}]':>5} " + "".join(f"{x:7.3f}" for x in row) + f"   {_short(texts[i])}")
    return 0


def _short(text: str, width: int = 50) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."
